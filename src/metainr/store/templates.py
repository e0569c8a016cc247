"""Decoding a stored field without its data: a signal's *template* (the shapes of what the task
loads, never values) gives the task a batch of zeros whose query rows are the signal's.

A template is JSON: ``{"tensor": {"shape", "dtype"}}`` when a task's signals are one tensor
(images, clips, sounds, maps, CT slices), or ``{"fields": {name: {"shape", "dtype"} | null},
"values": {name: number | string | null}}`` for a dataclass of them (sampled 3D shapes), rebuilt
with the class the task's ``batch`` declares. At encode time :func:`decode_mode` checks that the
template reproduces the reconstruction of the real signal; a task whose reconstruction depends
on the data's values (e.g. views: its cameras) is decoded through :class:`~metainr.tasks.Renderable`
(a turntable) where it has one, and not at all otherwise.

At another resolution (``decode --resolution R``) the dims equal to the stored task's
``resolution`` become R: one or two of them (a grid's rows and columns); none (the task's
reconstruction does not follow its resolution) or more (a clip with as many frames as pixels a
side: which are which?) is refused in one line.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import MetaINRError
from ..limits import check_pixels
from ..tasks import Renderable, Task

DTYPES = ("float16", "bfloat16", "float32", "float64", "uint8", "int16", "int32", "int64", "bool")
"""the dtypes a template may name"""
MAX_RESIZED_DIMS = 2
"""dims that follow a resolution: a grid's rows and columns"""


def signal_template(signals: Any) -> dict[str, Any] | None:
    """The template of ONE signal of ``signals`` (n signals as the task loaded them), or None when
    they are neither a tensor nor a dataclass of tensors and plain values."""
    if isinstance(signals, Tensor):
        return {"tensor": _spec(signals)} if signals.dim() >= 1 else None
    if not dataclasses.is_dataclass(signals) or isinstance(signals, type):
        return None
    tensors: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for f in dataclasses.fields(signals):
        value = getattr(signals, f.name)
        if isinstance(value, Tensor):
            if value.dim() < 1 or value.shape[0] != len(signals):  # type: ignore[arg-type]
                return None
            tensors[f.name] = _spec(value)
        elif value is None:
            tensors[f.name] = None
        elif isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
            values[f.name] = value
        else:
            return None
    return {"fields": tensors, "values": values}


def _spec(t: Tensor) -> dict[str, Any]:
    return {"shape": [int(s) for s in t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}


def _zeros(spec: Any, what: str) -> Tensor:
    """A batch of one zero tensor as ``spec`` describes it (sizes checked against the limits first)."""
    if not (isinstance(spec, dict) and isinstance(spec.get("shape"), list) and spec.get("dtype") in DTYPES
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s for s in spec["shape"])):
        raise MetaINRError(f"{what}: a damaged signal template")
    check_pixels(math.prod(spec["shape"]), f"{what} (a decoded signal of {spec['shape']})")
    return torch.zeros(1, *spec["shape"], dtype=getattr(torch, spec["dtype"]))


def template_signals(task: Task, template: Any, what: str) -> Any:
    """One signal of zeros (a batch of one, as ``task.load`` gives them) that ``template`` describes."""
    if not isinstance(template, dict):
        raise MetaINRError(f"{what}: a damaged signal template")
    if "tensor" in template:
        return _zeros(template["tensor"], what)
    tensors, values = template.get("fields"), template.get("values")
    if not (isinstance(tensors, dict) and isinstance(values, dict)):
        raise MetaINRError(f"{what}: a damaged signal template")
    cls = _signal_class(task)
    if cls is None:
        raise MetaINRError(f"{what}: task {task.name!r} does not declare the class of its signals")
    try:
        return cls(**{k: None if v is None else _zeros(v, what) for k, v in tensors.items()}, **values)
    except (TypeError, ValueError) as exc:
        raise MetaINRError(f"{what}: the signal template does not fit task {task.name!r} ({exc})") from None


def _signal_class(task: Task) -> type | None:
    """The dataclass the task's ``batch(signals)`` declares for its signals (None if none)."""
    try:
        hint = typing.get_type_hints(type(task).batch).get("signals")
    except Exception:  # an annotation that does not resolve: no class to rebuild
        return None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def resized(template: dict[str, Any], old: int, new: int, what: str) -> dict[str, Any]:
    """``template`` with its dims equal to ``old`` (the stored resolution) set to ``new``."""
    specs = [template["tensor"]] if "tensor" in template else [s for s in template["fields"].values() if s]
    hits = sum(s == old for spec in specs for s in spec["shape"])
    if not 1 <= hits <= MAX_RESIZED_DIMS:
        why = ("none of its dims follows it" if not hits else
               f"{hits} of its dims equal it: which ones follow it is ambiguous")
        raise MetaINRError(f"{what}: cannot decode at another resolution (the stored resolution is {old}, {why}); "
                           "decode without --resolution")

    def swap(spec: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if spec is None else {**spec, "shape": [new if s == old else s for s in spec["shape"]]}

    if "tensor" in template:
        return {"tensor": swap(template["tensor"])}
    return {**template, "fields": {k: swap(v) for k, v in template["fields"].items()}}


def decode_mode(task: Task, signals: Any, template: dict[str, Any] | None,
                reconstruct: Callable[[Any], Tensor]) -> str:
    """How a store of ``task`` decodes: ``template`` when a batch of the template's zeros
    reconstructs the first signal of ``signals`` as its own batch does (``reconstruct(batch)``:
    the reconstruction of one signal's params on a batch of one, moved to their device), else ``render`` for a
    :class:`~metainr.tasks.Renderable` task, else ``none``."""
    fallback = "render" if isinstance(task, Renderable) else "none"
    if template is None:
        return fallback
    try:
        with torch.no_grad():
            real = reconstruct(task.batch(signals[:1]))
            zero = reconstruct(task.batch(template_signals(task, template, "template")))
    except (MetaINRError, ValueError, TypeError, RuntimeError):
        return fallback
    same = real.shape == zero.shape and bool(torch.allclose(real, zero, rtol=1e-5, atol=1e-6, equal_nan=True))
    return "template" if same else fallback
