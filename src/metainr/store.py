"""Checkpoints and fitted fields on disk: safetensors for tensors, JSON for everything else.

A checkpoint is ONE ``.safetensors`` file whose metadata holds the JSON config (field, learner,
training, data, step, version), so it rebuilds its own model and is replaced atomically.
Loading is strict: missing, unexpected or reshaped tensors raise :class:`CheckpointMismatch`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from .errors import CheckpointMismatch, MetaINRError

FORMAT_VERSION = 1
META_KEY = "metainr"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_tensors(path: str | Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """Atomically write tensors + a JSON-serialisable ``meta`` dict as one safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta_str = {META_KEY: json.dumps({"version": FORMAT_VERSION, **meta})}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(payload, tmp, metadata=meta_str)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors` -> (tensors, meta)."""
    path = Path(path)
    if not path.is_file():
        raise MetaINRError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MetaINRError(f"cannot read checkpoint {path}: {exc}") from None
    if raw is None:
        raise MetaINRError(f"{path} is not a metainr checkpoint (no '{META_KEY}' metadata)")
    meta = json.loads(raw)
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointMismatch(f"{path} has format version {meta.get('version')}, expected {FORMAT_VERSION}")
    return tensors, meta


def load_strict(target: Mapping[str, Tensor], source: Mapping[str, Tensor], what: str) -> None:
    """Copy ``source`` into the same-named tensors of ``target``; any key or shape difference raises."""
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{what} does not match: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    for name, t in target.items():
        if t.shape != source[name].shape:
            raise CheckpointMismatch(
                f"{what} does not match: {name} has shape {tuple(source[name].shape)} in the file, "
                f"{tuple(t.shape)} in the model"
            )
    with torch.no_grad():
        for name, t in target.items():
            t.copy_(source[name])
