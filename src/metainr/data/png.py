"""PNG structure checks Pillow does not make: image data shorter than its header declares is
decoded by Pillow with the missing rows as zeros, silently; :func:`check_png_data` refuses it."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

from ..errors import MetaINRError

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""samples a pixel of each PNG colour type holds"""
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
"""the passes (x0, y0, dx, dy) of an interlaced PNG"""


def _png_data_bytes(width: int, height: int, depth: int, colour: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines the image data of a PNG of this header inflates to."""
    bits = depth * _PNG_CHANNELS.get(colour, 4)
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        cols, rows = -(-(width - x0) // dx) if width > x0 else 0, -(-(height - y0) // dy) if height > y0 else 0
        if cols and rows:
            total += rows * (1 + -(-cols * bits // 8))
    return total


def check_png_data(path: Path, piece: int = 1 << 20) -> None:
    """Refuse a PNG whose image data is shorter than its header declares (Pillow decodes it
    with the missing rows as zeros): its IDAT chunks are inflated in pieces, nothing kept."""
    with path.open("rb") as fh:
        fh.seek(8)
        length, kind = struct.unpack(">I4s", fh.read(8))
        if kind != b"IHDR" or length != 13:
            return  # not a plain PNG: Pillow's own checks apply
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", fh.read(13))
        expected = _png_data_bytes(width, height, depth, colour, bool(interlace))
        fh.seek(4, 1)
        inflater, got = zlib.decompressobj(), 0
        while got < expected:
            head = fh.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                break
            if kind != b"IDAT":
                fh.seek(length + 4, 1)
                continue
            left = length
            while left and got < expected:
                data = fh.read(min(piece, left))
                if not data:
                    break
                left -= len(data)
                got += len(inflater.decompress(data, piece))
                while inflater.unconsumed_tail and got < expected:
                    got += len(inflater.decompress(inflater.unconsumed_tail, piece))
            fh.seek(left + 4, 1)
    if got < expected:
        raise MetaINRError(f"cannot read image {path}: truncated (its pixel data holds {got:,} of the {expected:,} bytes "
                           f"its {width}x{height} header declares)")
