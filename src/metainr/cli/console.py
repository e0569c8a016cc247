"""What the command prints besides its results: its own log lines, never a library's raw
warnings or log records (those appear with ``--verbose``, one line each), and the line an
interrupt ends with, which says what the verb leaves behind."""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from typing import Iterator, TextIO

INTERRUPTED = {
    "meta-train": "the last checkpoint is kept; --resume continues",
    "encode": "the shards already written are kept; the same command continues",
    "demo": "the files already written are kept, each complete",
}
"""verb -> what an interrupt leaves behind (other verbs write their outputs only at their end)"""
NOTHING_WRITTEN = "no output was written"


def interrupted_message(verb: str | None) -> str:
    """The line an interrupt of ``verb`` (None: before the verb was known) ends with."""
    if verb is None:
        return "metainr: interrupted"
    return f"metainr: interrupted ({INTERRUPTED.get(verb, NOTHING_WRITTEN)})"


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record comes (tests redirect it)."""

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class _OursOrVerbose(logging.Filter):
    """metainr's records always; other libraries' only with --verbose, marked with their logger."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "metainr" or record.name.startswith("metainr."):
            return True
        if not self.verbose:
            return False
        record.msg, record.args = f"metainr: note from {record.name}: {' '.join(record.getMessage().split())}", ()
        return True


_HANDLER = _Stderr()
_HANDLER.setFormatter(logging.Formatter("%(message)s"))
log = logging.getLogger("metainr")


def setup_logging(verbose: bool) -> None:
    """metainr's log lines on stderr (INFO with ``verbose``, else WARNING and up); other libraries'
    log records only with ``verbose``. A root logger that already has handlers (an application
    embedding metainr, a test runner) keeps them: only the level is set."""
    root = logging.getLogger()
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    _HANDLER.filters = [_OursOrVerbose(verbose)]
    if not root.handlers:
        root.addHandler(_HANDLER)


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    module = filename.rsplit("/site-packages/", 1)[-1].rsplit("/", 1)[-1]
    log.info("metainr: note: %s from %s:%d: %s", category.__name__, module, lineno, " ".join(str(message).split()))


@contextlib.contextmanager
def warnings_as_notes() -> Iterator[None]:
    """Python warnings raised in the block (numpy's, torch's, Pillow's, ...) become one-line log
    notes, shown with ``--verbose`` only: never a raw warning on the terminal."""
    with warnings.catch_warnings():
        warnings.showwarning = _log_warning
        yield
