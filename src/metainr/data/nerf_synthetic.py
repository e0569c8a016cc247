"""A scene in the NeRF-synthetic layout, as users have it.

A folder holds ``transforms_{train,val,test}.json`` (or a single ``transforms.json``, used for
every split) beside RGBA PNGs. Each json has ``camera_angle_x`` (radians, horizontal field of
view) and ``frames``, each with ``file_path`` (relative to the json, with or without ``.png``, as
Blender writes ``./train/r_0``) and ``transform_matrix``: 4x4 camera-to-world with OpenGL axes
(the camera looks down -z, y up), the conventions of :mod:`.cameras`. Images are composited on a
white (or black) background with their alpha (straight, not premultiplied); images without alpha
are opaque. Any problem with the input is a one-line :class:`MetaINRError` naming the file.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import MetaINRError, not_found
from ..json_files import read_json
from ..limits import check_pixels, check_signals
from .cameras import PosedViews, focal_from_fov
from .images import image_size, read_pixels, to_float_image

NEAR, FAR = 2.0, 6.0
"""the depth range NeRF uses for NeRF-synthetic's scenes (cameras at radius ~4)"""


def transforms_file(folder: str | Path, split: str) -> Path:
    """``transforms_{split}.json`` in ``folder``, else its ``transforms.json``."""
    root = Path(folder)
    if not root.is_dir():
        raise not_found(root, "NeRF-synthetic folder", folder=True)
    for name in (f"transforms_{split}.json", "transforms.json"):
        if (root / name).is_file():
            return root / name
    raise MetaINRError(f"no transforms_{split}.json or transforms.json in {root}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_transforms(file: Path) -> tuple[float, list[tuple[Path, np.ndarray]]]:
    """camera_angle_x and the frames (image path, c2w (4, 4) float64) of one transforms json (its
    size checked against ``max_metadata_bytes`` before it is parsed)."""
    meta = read_json(file, "transforms file")
    if not isinstance(meta, dict):
        raise MetaINRError(f"{file}: expected a JSON object with 'camera_angle_x' and 'frames'")
    for key in ("camera_angle_x", "frames"):
        if key not in meta:
            raise MetaINRError(f"{file}: missing key {key!r}")
    angle = meta["camera_angle_x"]
    if not _number(angle) or not 0.0 < angle < math.pi:
        raise MetaINRError(f"{file}: camera_angle_x must be a number of radians in (0, pi), got {angle!r}")
    frames = meta["frames"]
    if not isinstance(frames, list) or not frames:
        raise MetaINRError(f"{file}: 'frames' must be a non-empty list")
    out = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise MetaINRError(f"{file}: frame {i} is not a JSON object")
        for key in ("file_path", "transform_matrix"):
            if key not in frame:
                raise MetaINRError(f"{file}: frame {i} is missing key {key!r}")
        matrix = frame["transform_matrix"]
        if not (isinstance(matrix, list) and len(matrix) == 4
                and all(isinstance(row, list) and len(row) == 4 and all(map(_number, row)) for row in matrix)):
            raise MetaINRError(f"{file}: frame {i} transform_matrix is not a 4x4 matrix of numbers")
        c2w = np.asarray(matrix, dtype=np.float64)
        if not np.all(np.isfinite(c2w)):
            raise MetaINRError(f"{file}: frame {i} transform_matrix holds NaN or infinite values")
        if not _invertible(c2w[:3, :3]):
            what = "all zeros" if not c2w[:3, :3].any() else "singular: its axes do not span 3D"
            raise MetaINRError(f"{file}: frame {i} transform_matrix is not a camera pose (its rotation part is {what})")
        if not isinstance(frame["file_path"], str) or not frame["file_path"]:
            raise MetaINRError(f"{file}: frame {i} file_path must be a non-empty string")
        out.append((_image_path(file.parent, frame["file_path"]), c2w))
    return float(angle), out


def _invertible(rotation: np.ndarray) -> bool:
    """Whether a camera's 3x3 axes span 3D (a rotation, possibly scaled): rays through it are defined."""
    scale = float(np.abs(rotation).max())
    return scale > 0 and abs(float(np.linalg.det(rotation / scale))) > 1e-6


def _image_path(root: Path, file_path: str) -> Path:
    """Blender writes ``./train/r_0`` for ``train/r_0.png``; a path with a suffix is used as it is."""
    path = root / file_path
    return path if path.suffix.lower() == ".png" or path.is_file() else path.with_name(path.name + ".png")


def read_rgba(path: Path, background: float) -> tuple[Tensor, Tensor]:
    """One image composited on ``background``: rgb (H, W, 3) and alpha (H, W), float32 in [0, 1].

    Its size is checked against the pixel limit before it is decoded (Pillow's own cap never
    applies: ours does), and truncated data is refused (see :func:`metainr.data.images.read_pixels`)."""
    array = read_pixels(path)
    has_alpha = array.ndim == 3 and array.shape[-1] in (2, 4)
    rgb = to_float_image(array, channels=3, name=f"image {path}")
    a = to_float_image(array[..., -1], name=f"image {path}")[..., 0] if has_alpha else torch.ones(rgb.shape[:2])
    return rgb * a[..., None] + background * (1.0 - a[..., None]), a


def _view_size(width: int, height: int, resolution: int | None) -> tuple[int, int]:
    """(width, height) of a view of ``width`` x ``height`` pixels resized to ``resolution`` wide."""
    if resolution is None or resolution == width:
        return width, height
    return resolution, max(1, round(height * resolution / width))


def scene_samples(file: Path, resolution: int | None = None) -> int:
    """Pixels of every view of one transforms json once read (resized to ``resolution``), from
    its JSON and its first frame's header: what reading it will hold (every frame has the
    first's size). No pixel is decoded."""
    _, frames = read_transforms(file)
    width, height = _view_size(*image_size(frames[0][0]), resolution)
    return len(frames) * width * height


def _check_scene(file: Path, frames: list[tuple[Path, np.ndarray]], resolution: int | None) -> None:
    """The first frame's own size, then every frame's together (each has the first's size): before
    any pixel is decoded."""
    first = frames[0][0]
    width, height = image_size(first)
    check_pixels(width * height, f"image {first} ({width}x{height})")
    w, h = _view_size(width, height, resolution)
    check_pixels(len(frames) * w * h, f"transforms file {file} ({len(frames)} frames of {w}x{h}, all together)")


def _resize(images: Tensor, height: int, width: int) -> Tensor:
    """(V, H, W, C) -> (V, height, width, C), anti-aliased (area-weighted when shrinking)."""
    x = images.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).clamp(0.0, 1.0).contiguous()


def nerf_synthetic(folder: str | Path, split: str = "train", background: float = 1.0, resolution: int | None = None,
                   near: float = NEAR, far: float = FAR) -> PosedViews:
    """The views of one split of a NeRF-synthetic folder (layout in the module docstring).

    Returns float32 posed views: images (V, H, W, 3) composited on ``background`` (1.0 white,
    0.0 black), poses (V, 4, 4) c2w as stored, masks (V, H, W) the alpha, and the focal length
    in pixels ``0.5 W / tan(0.5 camera_angle_x)``. ``resolution``: resize to this width (height
    in proportion; the focal length scales with it); near/far: the depth range to sample.
    """
    return read_scene(transforms_file(folder, split), background, resolution, near, far, split)


def read_scene(file: str | Path, background: float = 1.0, resolution: int | None = None, near: float = NEAR,
               far: float = FAR, split: str = "") -> PosedViews:
    """The views of one transforms json ``file`` (the frames it lists, in its order), as
    :func:`nerf_synthetic` returns them; ``split`` only names the result."""
    if not 0.0 <= background <= 1.0:
        raise MetaINRError(f"background must be in [0, 1], got {background}")
    if resolution is not None and resolution < 2:
        raise MetaINRError(f"resolution must be at least 2, got {resolution}")
    if not 0.0 <= near < far:
        raise MetaINRError(f"need 0 <= near < far, got near={near}, far={far}")
    file = Path(file)
    if not file.is_file():
        raise not_found(file, "transforms file")
    angle, frames = read_transforms(file)
    _check_scene(file, frames, resolution)  # the whole input, before decoding
    images, masks, size = [], [], None
    for path, _ in frames:
        rgb, alpha = read_rgba(path, background)
        if size is None:
            size = rgb.shape[:2]
        elif rgb.shape[:2] != size:
            raise MetaINRError(f"{path}: size {rgb.shape[1]}x{rgb.shape[0]} differs from the first frame's "
                               f"{size[1]}x{size[0]}")
        if resolution is not None and resolution != size[1]:  # one image at a time: memory stays small
            height = max(1, round(size[0] * resolution / size[1]))
            rgb = _resize(rgb[None], height, resolution)[0]
            alpha = _resize(alpha[None, ..., None], height, resolution)[0, ..., 0]
        images.append(rgb)
        masks.append(alpha)
    rgb, alpha = torch.stack(images), torch.stack(masks)
    poses = torch.from_numpy(np.stack([c2w for _, c2w in frames])).float()
    name = f"{file.parent.name}-{split}" if split else file.parent.name
    return PosedViews(rgb, poses, focal_from_fov(angle, rgb.shape[2]), near, far, alpha, name=name)


def has_scene(folder: str | Path, split: str) -> bool:
    """Whether ``folder`` holds ``transforms_{split}.json`` or ``transforms.json``."""
    root = Path(folder)
    return (root / f"transforms_{split}.json").is_file() or (root / "transforms.json").is_file()


def nerf_synthetic_objects(folder: str | Path, split: str = "train", background: float = 1.0,
                           resolution: int | None = None, near: float = NEAR, far: float = FAR) -> PosedViews:
    """A set of objects (n, V, H, W, 3) from a folder: the folder itself when it is one scene
    (n = 1), else each of its subfolders that is one (sorted by name). Every object keeps its
    first V views, V the fewest any of them has; all must share one image size and focal length
    (after resizing to ``resolution``)."""
    root = Path(folder)
    if not root.is_dir():
        raise not_found(root, "NeRF-synthetic folder", folder=True)
    if has_scene(root, split):
        return nerf_synthetic(root, split, background, resolution, near, far).as_set()
    scenes = sorted(d for d in root.iterdir() if d.is_dir() and has_scene(d, split))
    if not scenes:
        raise MetaINRError(f"{root} holds neither transforms_{split}.json / transforms.json nor subfolders with them")
    check_signals(len(scenes), f"the scenes of {root}")
    total = sum(scene_samples(transforms_file(d, split), resolution) for d in scenes)
    check_pixels(total, f"the scenes of {root} ({len(scenes)} scenes' views, all together)")
    objects = [nerf_synthetic(d, split, background, resolution, near, far) for d in scenes]
    first = objects[0]
    for d, v in zip(scenes, objects):
        if v.images.shape[1:3] != first.images.shape[1:3] or not math.isclose(v.focal, first.focal, rel_tol=1e-5):
            raise MetaINRError(f"{d}: {v.width}x{v.height} images with focal {v.focal:.4g} differ from {scenes[0]}'s "
                               f"{first.width}x{first.height} with focal {first.focal:.4g}")
    n_views = min(v.images.shape[0] for v in objects)
    stack = lambda get: torch.stack([get(v)[:n_views] for v in objects])  # noqa: E731
    return PosedViews(stack(lambda v: v.images), stack(lambda v: v.poses), first.focal, near, far,
                      stack(lambda v: v.masks), name=f"{root.name}-{split}")
