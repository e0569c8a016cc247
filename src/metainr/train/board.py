"""TensorBoard logging as a trainer callback (the optional extra ``metainr[tensorboard]``).

Rank 0 writes what ``metrics.jsonl`` holds as scalars (``train/loss``, ``train/grad_norm``,
``train/lr``, ``val/psnr``) and, at each validation, the reconstruction of the first validation
signal after the validation's test-time steps beside its target, for tasks whose reconstructions
are pictures (a (H, W, C) or (T, H, W, C) layout with 1 or 3 channels; others log scalars).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import MetaINRError
from ..fit import fit
from ..functional import field_function
from .loop import Callback, RunState
from .rundir import own


def _summary_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MetaINRError("--tensorboard needs the tensorboard package: pip install 'metainr[tensorboard]'") from None
    return SummaryWriter(str(log_dir), flush_secs=10)


def as_picture(signal: Tensor) -> Tensor | None:
    """(3, H, W) in [0, 1] of a picture-like signal: a (H, W, C) grid or a (T, H, W, C) stack of
    them shown side by side; None for other layouts."""
    if signal.dim() == 4 and signal.shape[-1] in (1, 3):
        signal = torch.cat(list(signal[:8]), dim=1)
    if signal.dim() != 3 or signal.shape[-1] not in (1, 3):
        return None
    picture = signal.detach().float().clamp(0, 1).permute(2, 0, 1).cpu()
    return picture.expand(3, -1, -1) if picture.shape[0] == 1 else picture


class TensorBoardLog(Callback):
    """``TensorBoardLog(log_dir, val)``: scalars every step; with validation signals ``val``,
    reconstructions at every validation step. Only rank 0 writes; call :meth:`close` at the end."""

    def __init__(self, log_dir: str | Path, val: Any = None) -> None:
        self.log_dir, self.val = Path(log_dir), val
        self._writer: Any = None

    def on_start(self, state: RunState) -> None:
        if state.world.main and self._writer is None:
            if state.run is not None and self.log_dir.parent.resolve() == state.run.resolve():
                own(state.run, self.log_dir.name)  # the event files are the run's (--overwrite removes them)
            self._writer = _summary_writer(self.log_dir)

    def on_step(self, state: RunState) -> None:
        if self._writer is None or not state.records:
            return
        record, w = state.records[-1], self._writer
        step = int(record["step"])
        for key in ("loss", "grad_norm", "lr"):
            w.add_scalar(f"train/{key}", record[key], step)
        if record.get("val_psnr") is not None:
            w.add_scalar("val/psnr", record["val_psnr"], step)
            self._pictures(state, step)
        if step == state.config.steps:
            w.flush()

    def _pictures(self, state: RunState, step: int) -> None:
        if self.val is None:
            return
        learner, task = state.learner, state.task
        batch = task.validation_batches(self.val)[0].signals(slice(0, 1))
        batch = batch.to(next(learner.parameters()).device)
        rule = learner.test_rule()
        result = fit(task, learner.field, learner.signal_init(task, batch), batch, state.config.eval_steps,
                     **rule.fit_options(task, learner.field))
        with torch.no_grad():
            recon = task.reconstruct(field_function(learner.field), result.params, batch)[0]
        # the target: the reference where observations are not the signal itself, else the observations
        target = batch.reference[0] if batch.reference is not None else batch.values[0]
        picture = as_picture(recon)
        if picture is None:
            return
        truth = as_picture(target.reshape(recon.shape)) if target.numel() == recon.numel() else None
        both = picture if truth is None else torch.cat([truth, picture], dim=1)
        self._writer.add_image("val/target_and_reconstruction", both, step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
