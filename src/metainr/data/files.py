"""Reading users' array files: one ``.npy`` reader for slices, sinograms and references."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MetaINRError


def read_npy(path: str | Path, what: str = "array") -> np.ndarray:
    """The array in a ``.npy`` file (no pickles); a missing or unreadable file raises a one-line
    :class:`MetaINRError` naming it as ``what`` (e.g. "sinogram")."""
    file = Path(path)
    if not file.is_file():
        raise MetaINRError(f"{what} file not found: {file}")
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MetaINRError(f"cannot read {what} {file}: {reason}") from None
