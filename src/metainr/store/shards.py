"""Shards of a field store: safetensors files of several signals' params, written atomically.

A shard ``shards/{name}.safetensors`` holds tensor ``"{signal_id}/{param}"`` for every param of
every signal it stores; its metadata (JSON, :func:`metainr.disk.save_tensors`) lists the ids.
Names are ``r{rank}-{uuid}``: unique across the processes of a run and across runs.

A shard is written to a temp file, fsynced and renamed (then the folder is fsynced) BEFORE its
index rows are committed, so a kill at any moment leaves either nothing, a temp file, or a shard
no row names (an orphan): :func:`remove_orphans` deletes both kinds before the next run writes.
Reading checks a shard's size and sha256 against the index the first time, and every tensor's
declared shape against the field before anything is read. Nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open
from torch import Tensor

from ..disk import save_tensors
from ..errors import MetaINRError
from .index import NAME, ShardRow

SHARD_DIR = "shards"
SUFFIX = ".safetensors"
_CHUNK = 1 << 20


def shard_path(store: str | Path, name: str) -> Path:
    """The file of shard ``name`` in ``store`` (a name is never a path: see :data:`index.NAME`)."""
    if not NAME.match(name):
        raise MetaINRError(f"{store}: a shard name that is not a file name ({name[:60]!r})")
    return Path(store) / SHARD_DIR / f"{name}{SUFFIX}"


def new_shard_name(rank: int) -> str:
    """A shard name no other process or run uses: ``r{rank}-{uuid4 hex}``."""
    return f"r{rank}-{uuid.uuid4().hex}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard(store: str | Path, name: str, params: Mapping[str, Mapping[str, Tensor]],
                meta: Mapping[str, object]) -> ShardRow:
    """Write the params (signal id -> param name -> tensor of that one signal) as shard ``name``,
    atomically and durably (the file and its folder are fsynced); returns its index row."""
    path = shard_path(store, name)
    tensors = {f"{sid}/{param}": t for sid, one in params.items() for param, t in one.items()}
    save_tensors(path, tensors, {**meta, "ids": list(params)})
    _fsync_dir(path.parent)
    return ShardRow(name, path.stat().st_size, sha256_file(path), len(params))


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify_shard(path: Path, row: ShardRow) -> None:
    """Raise a one-line MetaINRError naming ``path`` unless it has the size and sha256 the index records."""
    if not path.is_file():
        raise MetaINRError(f"shard {path} is missing (the index names it)")
    size = path.stat().st_size
    if size != row.bytes:
        raise MetaINRError(f"shard {path} is corrupted: {size} bytes, the index records {row.bytes}")
    if sha256_file(path) != row.sha256:
        raise MetaINRError(f"shard {path} is corrupted: its sha256 does not match the index")


def read_signals(path: Path, ids: list[str], shapes: Mapping[str, torch.Size]) -> dict[str, dict[str, Tensor]]:
    """The params (id -> name -> tensor, CPU) of the signals ``ids`` in the shard ``path``; every
    tensor must be floating point with the shape ``shapes`` (the field's) gives it, checked in the
    header before any tensor is read."""
    out: dict[str, dict[str, Tensor]] = {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = set(fh.keys())
            for sid in ids:
                one = {}
                for param, shape in shapes.items():
                    key = f"{sid}/{param}"
                    if key not in keys:
                        raise MetaINRError(f"shard {path} lacks {key}")
                    part = fh.get_slice(key)
                    if tuple(part.get_shape()) != tuple(shape) or not part.get_dtype().startswith(("F", "BF")):
                        raise MetaINRError(f"shard {path}: {key} is {part.get_dtype()} {tuple(part.get_shape())}, the "
                                           f"field needs a float {tuple(shape)}")
                    one[param] = fh.get_tensor(key)
                out[sid] = one
    except (SafetensorError, OSError, ValueError) as exc:
        raise MetaINRError(f"cannot read shard {path}: {' '.join(str(exc).split())}") from None
    return out


def remove_orphans(store: str | Path, indexed: set[str]) -> list[Path]:
    """Delete the shard files no index row names and the temp files of interrupted writes (call it
    only while no other process writes to the store); returns what was deleted."""
    folder = Path(store) / SHARD_DIR
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        name = path.name
        orphan = name.endswith(SUFFIX) and not name.startswith(".") and name[:-len(SUFFIX)] not in indexed
        interrupted = name.startswith(".") and name.endswith(".tmp")
        if (orphan or interrupted) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
