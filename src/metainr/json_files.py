"""JSON that users hand to metainr (a views file, a run's config): the file's size is checked
against ``max_metadata_bytes`` before it is read, and anything unreadable (malformed, not UTF-8,
nested too deeply for the parser) is a one-line :class:`MetaINRError` naming the file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import MetaINRError, not_found
from .limits import check_metadata_size


def parse_json(text: str | bytes, what: str) -> Any:
    """``text`` parsed as JSON (NaN and infinities are left to the caller's checks); a failure names
    ``what`` (e.g. the file)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetaINRError(f"{what}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise MetaINRError(f"{what}: JSON nested too deeply to read") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise MetaINRError(f"{what}: unreadable JSON ({' '.join(str(exc).split())[:200]})") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The JSON in the file ``path``: its size checked against ``max_metadata_bytes`` first."""
    file = Path(path)
    if not file.is_file():  # never opened otherwise: a FIFO would block
        raise not_found(file, what)
    try:
        with open(file, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            check_metadata_size(size, f"{what} {file}")
            data = fh.read(size + 1)
    except OSError as exc:
        raise MetaINRError(f"cannot read {what} {file}: {exc.strerror or exc}") from None
    check_metadata_size(len(data), f"{what} {file}")  # a file that grew (or a FIFO): never past the limit
    return parse_json(data, f"{what} {file}")
