"""Checkpoints and fitted fields on disk: safetensors for tensors, JSON for everything else.

A checkpoint is ONE ``.safetensors`` file whose metadata holds the JSON config (field, learner,
training, data, step, version), so it rebuilds its own model and is replaced atomically.
Loading is strict: missing, unexpected or reshaped tensors raise :class:`CheckpointMismatch`.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from .errors import CheckpointMismatch, MetaINRError, NonFiniteTensors

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
    """Refuse (one line) outputs of a command that would replace one of its inputs (the same
    file, also through symlinks or hard links) or one another."""
    ins = [Path(p) for p in inputs if p is not None]
    seen: dict[str, Path] = {}
    for out in (Path(p) for p in outputs if p is not None):
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


def _replace_into(target: Path, write: Callable[[str], None]) -> None:
    """Write a temp file beside ``target`` with ``write(tmp_path)``, fsync it, give it the mode
    of the file it replaces (or 0666 minus the umask for a new one), then rename it over ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(target.stat().st_mode) if target.is_file() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a partial one (through
    a symlink into its target; see :func:`output_target` for what is refused)."""
    _replace_into(output_target(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (non-finite floats are an error, never NaN text)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def save_tensors(path: str | Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """Atomically write tensors + a JSON-serialisable ``meta`` dict as one safetensors file.
    Only finite tensors are written: a NaN or infinite value raises :class:`NonFiniteTensors`
    and leaves whatever was at ``path`` in place."""
    payload = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    bad = [k for k, v in payload.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteTensors(f"refusing to write {path}: {bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}"
                               " hold NaN or infinite values")
    meta_str = {META_KEY: json.dumps({"version": FORMAT_VERSION, **meta}, allow_nan=False)}
    _replace_into(output_target(path), lambda tmp: save_file(payload, tmp, metadata=meta_str))


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
        raise MetaINRError(f"checkpoint not found: {path}")
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
    except ValueError as exc:
        raise MetaINRError(f"{path} has unreadable metadata ({exc})") from None
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
