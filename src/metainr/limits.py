"""Limits on what an input may make metainr allocate.

Every size that a file, an option or a checkpoint declares (an image's height x width, a
sinogram's detectors x views, a field's width and depth) is checked against these limits BEFORE
anything of that size is allocated, and a size over a limit is a one-line :class:`MetaINRError`
naming the limit and the CLI option that raises it. Inputs under the limits are processed in
bounded memory (fits and renders are chunked over query rows), so a limit is about what a user
asked for, not about what fits in memory at once.

Limits apply to an input as a whole: every frame of a views file, every clip of a folder, every
sample of a sound; metadata files (a views file's JSON, an angles list) are size-checked before they
are parsed; the step count a checkpoint declares for a fit is bounded too (``--steps`` sets any).

The limits in force are a context variable: the CLI sets them from ``--max-pixels`` /
``--max-params`` / ``--max-signals`` / ``--max-metadata-bytes``; library users call
:func:`use_limits` (a context manager) or keep the defaults.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, replace
from typing import Any, Iterator

from .errors import MetaINRError


@dataclass(frozen=True)
class Limits:
    """The largest inputs metainr accepts (raise them for bigger signals; memory stays bounded)."""

    max_pixels: int = 4096 * 4096
    """largest signal in samples: an image's height x width, a CT slice's side squared, a sinogram's
    detectors x views, the values of an array file"""
    max_params: int = 1 << 26
    """largest field (or hypernetwork) in parameters, as its config declares it"""
    max_signals: int = 100_000
    """largest dataset in signals (files in a folder, procedural counts): datasets are held in memory"""
    max_metadata_bytes: int = 16 << 20
    """largest metadata file in bytes (a views file's JSON, an angles list), checked before it is parsed"""
    max_steps: int = 100_000
    """most fitting steps a checkpoint may declare as its default (its inner loop or validation fits);
    a caller who gives the step count (``fit --steps``) is not bounded"""

    def __post_init__(self) -> None:
        if min(self.max_pixels, self.max_params, self.max_signals, self.max_metadata_bytes, self.max_steps) < 1:
            raise ValueError(f"limits must be positive, got {self}")


_LIMITS: contextvars.ContextVar[Limits] = contextvars.ContextVar("metainr_limits", default=Limits())


def current_limits() -> Limits:
    """The limits in force."""
    return _LIMITS.get()


@contextlib.contextmanager
def use_limits(limits: Limits | None = None, **changes: Any) -> Iterator[Limits]:
    """Run a block under ``limits`` (default: the current ones) with ``changes`` applied."""
    new = replace(limits or current_limits(), **changes)
    token = _LIMITS.set(new)
    try:
        yield new
    finally:
        _LIMITS.reset(token)


def check_pixels(count: int, what: str) -> None:
    """Raise a one-line MetaINRError if ``what`` (e.g. "image x.png (8000x8000)") declares more
    samples than ``max_pixels``."""
    limit = current_limits().max_pixels
    if count > limit:
        raise MetaINRError(f"{what} has {count:,} samples, over the limit of {limit:,} (raise it with --max-pixels, "
                           "or metainr.limits.use_limits(max_pixels=...))")


def check_side(side: int, what: str, cost: int = 1) -> None:
    """:func:`check_pixels` for a square signal of side ``side`` whose every pixel costs ``cost``
    samples' memory (a task that holds many values per pixel at once, e.g. CT)."""
    if cost == 1:
        check_pixels(side * side, f"{what} ({side}x{side})")
        return
    limit = current_limits().max_pixels
    if side * side * cost > limit:
        raise MetaINRError(f"{what} ({side}x{side}) is over the limit: {side}x{side} pixels x {cost} (what each pixel "
                           f"holds at once) > {limit:,}, i.e. at most {int((limit // cost) ** 0.5)}x"
                           f"{int((limit // cost) ** 0.5)} (raise it with --max-pixels, or "
                           "metainr.limits.use_limits(max_pixels=...))")


def check_signals(count: int, what: str) -> None:
    """Raise a one-line MetaINRError if the dataset ``what`` declares more than ``max_signals`` signals."""
    limit = current_limits().max_signals
    if count > limit:
        raise MetaINRError(f"{what} has {count:,} signals, over the limit of {limit:,} (raise it with --max-signals, "
                           "or metainr.limits.use_limits(max_signals=...))")


def check_params(count: int, what: str) -> None:
    """Raise a one-line MetaINRError if ``what`` declares more parameters than ``max_params``."""
    limit = current_limits().max_params
    if count > limit:
        raise MetaINRError(f"{what} has {count:,} parameters, over the limit of {limit:,} (raise it with "
                           "--max-params, or metainr.limits.use_limits(max_params=...))")


def check_metadata_size(size: int, what: str) -> None:
    """Raise a one-line MetaINRError if the metadata file ``what`` holds more than
    ``max_metadata_bytes`` bytes (checked before it is read and parsed)."""
    limit = current_limits().max_metadata_bytes
    if size > limit:
        raise MetaINRError(f"{what} is {size:,} bytes, over the limit of {limit:,} for a metadata file (raise it with "
                           "--max-metadata-bytes, or metainr.limits.use_limits(max_metadata_bytes=...))")


def check_steps(count: int, what: str) -> None:
    """Raise a one-line MetaINRError if ``what`` declares more fitting steps than ``max_steps``
    (a default step count from a checkpoint: the caller can always give its own)."""
    limit = current_limits().max_steps
    if count > limit:
        raise MetaINRError(f"{what} declares {count:,} fitting steps, over the limit of {limit:,} for a default (give "
                           "the steps yourself: fit / encode --steps N, or metainr.limits.use_limits(max_steps=...))")
