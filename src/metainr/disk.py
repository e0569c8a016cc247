"""Checkpoints and fitted fields on disk: safetensors for tensors, JSON for everything else.

A checkpoint is ONE ``.safetensors`` file whose metadata holds the JSON config (field, learner,
training, data, step, version), so it rebuilds its own model and is replaced atomically.
Loading is strict: missing, unexpected or reshaped tensors raise :class:`CheckpointMismatch`.
"""
from __future__ import annotations

import contextlib
import contextvars
import fcntl
import glob
import hashlib
import json
import os
import signal
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from .errors import CheckpointMismatch, MetaINRError, NonFiniteTensors, not_found

FORMAT_VERSION = 1
META_KEY = "metainr"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_target(path: str | Path) -> Path:
    """The file an output written to ``path`` lands in: ``path`` itself, or the target of a symlink
    (outputs are written THROUGH symlinks, replacing the target atomically). An existing target
    that is not a regular file (a directory, a device, a FIFO, a socket) is refused with a
    one-line :class:`MetaINRError`, as is a directory part that exists as a file."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.exists() and not target.is_file():
        kind = "a directory" if target.is_dir() else "not a regular file (a device, FIFO or socket)"
        via = f" (the target of symlink {path})" if target != path else ""
        raise MetaINRError(f"refusing to write {target}{via}: it is {kind}")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MetaINRError(f"cannot write {path}: {parent} is not a directory")
            break
    return target


def check_outputs(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path | None]) -> None:
    """Before any work: refuse (one line) outputs of a command that would replace one of its
    inputs (the same file, also through symlinks or hard links) or one another, whose names the
    filesystem cannot hold or whose folder cannot be written; and remove the temp files a killed
    write of each output left beside it (:func:`remove_torn_temps`)."""
    ins = [Path(p) for p in inputs if p is not None]
    seen: dict[str, Path] = {}
    for out in (Path(p) for p in outputs if p is not None):
        _check_names(out, out)  # first: a name too long makes every later look at the path fail
        target = output_target(out)
        key = os.path.realpath(target)
        if key in seen:
            raise MetaINRError(f"two outputs are the same file: {seen[key]} and {out}")
        seen[key] = out
        for src in ins:
            same = os.path.realpath(src) == key
            if not same and src.exists() and target.exists():
                with contextlib.suppress(OSError):
                    same = os.path.samefile(src, target)
            if same:
                raise MetaINRError(f"refusing to write {out}: it is an input of this command ({src}); choose another "
                                   "output path")
        _check_writable(out, target)
        remove_torn_temps(target)


def _existing_folder(path: Path) -> Path:
    """The nearest of ``path``'s parent folders that exists."""
    for parent in Path(os.path.abspath(path)).parents:
        if os.path.isdir(parent):  # never raises (a name too long is simply not a folder)
            return parent
    return Path("/")


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the filesystem of ``folder`` (or of its nearest existing parent) holds."""
    try:
        return int(os.pathconf(folder if os.path.isdir(folder) else _existing_folder(folder), "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _check_names(out: Path, target: Path) -> None:
    """Refuse an output whose name (or a folder's on its way) is too long for its filesystem, or
    whose path is too long."""
    longest = _name_max(target.parent)
    full = Path(os.path.abspath(target))
    for part in full.parts[1:]:
        if len(os.fsencode(part)) > longest:
            raise MetaINRError(f"cannot write {out}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes, over "
                               f"the {longest} its filesystem allows")
    if len(os.fsencode(str(full))) >= 4096:
        raise MetaINRError(f"cannot write {out}: its path is {len(os.fsencode(str(full)))} bytes, over the 4095 a "
                           "path may have")


def _check_writable(out: Path, target: Path) -> None:
    """Refuse, before any work, an output (``target``: where it lands) whose names do not fit
    (:func:`_check_names`) or whose nearest existing folder is not writable."""
    _check_names(out, target)
    folder = target.parent if os.path.isdir(target.parent) else _existing_folder(target)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MetaINRError(f"cannot write {out}: folder {folder} is not writable")


TEMP_SUFFIX = ".tmp"
_RANDOM = 8
"""characters of mkstemp's random part"""


def temp_prefix(target: Path) -> str:
    """The prefix of the temp files of an atomic write of ``target``: ``.NAME.``, or for a name
    too long to take it within its filesystem's limit, ``.SHORTER~HASH.`` (so any valid name is
    writable); a temp file is the prefix, 8 random characters and ``.tmp``."""
    room = _name_max(target.parent) - len(TEMP_SUFFIX) - _RANDOM
    prefix = f".{target.name}."
    if len(os.fsencode(prefix)) <= room:
        return prefix
    raw = os.fsencode(target.name)
    return f".{os.fsdecode(raw[:max(0, room - 15)])}~{hashlib.sha1(raw).hexdigest()[:12]}."


def remove_torn_temps(target: str | Path) -> list[Path]:
    """Delete the temp files that killed atomic writes of ``target`` left beside it. A write in
    progress holds a lock on its temp file, so only the temps of dead writers are removed."""
    target = Path(target)
    prefix = temp_prefix(target)
    try:
        found = [p for p in target.parent.glob(glob.escape(prefix) + "*" + TEMP_SUFFIX)
                 if len(p.name) == len(prefix) + _RANDOM + len(TEMP_SUFFIX)]
    except OSError:
        return []
    removed = []
    for path in found:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
            removed.append(path)
        except OSError:
            pass  # a live writer's temp (locked), or gone already
        finally:
            os.close(fd)
    return removed


@dataclass
class _Staged:
    """A temp file written and synced, waiting to be renamed over its target (its lock held)."""

    tmp: str
    target: Path
    fd: int


_GROUP: contextvars.ContextVar[list[_Staged] | None] = contextvars.ContextVar("metainr_write_group", default=None)


def _stage(target: Path, write: Callable[[str], None]) -> _Staged:
    """Write a temp file beside ``target`` with ``write(tmp_path)``, fsync it and give it the mode
    of the file it replaces (or 0666 minus the umask for a new one). Any failure to write (a full
    disk, a file size limit, the writer library's own error type) is a one-line MetaINRError
    naming ``target``, and no temp file is left."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(target.stat().st_mode) if target.is_file() else 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target), suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise MetaINRError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the rename: a later run's clean-up leaves it alone
        write(tmp)
        if os.stat(tmp).st_ino != os.fstat(fd).st_ino:  # the writer replaced the file: lock the new one
            new = os.open(tmp, os.O_RDONLY)
            fcntl.flock(new, fcntl.LOCK_EX)
            os.close(fd)
            fd = new
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
    except BaseException as exc:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, SafetensorError)):  # ENOSPC, EFBIG, ...; safetensors raises its own type
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())[:200]
            raise MetaINRError(f"cannot write {target}: {reason or type(exc).__name__}") from None
        raise
    return _Staged(tmp, target, fd)


def _discard(staged: list[_Staged]) -> None:
    for s in staged:
        with contextlib.suppress(OSError):
            os.close(s.fd)
        Path(s.tmp).unlink(missing_ok=True)


def _commit(staged: list[_Staged]) -> None:
    """Rename every staged temp over its target (a SIGINT / SIGTERM waits until all are in place)."""
    done = 0
    try:
        with _signals_deferred(len(staged) > 1):
            for s in staged:
                os.replace(s.tmp, s.target)
                done += 1
    except OSError as exc:
        raise MetaINRError(f"cannot write {staged[done].target}: {exc.strerror or exc}") from None
    finally:
        _discard(staged[done:])
        for s in staged[:done]:
            with contextlib.suppress(OSError):
                os.close(s.fd)


@contextlib.contextmanager
def _signals_deferred(defer: bool) -> Iterator[None]:
    """Hold SIGINT / SIGTERM back during the block (main thread only), then deliver them."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if not defer or threading.current_thread() is not threading.main_thread() or None in handlers.values():
        yield
        return
    caught: list[int] = []
    for s in handlers:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        for signum in caught:
            signal.raise_signal(signum)


@contextlib.contextmanager
def atomic_group() -> Iterator[None]:
    """Write several files all or nothing: inside the block, every atomic write (``atomic_write_*``,
    :func:`save_tensors`, a task's ``write``) only stages its temp file; when the block ends they
    are renamed into place together, and if it raises (an error, an interrupt) every temp is
    removed and every target is left as it was. A group inside a group joins the outer one."""
    if _GROUP.get() is not None:
        yield
        return
    staged: list[_Staged] = []
    token = _GROUP.set(staged)
    try:
        yield
    except BaseException:
        _discard(staged)
        raise
    finally:
        _GROUP.reset(token)
    _commit(staged)


def _replace_into(target: Path, write: Callable[[str], None]) -> int:
    """Write ``target`` atomically with ``write(tmp_path)`` (see :func:`_stage`): renamed into
    place now, or with the rest of the :func:`atomic_group` in progress. Returns its size in bytes."""
    staged = _stage(target, write)
    size = os.stat(staged.tmp).st_size
    group = _GROUP.get()
    if group is None:
        _commit([staged])
        return size
    for earlier in [s for s in group if s.target == target]:  # the same file twice: the last write wins
        group.remove(earlier)
        _discard([earlier])
    group.append(staged)
    return size


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a partial one (through
    a symlink into its target; see :func:`output_target` for what is refused)."""
    _replace_into(output_target(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (non-finite floats are an error, never NaN text)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def save_tensors(path: str | Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> int:
    """Atomically write tensors + a JSON-serialisable ``meta`` dict as one safetensors file and
    return its size in bytes. Only finite tensors are written: a NaN or infinite value raises
    :class:`NonFiniteTensors` and leaves whatever was at ``path`` in place."""
    payload = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    bad = [k for k, v in payload.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteTensors(f"refusing to write {path}: {bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}"
                               " hold NaN or infinite values")
    meta_str = {META_KEY: json.dumps({"version": FORMAT_VERSION, **meta}, allow_nan=False)}
    return _replace_into(output_target(path), lambda tmp: save_file(payload, tmp, metadata=meta_str))


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors` -> (tensors, meta)."""
    path = Path(path)
    raw = _raw_meta(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MetaINRError(f"cannot read checkpoint {path}: {exc}") from None
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise MetaINRError(f"{path} holds NaN or infinite values (in {bad}): a damaged file")
    return tensors, _parse_meta(path, raw)


def load_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` dict of a file written by :func:`save_tensors`, from its header alone (no tensor is read)."""
    path = Path(path)
    return _parse_meta(path, _raw_meta(path))


def _raw_meta(path: Path) -> str:
    if not path.is_file():
        raise not_found(path, "checkpoint")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise MetaINRError(f"cannot read checkpoint {path}: {exc}") from None
    if raw is None:
        raise MetaINRError(f"{path} is not a metainr checkpoint (no '{META_KEY}' metadata)")
    return raw


def _parse_meta(path: Path, raw: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MetaINRError(f"{path} has unreadable metadata ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(meta, dict):
        raise MetaINRError(f"{path} has unreadable metadata (not a JSON object)")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointMismatch(f"{path} has format version {meta.get('version')}, expected {FORMAT_VERSION}")
    return meta


def load_strict(target: Mapping[str, Tensor], source: Mapping[str, Tensor], what: str) -> None:
    """Copy ``source`` into the same-named tensors of ``target``; any key or shape difference raises."""
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{what} does not match: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    for name, t in target.items():
        if t.shape != source[name].shape:
            raise CheckpointMismatch(
                f"{what} does not match: {name} has shape {tuple(source[name].shape)} in the file, "
                f"{tuple(t.shape)} in the model"
            )
    with torch.no_grad():
        for name, t in target.items():
            t.copy_(source[name])
