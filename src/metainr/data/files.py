"""Users' files: one ``.npy`` reader for slices, sinograms, grids and references, the listing of a
folder of signals, and the grey PNG (+ .npy) writer of image-like reconstructions."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import MetaINRError, not_found
from ..limits import check_pixels, check_signals


KIND_NAMES = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "c": "complex numbers"}
"""numpy's dtype kinds, as an error names them"""


def read_npy(path: str | Path, what: str = "array", kinds: str = "biuf") -> np.ndarray:
    """The numeric array in a ``.npy`` file (no pickles). The header is read first: a dtype whose
    kind is not one of ``kinds`` (numpy's letters: b bool, i / u integers, f floats, c complex;
    default: real numbers and booleans), a shape whose size is over ``max_pixels``
    (:mod:`metainr.limits`) or whose data the file does not hold is refused before anything is
    allocated. Every failure is a one-line :class:`MetaINRError` naming the file as ``what``
    (e.g. "sinogram") and, for a dtype, the dtype."""
    file = Path(path)
    if not file.is_file():
        raise not_found(file, f"{what} file")
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
        if dtype.kind not in kinds:
            wanted = " or ".join(dict.fromkeys(KIND_NAMES[k] for k in kinds if k in KIND_NAMES))
            raise MetaINRError(f"{what} {file} holds {KIND_NAMES.get(dtype.kind, 'other')} (dtype {dtype}); a {what} "
                               f"must hold {wanted}")
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


def one_line_reason(exc: BaseException, most: int = 300) -> str:
    """An exception's message as one line of at most ``most`` characters for a user error (its
    type's name when it has none; an ffmpeg log after ``=== stderr ===`` is left out)."""
    return (" ".join(str(exc).split("=== stderr ===")[0].split()) or type(exc).__name__)[:most]


def folder_files(folder: str | Path, suffixes: Iterable[str], what: str) -> list[Path]:
    """The files of ``folder`` whose suffix (any case) is one of ``suffixes``, sorted by name. A
    path that is not a folder, a folder without such files, or more files than ``max_signals``
    is a one-line :class:`MetaINRError` naming ``what`` (e.g. "masks")."""
    folder = Path(folder)
    suffixes = {s.lower() for s in suffixes}
    if not folder.is_dir():
        raise not_found(folder, f"folder of {what}", folder=True)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise MetaINRError(f"no {what} ({', '.join(sorted(suffixes))}) in folder {folder}")
    check_signals(len(files), f"folder {folder}")
    return files


def write_grey(png: str | Path, image: np.ndarray, npy: str | Path | None = None) -> None:
    """An image (H, W) of values in [0, 1] as an 8-bit grey PNG (clamped), and, with ``npy``, as
    float32 .npy (not clamped), written atomically: both files or neither."""
    from PIL import Image

    from ..disk import atomic_group, atomic_write_bytes

    image = np.asarray(image, dtype=np.float32)
    picture = io.BytesIO()
    Image.fromarray((image.clip(0, 1) * 255 + 0.5).astype(np.uint8)).save(picture, format="PNG")
    array = io.BytesIO()
    if npy is not None:
        np.save(array, image, allow_pickle=False)
    with atomic_group():
        atomic_write_bytes(png, picture.getvalue())
        if npy is not None:
            atomic_write_bytes(npy, array.getvalue())
