"""Compact storage of a fitted sparse field: only the alive weights plus a bit-packed mask."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import MetaINRError
from .fields import Field, FieldConfig, build_field
from .functional import Params
from .fields.sparsity import named_masked_layers
from .disk import load_tensors, save_tensors


def _effective(params: Params, name: str, factorized: bool, mask: Tensor) -> Tensor:
    weight = torch.exp(params[f"{name}.s"]) * params[f"{name}.v"] if factorized else params[f"{name}.weight"]
    return weight * mask


def export_compact(path: str | Path, field: Field, params: Params, info: dict | None = None) -> int:
    """Write one signal's fitted params (name -> tensor, unbatched) of a sparse field compactly.

    Per layer: the alive entries of the effective weight (float32, row-major), the mask packed
    8 entries per byte, and the bias. RWF layers are stored as their effective weight, so the file
    loads into the same field without factorization; ``info`` (JSON values, e.g. the task's spec)
    is kept in the metadata. Returns the file size in bytes.
    """
    tensors = {}
    for name, m in named_masked_layers(field):
        mask = m.mask.bool()
        weight = _effective(params, name, m.factorized, m.mask).detach()
        tensors[f"{name}.values"] = weight[mask].float().contiguous()
        tensors[f"{name}.mask_bits"] = torch.from_numpy(np.packbits(mask.flatten().numpy()))
        tensors[f"{name}.bias"] = params[f"{name}.bias"].detach().float()
    config = dataclasses.replace(field.config, rwf=False)
    return save_tensors(path, tensors, {**(info or {}), "compact": True, "field": config.to_dict()})


def load_compact(path: str | Path) -> tuple[Field, Params]:
    """Read a compact file back into (a sparse field with its masks set, its params)."""
    tensors, meta = load_tensors(path)
    if not meta.get("compact"):
        raise MetaINRError(f"{path} is not a compact field file")
    return compact_field(tensors, meta)


def compact_field(tensors: dict[str, Tensor], meta: dict) -> tuple[Field, Params]:
    """(a sparse field with its masks set, its params) from a compact file's tensors and metadata."""
    field = build_field(FieldConfig.from_dict(meta["field"]))
    params = {}
    with torch.no_grad():
        for name, m in named_masked_layers(field):
            bits = np.unpackbits(tensors[f"{name}.mask_bits"].numpy())[: m.mask.numel()]
            mask = torch.from_numpy(bits.astype(np.float32)).view_as(m.mask)
            m.mask.copy_(mask)
            weight = torch.zeros_like(m.mask)
            weight[mask.bool()] = tensors[f"{name}.values"]
            params[f"{name}.weight"] = weight
            params[f"{name}.bias"] = tensors[f"{name}.bias"]
    return field, params
