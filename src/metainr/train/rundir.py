"""Run directories: held by one run at a time, never silently reused.

A run holds an exclusive ``flock`` on ``RUN/.lock`` while it trains (released by the kernel when
the process ends, however it ends), so a second run into the same directory fails at once with a
one-line error naming the holder. A directory that already holds a run's files is reused only to
``resume`` it, or after ``overwrite`` deleted those files (and only those: a run directory is
the user's folder too).
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path
from types import TracebackType

from ..errors import MetaINRError

RUN_FILES = ("checkpoint.safetensors", "best.safetensors", "config.json", "metrics.jsonl", "training.png",
             "selected.png")
"""what a run writes (plus ``round_*.safetensors`` of pruning rounds and ``tensorboard/`` event files)"""
BOARD_DIR = "tensorboard"
LOCK_NAME = ".lock"


def run_files(run: Path) -> list[Path]:
    """The files of a previous run in ``run`` (those metainr writes; nothing else)."""
    if not run.is_dir():
        return []
    found = [run / name for name in RUN_FILES if (run / name).exists()]
    return (found + sorted(run.glob("round_*_density_*.safetensors"))
            + sorted((run / BOARD_DIR).glob("events.out.tfevents.*")))


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
        previous = run_files(self.path)
        if not previous or self.resume:
            return
        if not self.overwrite:
            names = ", ".join(p.name for p in previous[:3]) + (", ..." if len(previous) > 3 else "")
            raise MetaINRError(f"run directory {self.path} already holds a run ({names}); pass --resume to continue "
                               "it or --overwrite to start again (deletes those files)")
        for path in previous:
            path.unlink(missing_ok=True)

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
