"""Hostile input files for tests/hostile.py: views files (one random flaw each) and CT arrays of any
dtype, shape or range, written here independently of the readers under test."""
from __future__ import annotations

import json
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np

CAMERA = [[1, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 0], [0, 0, 0, 1]]
"""a camera 4 units from the origin looking at it (what views files hold)"""


def _png(rgb: np.ndarray) -> bytes:
    """A minimal 8-bit RGB PNG of ``rgb`` (H, W, 3)."""
    h = rgb.shape[0]
    raw = rgb.astype(np.uint8).reshape(h, -1).tobytes()
    rows = b"".join(b"\0" + raw[i * len(raw) // h:(i + 1) * len(raw) // h] for i in range(h))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", rgb.shape[1], h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def views_file(folder: Path, frames: int, side: int, image: bytes | None = None, poses: list | None = None,
                text: str | None = None) -> Path:
    """A transforms.json of ``frames`` frames showing one image (an RGBA PNG of ``side``^2 by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgba = np.zeros((side, side, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    (folder / "r.png").write_bytes(image if image is not None else _png(rgba[..., :3]))
    poses = poses or [CAMERA] * frames
    body = {"camera_angle_x": 0.69, "frames": [{"file_path": "r.png", "transform_matrix": p} for p in poses]}
    (folder / "transforms.json").write_text(text if text is not None else json.dumps(body))
    return folder / "transforms.json"


def png_declaring(width: int, height: int, rows: int) -> bytes:
    """A grey PNG whose header declares width x height and whose (valid) data holds ``rows`` rows."""
    rows_data = b"".join(b"\0" + bytes([128]) * width for _ in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows_data)) + _chunk(b"IEND", b""))


def random_views_file(mut: Path, rng: random.Random) -> None:
    """A views file with one random flaw: cameras, frame count, file paths, JSON or its image."""
    frames = rng.randint(1, 6)
    poses = [CAMERA] * frames
    choice = rng.randrange(7)
    if choice == 0:  # a damaged camera
        bad = rng.choice([[[0.0] * 4] * 4, [[float("nan")] * 4] * 4, [[1e308] * 4] * 4, [[1, 2, 3]] * 4,
                          [[rng.uniform(-1, 1) for _ in range(4)] for _ in range(4)], "matrix", None])
        poses = [CAMERA] * (frames - 1) + [bad]
    text = None
    if choice == 1:  # random JSON damage: truncated, bytes flipped, or nested
        body = json.dumps({"camera_angle_x": 0.69, "frames": [{"file_path": "r.png", "transform_matrix": p}
                                                             for p in poses]})
        kind = rng.randrange(3)
        text = (body[: rng.randrange(len(body))] if kind == 0 else
                "".join(c if rng.random() > 0.02 else chr(rng.randrange(32, 127)) for c in body) if kind == 1 else
                "[" * rng.randrange(1000, 200000) + "]")
    image = None
    if choice == 2:
        image = png_declaring(rng.choice([8, 4000, 60000]), rng.choice([8, 4000, 60000]), rng.randrange(0, 3))
    elif choice == 3:
        image = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
    path = views_file(mut / "v", frames, rng.choice([4, 8, 16]), image, poses, text)
    if choice == 4:  # frames naming missing files, folders, the json itself
        meta = json.loads(path.read_text())
        meta["frames"][0]["file_path"] = rng.choice(["missing", ".", "transforms.json", "../v", "", 7])
        path.write_text(json.dumps(meta))
    elif choice == 5:
        meta = json.loads(path.read_text())
        meta["camera_angle_x"] = rng.choice([0, -1, 3.2, "x", None, 1e308])
        path.write_text(json.dumps(meta))


def random_ct_array(mut: Path, rng: random.Random) -> None:
    """A sinogram .npy of a random dtype, shape or range."""
    shape = rng.choice([(16, 4), (16,), (8, 1), (7, 3), (16, 0), (2, 16, 4), ()])
    dtype = rng.choice([np.float32, np.float64, np.float16, np.int8, np.uint64, np.bool_, np.complex64,
                        np.complex128, "datetime64[s]", "U3"])
    array = np.zeros(shape, dtype=dtype)
    if array.dtype.kind in "fc" and array.size:
        big = float(np.finfo(array.dtype).max)  # 1e308 in float64: past float32's range
        array.flat[rng.randrange(array.size)] = rng.choice([big, -big, np.nan, np.inf, 1])
    np.save(mut / "m.npy", array)


def setup_file(kind: str, inp: Path, mut: Path, rng: random.Random) -> bool:
    """Write the mutated files of setup ``kind`` into ``mut`` (from the sandbox's ``inp``); False
    when ``kind`` is not one of these."""
    if kind in ("views-rays-1e9", "views-views-1e9"):
        from safetensors.torch import load_file, safe_open, save_file

        with safe_open(str(inp / "views.safetensors"), framework="pt") as fh:
            metadata = fh.metadata()
        meta = json.loads(metadata["metainr"])
        meta["task"]["rays" if kind == "views-rays-1e9" else "views"] = 10 ** 9
        save_file(load_file(str(inp / "views.safetensors")), str(mut / "m.safetensors"),
                  metadata={**metadata, "metainr": json.dumps(meta)})
    elif kind == "views-total":  # each frame under --max-pixels 10000, the file over it
        views_file(mut / "v", 10, 32)
    elif kind == "views-zero-camera":
        views_file(mut / "v", 3, 8, poses=[CAMERA, [[0.0] * 4] * 4, CAMERA])
    elif kind == "views-nested":
        views_file(mut / "v", 1, 8, text="[" * 100_000 + "]" * 100_000)
    elif kind == "views-bomb":
        views_file(mut / "v", 2, 8, image=png_declaring(60000, 60000, 1))
    elif kind == "views-file":
        random_views_file(mut, rng)
    elif kind == "ct-array":
        random_ct_array(mut, rng)
    elif kind == "short-png":
        (mut / "m.png").write_bytes(png_declaring(4000, 4000, 10))
    elif kind == "symlink-loop":
        os.symlink(mut / "b.png", mut / "a.png")
        os.symlink(mut / "a.png", mut / "b.png")
    elif kind == "stale-temp":
        (mut / ".o.png.k9x2m4p1.tmp").write_bytes(bytes(4096))
    else:
        return False
    return True



VIEWS_FIT = ["fit", "mut/v/transforms.json", "--task", "views", "--init", "random"]
FACE_FIT = ["fit", "in/face.png", "--init", "random", "--steps", "1", "--out"]
LONG = "a" * 246 + ".png"
"""a file name of 250 bytes: valid, though a temp file named after it would not be"""
HARDENING_II = [  # (name, argv, outputs, setup): whole inputs, checkpoint counts, corrupt data, messages, outputs
    ("views file over --max-pixels as a whole",
     [*VIEWS_FIT, "--resolution", "32", "--views", "1", "--max-pixels", "10000"], [], "views-total"),
    ("views file over --max-metadata-bytes",
     ["fit", "in/scene/transforms.json", "--task", "views", "--init", "random", "--max-metadata-bytes", "64"]),
    ("views file with an all-zero camera", [*VIEWS_FIT, "--steps", "1"], [], "views-zero-camera"),
    ("views file of deeply nested JSON", VIEWS_FIT, [], "views-nested"),
    ("views frame declaring 60000^2", VIEWS_FIT, [], "views-bomb"),
    ("views fit --input-views 0 from a checkpoint",
     ["fit", "in/scene/transforms.json", "--init", "in/views.safetensors", "--input-views", "0"]),
    ("views fit from a checkpoint", ["fit", "in/scene/transforms.json", "--init", "in/views.safetensors", "--steps",
                                     "1", "--out", "out/v.png", "--json"], ["out/v.png"]),
    ("checkpoint declaring 1e9 inner steps", ["fit", "in/face.png", "--init", "mut/m.safetensors"], [],
     "huge-inner-steps"),
    ("checkpoint declaring 1e9 eval steps", ["fit", "in/face.png", "--init", "mut/m.safetensors"], [],
     "huge-eval-steps"),
    ("views checkpoint declaring 1e9 rays", ["render", "mut/m.safetensors", "--out", "out/t.png"], [],
     "views-rays-1e9"),
    ("views checkpoint declaring 1e9 views",
     ["fit", "in/scene/transforms.json", "--init", "mut/m.safetensors", "--steps", "1"], [], "views-views-1e9"),
    ("PNG declaring 4000^2 holding 10 rows", ["fit", "mut/m.png", "--init", "random"], [], "short-png"),
    ("complex sinogram", ["fit", "in/complex_map.npy", "--init", "random", "--task", "ct"]),
    ("symlink loop as input", ["fit", "mut/a.png", "--init", "random"], [], "symlink-loop"),
    ("output name of 250 bytes", [*FACE_FIT, "out/" + LONG], ["out/" + LONG]),
    ("output name of 256 bytes", [*FACE_FIT, "out/" + "a" * 252 + ".png"]),
    ("a killed write's temp beside the output", [*FACE_FIT, "mut/o.png"], [], "stale-temp"),
]
