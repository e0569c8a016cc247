"""Run directories: held by one run at a time, never silently reused.

A run holds an exclusive ``flock`` on ``RUN/.lock`` while it trains (released by the kernel when
the process ends, however it ends), so a second run into the same directory fails at once with a
one-line error naming the holder. A run writes a marker, ``RUN/.metainr-run.json``, with its id
and every file it writes (listed before each is written); ``overwrite`` deletes those files and
nothing else, and a directory that already holds a run is reused only to ``resume`` it or after
``overwrite``. A directory without a marker is used only when it is empty (a run directory is the
user's folder too), and ``/`` and the home directory (also through a symlink) never.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType

from ..disk import atomic_write_json
from ..errors import MetaINRError
from ..json_files import parse_json

RUN_FILES = ("checkpoint.safetensors", "best.safetensors", "config.json", "metrics.jsonl", "training.png",
             "selected.png")
"""what a run writes (plus ``round_*.safetensors`` of pruning rounds and ``tensorboard/`` event files)"""
BOARD_DIR = "tensorboard"
LOCK_NAME = ".lock"
MARKER_NAME = ".metainr-run.json"
"""written by metainr into every run directory: the run's id and every file it wrote"""


def _refuse_special(path: Path) -> None:
    """``/``, the home directory (and a symlink that resolves to them) are never run directories."""
    real = Path(os.path.realpath(path))
    home = Path(os.path.realpath(Path.home()))
    if real == Path(real.anchor) or real == home:
        via = f" ({path} resolves to it)" if real != path.absolute() else ""
        raise MetaINRError(f"refusing to use {real} as a run directory{via}: choose a folder of its own")


def read_marker(run: Path) -> dict | None:
    """The run marker of ``run`` ({"run": id, "files": [...]}), None when there is none; a damaged
    marker is a one-line error."""
    path = run / MARKER_NAME
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > 1 << 20:
            raise ValueError("over 1 MiB")
        marker = parse_json(path.read_bytes(), str(path))
        if not (isinstance(marker, dict) and isinstance(marker.get("files"), list)
                and all(isinstance(f, str) for f in marker["files"])):
            raise ValueError("not a run marker")
    except (OSError, ValueError, MetaINRError) as exc:
        raise MetaINRError(f"{path} is damaged ({exc}): remove it to use {run} as a new run directory") from None
    return marker


def run_files(run: Path) -> list[Path]:
    """The files the run in ``run`` wrote, as its marker lists them (those that still exist; a
    listed directory stands for the files in it)."""
    marker = read_marker(run) if run.is_dir() else None
    if marker is None:
        return []
    found: list[Path] = []
    for name in filter(_below, marker["files"]):
        path = run / name
        if path.is_dir() and not path.is_symlink():
            found += sorted(p for p in path.iterdir() if p.is_file() or p.is_symlink())
        elif path.is_file() or path.is_symlink():
            found.append(path)
    return found


def _below(name: str) -> bool:
    """A marker names files below its run only (a tampered ``../x`` or ``/x`` is ignored)."""
    return not Path(name).is_absolute() and ".." not in Path(name).parts


def remove_torn_writes(run: Path) -> list[Path]:
    """Delete the temp files a killed atomic write of one of the run's files left (``.NAME.*.tmp``)."""
    marker = read_marker(run)
    torn = [t for name in filter(_below, marker["files"] if marker else [])
            for t in (run / name).parent.glob(f".{Path(name).name}.*.tmp")]
    for path in torn:
        path.unlink(missing_ok=True)
    return torn


def _foreign(run: Path) -> list[str]:
    """Entries of an unmarked ``run`` (other than its lock): files metainr did not write there."""
    return sorted(p.name for p in run.iterdir() if p.name != LOCK_NAME) if run.is_dir() else []


def own(run: Path, *names: str) -> None:
    """Add ``names`` (relative to ``run``) to its marker, before they are written: whatever a kill
    leaves behind, ``--overwrite`` knows it for the run's."""
    marker = read_marker(run)
    if marker is None:
        return
    new = [n for n in names if n not in marker["files"]]
    if new:
        marker["files"] += new
        atomic_write_json(run / MARKER_NAME, marker)


class RunDirectory:
    """``with RunDirectory(path, resume=..., overwrite=...):`` holds ``path`` for one run.

    On entry: creates the directory, takes its lock (:class:`MetaINRError` naming the holder if
    another process has it), then refuses a directory holding a previous run's files unless
    ``resume`` (continue it) or ``overwrite`` (those files are deleted first)."""

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.resume, self.overwrite = resume, overwrite
        self._fd: int | None = None

    def __enter__(self) -> "RunDirectory":
        if self.path.exists() and not self.path.is_dir():
            raise MetaINRError(f"run directory {self.path} exists and is not a directory")
        _refuse_special(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise MetaINRError(f"cannot use run directory {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise MetaINRError(f"run directory {self.path} is in use by another run ({holder}); wait for it to end "
                               "or choose another --run") from None
        self._fd = fd
        try:
            self._claim()
        except BaseException:
            self.release()
            raise
        return self

    def _claim(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                        "command": " ".join(sys.argv[:8])[:300]}).encode(), 0)
        marker = read_marker(self.path)
        if marker is None:
            foreign = _foreign(self.path)
            if foreign and self.resume and (self.path / "checkpoint.safetensors").is_file():
                # a run of an older metainr (no marker): adopt its files to continue it
                marker = {"run": uuid.uuid4().hex, "files": [n for n in RUN_FILES if (self.path / n).exists()]}
            elif foreign:
                names = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise MetaINRError(f"{self.path} is not empty ({names}) and holds no metainr run: choose a new or "
                                   "empty directory for --run (nothing there was changed)")
            else:
                marker = {"run": uuid.uuid4().hex, "files": []}
            atomic_write_json(self.path / MARKER_NAME, marker)
            return
        remove_torn_writes(self.path)
        previous = run_files(self.path)
        if not previous or self.resume:
            return
        if not self.overwrite:
            names = ", ".join(p.name for p in previous[:3]) + (", ..." if len(previous) > 3 else "")
            raise MetaINRError(f"run directory {self.path} already holds a run ({names}); pass --resume to continue "
                               "it or --overwrite to start again (deletes those files)")
        for path in previous:
            path.unlink(missing_ok=True)
        atomic_write_json(self.path / MARKER_NAME, {"run": uuid.uuid4().hex, "files": []})

    def own(self, *names: str) -> None:
        """Record ``names`` (relative to the directory) as this run's files, before writing them."""
        own(self.path, *names)

    def release(self) -> None:
        """Give the lock back (the lock file stays: removing it would race with a new holder)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} since {info['since']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
