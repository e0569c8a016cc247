"""Where tensors live: ``auto`` means CUDA when available, else the CPU."""
from __future__ import annotations

import torch

from .errors import MetaINRError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:i`` (or a torch.device) -> a usable torch.device;
    asking for a device this machine lacks raises MetaINRError with one line."""
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise MetaINRError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if isinstance(spec, str) and device.type not in ("cpu", "cuda", "mps"):
        raise MetaINRError(f"device {spec!r} holds no data to compute with; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MetaINRError(f"device {spec!r} asked for, but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MetaINRError(f"device {spec!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return device
