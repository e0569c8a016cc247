"""Reading users' array files: one ``.npy`` reader for slices, sinograms and references."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MetaINRError
from ..limits import check_pixels


def read_npy(path: str | Path, what: str = "array") -> np.ndarray:
    """The numeric array in a ``.npy`` file (no pickles). The header is read first: a shape whose
    size is over ``max_pixels`` (:mod:`metainr.limits`) or whose data the file does not hold is
    refused before anything is allocated. Every failure is a one-line :class:`MetaINRError`
    naming the file as ``what`` (e.g. "sinogram")."""
    file = Path(path)
    if not file.is_file():
        raise MetaINRError(f"{what} file not found: {file}")
    try:
        with open(file, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
        if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            raise ValueError(f"it holds {dtype} values, not numbers")
        count = int(np.prod(shape, dtype=object)) if shape else 1
        check_pixels(count, f"{what} {file} {tuple(shape)}")
        if offset + count * dtype.itemsize > file.stat().st_size:
            raise ValueError(f"the file is shorter than its header's shape {tuple(shape)} needs (truncated?)")
        return np.load(file, allow_pickle=False)
    except MetaINRError:
        raise
    except (ValueError, OSError, EOFError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MetaINRError(f"cannot read {what} {file}: {reason}") from None
