"""Video clips: a user's GIF / MP4 files or folders of frames, and procedural pans over photos.

A clip is ``(T, H, W, C)`` in [0, 1] (C = 1 grey or 3 RGB); a dataset is ``(n, T, H, W, C)``, all
clips one size. ``pans`` is the embedded default: a virtual camera panning and zooming over one of
scikit-image's bundled photos (train and test never share a photo), with small moving sprites.

File rules: a clip is a ``.gif`` (Pillow), an ``.mp4`` (imageio with PyAV, else imageio-ffmpeg: the
extra ``metainr[video]``) or a folder of frame images sorted by name. A reader keeps the FIRST
``frames`` frames (0: all; fewer is an error), resizes each so it covers ``height x width`` and crops
the centre (0 x 0: the file's size). The declared size (frames x H x W x C) is checked against
:mod:`metainr.limits` before any frame is decoded; every failure is a one-line MetaINRError naming the file.
"""
from __future__ import annotations

import importlib
import io
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import MetaINRError, not_found
from ..limits import check_pixels, check_signals
from ..disk import atomic_write_bytes
from .files import one_line_reason
from .images import (IMAGE_SUFFIXES, PATCH_TEST_PHOTOS, PATCH_TRAIN_PHOTOS, _check_split, _open_pil, _photo,
                     cover_shape, load_image, resize_center_crop, to_float_image)

if TYPE_CHECKING:
    import PIL.Image

CLIP_SUFFIXES = (".gif", ".mp4")
_VIDEO_EXTRA = "MP4 needs the optional extra: pip install 'metainr[video]'"
_PHOTO_SIDE = 256


def _positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise MetaINRError(f"{name} must be a positive integer, got {v!r}")


# ----------------------------------------------------------------------------------------- pans
def _sprites(video: Tensor, g: torch.Generator) -> Tensor:
    """Composite 0-2 linearly moving discs / squares with anti-aliased edges onto (n, T, H, W, 3)."""
    n, t, h, w, _ = video.shape
    short, time = min(h, w), (torch.arange(t) / max(t - 1, 1))[None, :]    # time: (1, T)
    ys, xs = torch.arange(h) + 0.5, torch.arange(w) + 0.5
    count = torch.randint(3, (n,), generator=g)
    for k in range(2):
        radius = short * (0.07 + 0.09 * torch.rand(n, 1, 1, 1, generator=g))
        start = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
        angle, travel = 2 * math.pi * torch.rand(n, 1, generator=g), short * 0.5 * torch.rand(n, 1, generator=g)
        colour, square = torch.rand(n, 1, 1, 1, 3, generator=g), torch.rand(n, 1, 1, 1, generator=g) < 0.5
        dx = (xs - (start[:, :1] + travel * angle.cos() * time)[..., None, None]).abs()   # (n, T, 1, W)
        dy = (ys[:, None] - (start[:, 1:] + travel * angle.sin() * time)[..., None, None]).abs()  # (n, T, H, 1)
        dist = torch.where(square, torch.maximum(dx, dy), torch.sqrt(dx**2 + dy**2))
        alpha = (radius - dist + 0.5).clamp(0, 1) * (k < count)[:, None, None, None]
        video = video + alpha[..., None] * (colour - video)
    return video


def pans(split: str, count: int, frames: int = 8, height: int = 32, width: int = 32, seed: int = 0,
         sprites: bool = True) -> Tensor:
    """Procedural video: (count, frames, height, width, 3) float32 in [0, 1], deterministic in ``seed``.

    Each clip looks through a window (long side 0.25-0.6 of the photo) that pans linearly and
    zooms geometrically (x0.8-1.25 over the clip) across one bundled photo, sampled bilinearly
    from a box-filtered pyramid level (no aliasing). ``sprites`` adds 0-2 solid discs or squares
    per clip, moving linearly with soft edges. Train and test use different photos.
    """
    _check_split(split)
    _positive(count=count, frames=frames, height=height, width=width)
    check_signals(count, f"pans-{split}")
    check_pixels(frames * height * width * 3, f"pans clip ({frames} frames of {width}x{height})")
    names = PATCH_TRAIN_PHOTOS if split == "train" else PATCH_TEST_PHOTOS
    g = torch.Generator().manual_seed(seed * 7919 + (0 if split == "train" else 1))
    which = torch.randint(len(names), (count,), generator=g)
    side0 = 0.25 + 0.35 * torch.rand(count, generator=g)
    zoom = torch.exp(math.log(0.8) + math.log(1.25 / 0.8) * torch.rand(count, generator=g))
    aspect = torch.tensor([width, height]) / max(height, width)             # window (x, y) per unit side
    size0, size1 = side0[:, None] * aspect, (side0 * zoom)[:, None] * aspect
    angle = 2 * math.pi * torch.rand(count, generator=g)
    travel = side0 * (0.1 + 0.5 * torch.rand(count, generator=g))           # pan over the clip, in windows
    room = 1 - (size0 + size1) / 2
    shift = torch.maximum(torch.minimum(travel[:, None] * torch.stack([angle.cos(), angle.sin()], 1), room), -room)
    lo, hi = torch.maximum(size0 / 2, size1 / 2 - shift), torch.minimum(1 - size0 / 2, 1 - size1 / 2 - shift)
    centre0 = lo + (hi - lo) * torch.rand(count, 2, generator=g)            # both ends inside the photo
    time = (torch.arange(frames) / max(frames - 1, 1))[None, :, None]        # (1, T, 1)
    centre = centre0[:, None] + shift[:, None] * time                       # (n, T, 2) photo fractions
    size = size0[:, None] * zoom[:, None, None] ** time                     # geometric zoom stays inside
    offs = torch.stack(torch.meshgrid((torch.arange(height) + 0.5) / height - 0.5,
                                      (torch.arange(width) + 0.5) / width - 0.5, indexing="ij")[::-1], -1)
    grid = 2 * (centre[:, :, None, None] + size[:, :, None, None] * offs) - 1   # (n, T, H, W, 2) for grid_sample
    # Pyramid level: the one where the smallest window still has 1-2 photo texels per output pixel.
    texels = torch.minimum(side0, side0 * zoom) * _PHOTO_SIDE / max(height, width)
    level = texels.clamp(1, _PHOTO_SIDE / 16).log2().floor().long()
    video = torch.empty(count, frames, height, width, 3)
    for p, name in enumerate(names):
        photo = _photo(name, _PHOTO_SIDE).permute(2, 0, 1)[None]            # (1, 3, 256, 256)
        for lev in range(level.max().item() + 1):
            idx = ((which == p) & (level == lev)).nonzero().flatten()
            if len(idx):
                out = F.grid_sample(photo, grid[idx].reshape(1, -1, width, 2), mode="bilinear",
                                    padding_mode="border", align_corners=False)
                video[idx] = out[0].reshape(3, len(idx), frames, height, width).permute(1, 2, 3, 4, 0)
            photo = F.avg_pool2d(photo, 2)                                   # the next level: 2x box filter
    return (_sprites(video, g) if sprites else video).clamp_(0, 1)


# -------------------------------------------------------------------------------------- reading
def _gif_frames(path: Path) -> Iterator:
    """Yields (declared frames, H, W), then each frame as a uint8 RGB array."""
    from PIL import ImageSequence

    with _open_pil(path) as im:
        if im.format != "GIF":
            raise MetaINRError(f"cannot read clip {path}: not a GIF file (it holds {im.format})")
        try:
            n = im.n_frames  # walks the frame headers, decodes no pixels
        except (IndexError, EOFError, OSError, SyntaxError) as exc:
            raise MetaINRError(f"cannot read clip {path}: truncated or damaged GIF ({one_line_reason(exc)})") from None
        yield n, im.size[1], im.size[0]
        for frame in ImageSequence.Iterator(im):
            yield np.asarray(frame.convert("RGB"))


def _video_plugin() -> str | None:
    """imageio v3's plugin for MP4: 'pyav' if PyAV imports, else 'FFMPEG' (imageio-ffmpeg), else None."""
    for plugin, module in (("pyav", "av"), ("FFMPEG", "imageio_ffmpeg")):
        try:
            importlib.import_module("imageio.v3")
            importlib.import_module(module)
            return plugin
        except ImportError:
            pass
    return None


def _mp4_frames(path: Path) -> Iterator:
    """Yields (declared frames or None, H, W) from the header, then each frame as a uint8 RGB array."""
    if (plugin := _video_plugin()) is None:
        raise MetaINRError(f"reading {_VIDEO_EXTRA}")
    from imageio import v3 as iio

    with iio.imopen(path, "r", plugin=plugin) as video:
        n, h, w = video.properties(index=...).shape[:3]  # FFMPEG declares n = inf
        yield (int(n) if math.isfinite(n) and n > 0 else None), h, w
        yield from video.iter()


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from an image file's header (tifffile for TIFFs that Pillow cannot open)."""
    try:
        with _open_pil(path) as im:
            return im.size
    except Exception:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.pages[0].imagewidth, tif.pages[0].imagelength


def _folder_frames(path: Path, frames: int) -> Iterator:
    """Yields (frames, H, W) after checking every used frame's header, then each frame (H, W, C) float."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MetaINRError(f"cannot read clip {path}: no frame images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
    files = files[:frames] if frames else files
    check_signals(len(files), f"clip {path}")
    w, h = _image_size(files[0])
    for f in files[1:]:
        if (size := _image_size(f)) != (w, h):
            raise MetaINRError(f"cannot read clip {path}: frame {f.name} is {size[0]}x{size[1]}, the first "
                               f"frame {files[0].name} is {w}x{h}")
    yield len(files), h, w
    for f in files:
        yield load_image(f).numpy()


def read_clip(path: str | Path, frames: int = 0, height: int = 0, width: int = 0, channels: int = 3) -> Tensor:
    """One clip (T, H, W, C) float32 in [0, 1] from a ``.gif``, an ``.mp4`` or a folder of frame images.

    ``frames``: the first ``frames`` frames (0: all). ``height``/``width`` (both 0: the file's own
    size): every frame is resized to cover them, then centre-cropped. ``channels``: 1 or 3.
    """
    path, suffix = Path(path), Path(path).suffix.lower()
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (frames, height, width)) \
            or (height == 0) != (width == 0) or channels not in (1, 3):
        raise MetaINRError(f"need frames >= 0, height and width both 0 (the file's size) or both positive, and "
                           f"channels 1 or 3; got {frames!r}, {height!r}x{width!r}, {channels!r}")
    if not path.exists():
        raise not_found(path, "clip")
    if not path.is_dir() and suffix not in CLIP_SUFFIXES:
        raise MetaINRError(f"cannot read clip {path}: unknown format {suffix!r} (expected "
                           f"{' or '.join(CLIP_SUFFIXES)}, or a folder of frame images)")
    reader = (_folder_frames(path, frames) if path.is_dir() else _gif_frames(path) if suffix == ".gif"
              else _mp4_frames(path))

    def check(t: int) -> None:
        check_pixels(t * h * w * channels, f"clip {path} ({t} frames of {w}x{h})")
        if height:
            nh, nw = cover_shape(h, w, height, width)
            check_pixels(t * nh * nw * channels, f"clip {path} resized ({t} frames of {nw}x{nh})")

    out: list[Tensor] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            declared, h, w = next(reader)
            if frames and declared is not None and declared < frames:
                raise MetaINRError(f"clip {path} has {declared} frames, fewer than the {frames} asked")
            check(t := frames or declared or 1)  # an MP4 may not declare its length: checked as frames arrive
            for array in reader:
                if len(out) >= t:
                    check(len(out) + 1)
                if array.shape[:2] != (h, w):
                    raise MetaINRError(f"cannot read clip {path}: frame {len(out)} is {array.shape[1]}x"
                                       f"{array.shape[0]}, the clip is {w}x{h}")
                frame = to_float_image(array, channels, name=f"frame {len(out)} of clip {path}")
                out.append(resize_center_crop(frame, height, width) if height else frame)
                if len(out) == frames:
                    break
    except MetaINRError:
        raise
    except Exception as exc:  # decoders raise many types (OSError, EOFError, av errors, ...) on bad input
        raise MetaINRError(f"cannot read clip {path}: {one_line_reason(exc)}") from None
    finally:
        reader.close()
    if len(out) < max(frames, 1):
        raise MetaINRError(f"clip {path} has {len(out)} frames, fewer than the {max(frames, 1)} asked")
    return torch.stack(out)


def _clip_entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                  and (p.is_dir() or (p.is_file() and p.suffix.lower() in CLIP_SUFFIXES)))


def clip_folder(folder: str | Path, frames: int, height: int, width: int, channels: int = 3) -> Tensor:
    """Every clip in ``folder`` (GIF / MP4 files and subfolders of frames, sorted by name): (n, T, H, W, C)."""
    folder = Path(folder)
    _positive(frames=frames, height=height, width=width)
    entries = _clip_entries(folder) if folder.is_dir() else []
    if not entries:
        raise MetaINRError(f"no clips ({', '.join(CLIP_SUFFIXES)} files or folders of frames) in folder {folder}")
    n = len(entries)
    check_signals(n, f"folder {folder}")
    check_pixels(n * frames * height * width * channels,
                 f"folder {folder} ({n} clips of {frames} frames of {width}x{height})")
    out = torch.empty(n, frames, height, width, channels)
    for i, entry in enumerate(entries):
        out[i] = read_clip(entry, frames, height, width, channels)
    return out


def load_clips(source: str, split: str, frames: int, height: int, width: int, count: int, val_count: int) -> Tensor:
    """Clips (n, T, H, W, C) by name (``pans``), from a folder of clips, or one clip file / frames folder.

    ``count`` / ``val_count`` size the procedural train / test splits; a folder serves every split.
    """
    _check_split(split)
    if source == "pans":
        return pans(split, count if split == "train" else val_count, frames, height, width)
    path = Path(source)
    if not path.exists():
        raise MetaINRError(f"clips not found: {source} (expected 'pans', a folder of clips or a clip file)")
    if path.is_dir() and _clip_entries(path):
        return clip_folder(path, frames, height, width)
    return read_clip(path, frames, height, width)[None]


# -------------------------------------------------------------------------------------- writing
def _clip_bytes(clip: Tensor | np.ndarray, fps: float = 1.0) -> np.ndarray:
    """(T, H, W, C) in [0, 1] (C = 1 or 3) -> uint8 array, rounded; ``fps`` is checked too."""
    a = np.asarray(clip.detach().cpu() if isinstance(clip, Tensor) else clip, dtype=np.float32)
    if a.ndim != 4 or a.shape[-1] not in (1, 3) or 0 in a.shape:
        raise MetaINRError(f"a clip must be (T, H, W, C) with C = 1 or 3, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise MetaINRError("the clip has NaN or infinite values")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise MetaINRError(f"fps must be positive, got {fps!r}")
    return (a.clip(0, 1) * 255 + 0.5).astype(np.uint8)


def _palette_frame(frame: np.ndarray) -> "PIL.Image.Image":
    """(H, W, C) uint8 -> Pillow "P" image: exact when the frame has <= 256 colours (grey always)."""
    from PIL import Image

    frame = np.repeat(frame, 3, -1) if frame.shape[-1] == 1 else frame
    key = (frame[..., 0].astype(np.uint32) << 16) | (frame[..., 1].astype(np.uint32) << 8) | frame[..., 2]
    colours, index = np.unique(key, return_inverse=True)
    if len(colours) > 256:  # median cut, no dither (dither flickers in video)
        return Image.fromarray(frame).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    im = Image.frombytes("P", frame.shape[1::-1], index.astype(np.uint8).tobytes())
    palette = np.stack([(colours >> s) & 255 for s in (16, 8, 0)], 1).astype(np.uint8)
    if len(colours) < 256:  # an unused colour that is not grey: Pillow reads a frame with an all-grey table
        # as mode L, and then misreads the tables of the frames after it
        palette = np.concatenate([palette, np.array([[255, 0, 254]], np.uint8)])
    im.putpalette(palette.tobytes(), "RGB")
    return im


def write_gif(path: str | Path, clip: Tensor, fps: float = 8.0) -> None:
    """A clip (T, H, W, C) in [0, 1] as a looping 8-bit GIF (a colour table per frame), written atomically.

    Frames are written one by one (Pillow's animated writer would merge identical consecutive frames).
    """
    from PIL import GifImagePlugin

    frames = _clip_bytes(clip, fps)
    t, h, w, _ = frames.shape
    if max(h, w) > 65535:
        raise MetaINRError(f"a GIF is at most 65535 pixels wide or high, the clip is {w}x{h}")
    out = [b"GIF89a", int(w).to_bytes(2, "little"), int(h).to_bytes(2, "little"), b"\x00\x00\x00",
           b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"]                        # no global colours; loop forever
    duration = max(10, round(1000 / fps / 10) * 10)                        # GIF delays are in 1/100 s
    for frame in frames:
        out += GifImagePlugin.getdata(_palette_frame(frame), duration=duration, disposal=2, include_color_table=True,
                                      optimize=False)
    atomic_write_bytes(path, b"".join(out) + b";")


def write_mp4(path: str | Path, clip: Tensor, fps: float = 8.0) -> None:
    """A clip (T, H, W, C) in [0, 1] as H.264 MP4 (yuv420p), written atomically. Odd sides are padded
    to even by repeating the last row / column (the codec needs even sizes)."""
    frames = _clip_bytes(clip, fps)
    t, h, w, c = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    frames = np.ascontiguousarray(np.repeat(frames, 3, -1) if c == 1 else frames)
    if (plugin := _video_plugin()) is None:
        raise MetaINRError(f"writing {_VIDEO_EXTRA}")
    from imageio import v3 as iio

    options = {"codec": "h264"} if plugin == "pyav" else {"codec": "libx264", "macro_block_size": 1}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = iio.imwrite("<bytes>", frames, extension=".mp4", plugin=plugin, fps=float(fps), **options)
    except Exception as exc:
        raise MetaINRError(f"cannot write {path}: {one_line_reason(exc)}") from None
    atomic_write_bytes(path, data)


def write_strip(path: str | Path, clip: Tensor) -> None:
    """Every frame of a clip (T, H, W, C) side by side in one 8-bit PNG, in rows of at most 8 frames."""
    from PIL import Image

    frames = _clip_bytes(clip)
    t, h, w, c = frames.shape
    cols, rows = min(t, 8), -(-t // 8)
    check_pixels(rows * h * cols * w * c, f"strip {path} ({cols * w}x{rows * h})")
    sheet = np.zeros((rows, h, cols, w, c), np.uint8)
    for i, frame in enumerate(frames):
        sheet[i // 8, :, i % 8] = frame
    buf = io.BytesIO()
    sheet = sheet.reshape(rows * h, cols * w, c)
    Image.fromarray(sheet[..., 0] if c == 1 else sheet).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
