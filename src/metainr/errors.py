"""User-facing errors: the CLI prints these as one line and exits non-zero."""
from __future__ import annotations

import errno
import os
from pathlib import Path


class MetaINRError(Exception):
    """A mistake in user input (file, option, checkpoint) with a one-line explanation."""


class BadOption(MetaINRError):
    """A command-line option's value is unusable (the CLI exits with code 2, as for argparse's errors)."""


class CheckpointMismatch(MetaINRError):
    """A checkpoint does not match the architecture or learner it is loaded into."""


class TrainingDiverged(MetaINRError):
    """The outer loss became NaN or infinite; the last good checkpoint is kept."""


class NonFiniteTensors(MetaINRError):
    """Tensors to be saved hold NaN or infinite values; nothing was written."""


_REASONS = {errno.ELOOP: "a symlink loop (too many levels of symbolic links)", errno.EACCES: "permission denied",
            errno.ENOTDIR: "a part of its path is not a folder", errno.ENAMETOOLONG: "its name is too long"}


def not_found(path: str | Path, what: str, folder: bool = False) -> MetaINRError:
    """The error for a ``what`` (e.g. "image file") at ``path`` that cannot be used: "not found",
    or why not when it is something else (a symlink loop, no permission, a path through a file,
    a folder where a file is expected or, with ``folder``, the other way round)."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno in _REASONS:
            return MetaINRError(f"cannot read {what} {path}: {_REASONS[exc.errno]}")
    else:
        if folder:
            if not Path(path).is_dir():
                return MetaINRError(f"{what} {path} is not a folder")
        elif Path(path).is_dir():
            return MetaINRError(f"{what} {path} is a directory, not a file")
        if not Path(path).is_file():
            return MetaINRError(f"{what} {path} is not a regular file (a device, FIFO or socket)")
    return MetaINRError(f"{what} not found: {path}")
