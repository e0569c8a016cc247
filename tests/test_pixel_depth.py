"""load_image keeps each file's bit depth: 16-bit and float images map to [0, 1] exactly.

16-bit PNGs are written by a tiny independent encoder (zlib + struct), so the reader is not
checked against itself; every row uses one of the five PNG filters, and Adam7 interlacing is
covered, because those depend on the bytes per pixel the decoder assumes.
"""
from __future__ import annotations

import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from metainr import MetaINRError
from metainr.data import images
from metainr.data.images import load_image
from metainr.limits import use_limits

LUMA = np.array([0.2125, 0.7154, 0.0721])
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _filtered(rows: np.ndarray, bpp: int) -> bytes:
    """PNG scanlines (h, n) uint8 -> filtered stream; row y uses filter y % 5 (None..Paeth)."""
    out, prev = [], np.zeros(rows.shape[1], np.int32)
    for y, cur in enumerate(rows.astype(np.int32)):
        a = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        c = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        b, ftype = prev, y % 5
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = [0, a, b, (a + b) // 2, paeth][ftype]
        out.append(bytes([ftype]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur
    return b"".join(out)


def png_bytes(width: int, height: int, depth: int, ctype: int, idat: bytes, interlace: int = 0) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def write_png16(path, array: np.ndarray, interlace: int = 0):
    """uint16 (H, W[, C]) -> 16-bit PNG; C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA."""
    a = array if array.ndim == 3 else array[..., None]
    h, w, ch = a.shape

    def scanlines(sub):
        return sub.astype(">u2").reshape(sub.shape[0], -1).view(np.uint8)

    passes = [a[y0::dy, x0::dx] for x0, y0, dx, dy in ADAM7] if interlace else [a]
    data = b"".join(_filtered(scanlines(p), 2 * ch) for p in passes if p.size)
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[ch]
    path.write_bytes(png_bytes(w, h, 16, ctype, zlib.compress(data), interlace))
    return path


def gradient16(h=7, w=9, ch=3, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 65536, (h, w, ch)).astype(np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    return a


def test_mid_grey_16bit_png_reads_as_half_not_white(tmp_path):
    grey = np.full((5, 6), 32768, np.uint16)
    out = load_image(write_png16(tmp_path / "g.png", grey)).numpy()
    assert out.shape == (5, 6, 1)
    np.testing.assert_allclose(out[..., 0], 32768 / 65535, atol=1e-6)


@pytest.mark.parametrize("interlace", [0, 1])
@pytest.mark.parametrize("ch", [1, 2, 3, 4])
def test_16bit_png_full_depth(tmp_path, ch, interlace):
    a = gradient16(ch=ch, seed=ch)
    out = load_image(write_png16(tmp_path / "x.png", a, interlace)).numpy()
    want = a[..., :1] if ch <= 2 else a[..., :3]  # alpha dropped
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want / 65535, atol=1e-6, rtol=0)


def test_channels_forced_on_16bit(tmp_path):
    rgb = gradient16()
    grey = load_image(write_png16(tmp_path / "rgb.png", rgb), channels=1).numpy()
    np.testing.assert_allclose(grey[..., 0], (rgb / 65535) @ LUMA, atol=1e-5)
    g = gradient16(ch=1)[..., 0]
    out = load_image(write_png16(tmp_path / "g.png", g), channels=3).numpy()
    assert out.shape == (*g.shape, 3)
    np.testing.assert_allclose(out, np.repeat(g[..., None] / 65535, 3, axis=-1), atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "1"])
def test_8bit_png_modes(tmp_path, mode):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (6, 7, 4)).astype(np.uint8)
    if mode == "P":
        im = Image.fromarray(rgba[..., :3]).convert("P")
        want = np.asarray(im.convert("RGB")) / 255
    elif mode == "1":
        bits = rgba[..., 0] > 127
        im, want = Image.fromarray(bits), bits[..., None].astype(float)
    else:
        arr = {"L": rgba[..., 0], "LA": rgba[..., :2], "RGB": rgba[..., :3], "RGBA": rgba}[mode]
        im = Image.fromarray(arr, mode)
        want = (arr[..., None] if arr.ndim == 2 else arr[..., : 1 if mode == "LA" else 3]) / 255
    im.save(tmp_path / "x.png")
    out = load_image(tmp_path / "x.png").numpy()
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, atol=1e-6)


@pytest.mark.parametrize("suffix", [".bmp", ".webp", ".jpg"])
def test_other_8bit_formats(tmp_path, suffix):
    y, x = np.mgrid[0:16, 0:16]
    rgb = np.stack([x * 16, y * 16, 255 - x * 8 - y * 8], axis=-1).astype(np.uint8)  # smooth, so jpeg keeps it
    options = {".webp": {"lossless": True}, ".jpg": {"quality": 95, "subsampling": 0}}.get(suffix, {})
    Image.fromarray(rgb).save(tmp_path / f"x{suffix}", **options)
    out = load_image(tmp_path / f"x{suffix}").numpy()
    assert out.shape == (16, 16, 3)
    tol = 0.05 if suffix == ".jpg" else 1e-6  # jpeg is lossy: the scale is what is checked
    np.testing.assert_allclose(out, rgb / 255, atol=tol)


@pytest.mark.parametrize("ch", [1, 3])
def test_float_tiff(tmp_path, ch):
    f = np.random.default_rng(3).random((5, 6, ch)).astype(np.float32)
    tifffile.imwrite(tmp_path / "in.tif", f[..., 0] if ch == 1 else f, photometric="minisblack" if ch == 1 else "rgb")
    np.testing.assert_array_equal(load_image(tmp_path / "in.tif").numpy(), f)
    wide = f * 3 - 1  # values outside [0, 1] are clipped
    tifffile.imwrite(tmp_path / "out.tif", wide[..., 0] if ch == 1 else wide, photometric="minisblack" if ch == 1 else "rgb")
    np.testing.assert_allclose(load_image(tmp_path / "out.tif").numpy(), np.clip(wide, 0, 1), atol=1e-7)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_tiff(tmp_path, bad):
    f = np.full((4, 4), 0.5, np.float32)
    f[1, 2] = bad
    tifffile.imwrite(tmp_path / "nan.tif", f)
    with pytest.raises(MetaINRError, match="NaN or infinite") as err:
        load_image(tmp_path / "nan.tif")
    assert "\n" not in str(err.value) and "nan.tif" in str(err.value)


def test_uint_tiff(tmp_path):
    rgb = gradient16()
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb")
    np.testing.assert_allclose(load_image(tmp_path / "rgb16.tif").numpy(), rgb / 65535, atol=1e-6)
    tifffile.imwrite(tmp_path / "g16.tif", rgb[..., 0])
    np.testing.assert_allclose(load_image(tmp_path / "g16.tif").numpy(), rgb[..., :1] / 65535, atol=1e-6)
    rgba = gradient16(ch=4)
    tifffile.imwrite(tmp_path / "rgba16.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_allclose(load_image(tmp_path / "rgba16.tif").numpy(), rgba[..., :3] / 65535, atol=1e-6)
    u8 = (rgb >> 8).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb8.tif", u8, photometric="rgb")
    np.testing.assert_allclose(load_image(tmp_path / "rgb8.tif").numpy(), u8 / 255, atol=1e-6)
    Image.fromarray(u8).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # left to Pillow
    np.testing.assert_allclose(load_image(tmp_path / "lzw.tif").numpy(), u8 / 255, atol=1e-6)


def test_huge_declared_size_fails_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_bytes(20000, 20000, 8, 0, zlib.compress(b"\x00" * 10)))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(MetaINRError, match="--max-pixels") as err:
            load_image(path)
    assert time.perf_counter() - start < 1.0
    assert "20000x20000" in str(err.value) and "\n" not in str(err.value)
    assert not caught  # Pillow's DecompressionBombError/Warning never escape
    # A raised limit lets the header past Pillow's own bomb check (ours is the one that counts).
    with use_limits(max_pixels=10**9), images._open_pil(path) as im:
        assert im.size == (20000, 20000)
    bomb_warning = tmp_path / "warn.png"  # between Pillow's warning and error sizes
    bomb_warning.write_bytes(png_bytes(10000, 10000, 8, 0, zlib.compress(b"\x00" * 10)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(MetaINRError, match="--max-pixels"):
            load_image(bomb_warning)
    assert not caught


def test_limit_applies_to_each_reader(tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((10, 10), np.uint16))
    write_png16(tmp_path / "x.png", np.zeros((10, 10), np.uint16))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "x.jpg")
    for name in ("x.tif", "x.png", "x.jpg"):
        with use_limits(max_pixels=99), pytest.raises(MetaINRError, match=r"10x10.*--max-pixels"):
            load_image(tmp_path / name)
        with use_limits(max_pixels=100):
            assert load_image(tmp_path / name).shape == (10, 10, 1)


def test_failures_are_one_line(tmp_path):
    good = write_png16(tmp_path / "good.png", gradient16()).read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 20)
    bad_crc = bytearray(good)
    bad_crc[50] ^= 0xFF  # inside the IDAT's deflate stream
    (tmp_path / "crc.png").write_bytes(bytes(bad_crc))
    (tmp_path / "dir.png").mkdir()
    five = np.zeros((4, 4, 5), np.uint8)  # RGB + 2 extra samples: no mode for that
    tifffile.imwrite(tmp_path / "five.tif", five, photometric="rgb", planarconfig="contig",
                     extrasamples=["unspecified"] * 2)
    cases = {"truncated.png": "cannot read image", "garbage.png": "cannot read image", "bad.tif": "cannot read image",
             "crc.png": "cannot read image", "dir.png": "directory", "missing.png": "not found",
             "five.tif": "shape"}
    for name, message in cases.items():
        with pytest.raises(MetaINRError, match=message) as err:
            load_image(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
