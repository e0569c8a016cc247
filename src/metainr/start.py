"""Where a test-time fit starts, and fitting a user's file in one call.

A :class:`Start` is a field, its initial params for a batch (a checkpoint's learned init, or the
field's own random weights), the rule that fits from there (optimizer and step sizes) and how many
steps a fit takes when the caller does not say. :func:`fit_from_checkpoint` is what ``metainr fit``
does, as one library call: the checkpoint's task reads the file, the learner's init and test rule
fit it, and the result comes back with the fitted field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .device import resolve_device
from .field_files import FittedField
from .fields import FieldConfig, build_field
from .fit import FitResult, fit
from .guard import Candidate, GuardReport, guarded_fit
from .limits import check_steps
from .meta import Learner, TestRule
from .tasks import Batch, FileDependent, Task, build_task, field_dims, for_field
from .train import load_learner


@dataclass
class Start:
    """Where fitting starts: a checkpoint's learner, or a random init of a field."""

    task: Task
    field: nn.Module
    rule: TestRule
    default_steps: int
    """steps of a fit when the caller gives none: the learner's inner loop (or its run's validation
    fits, the longer), at least 2; the task preset's for a random init"""
    learner: Learner | None = None
    source: str = ""
    """what declared ``default_steps`` (a checkpoint), named when they are over the limit"""

    def steps(self, given: int | None = None) -> int:
        """The steps of a fit: ``given``, else :attr:`default_steps`, which a checkpoint declares
        and so are bounded by ``max_steps`` (:mod:`metainr.limits`): a tampered checkpoint never
        makes a fit run a billion steps unasked."""
        if given is not None:
            if given < 0:
                raise ValueError(f"steps must be >= 0, got {given}")
            return int(given)
        if self.learner is not None:
            check_steps(self.default_steps, f"{self.source or 'the checkpoint'} (its inner loop or validation fits)")
        return self.default_steps

    def init(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Initial params for the signals of ``batch`` (shared, or one set per signal)."""
        if self.learner is None:
            return {n: p.detach() for n, p in self.field.named_parameters()}
        with torch.no_grad():
            return self.learner.signal_init(self.task, batch)


def learner_start(learner: Learner, meta: Mapping[str, Any], task: Task, source: str | Path = "") -> Start:
    """The start a loaded checkpoint gives (``meta``: its metadata; ``source``: its file, named in
    errors); ``task`` must match its field."""
    cfg = learner.field.config
    if (cfg.in_dim, cfg.out_dim) != (task.in_dim, task.out_dim):
        raise ValueError(f"the checkpoint holds a field with {cfg.in_dim}-d inputs and {cfg.out_dim} channels, but the "
                         f"task needs {task.in_dim}-d inputs and {task.out_dim} channels")
    eval_steps = (meta.get("train") or {}).get("eval_steps") or 0
    inner = getattr(learner.config, "inner_steps", 0)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (eval_steps, inner)):
        raise ValueError(f"the checkpoint declares unusable step counts (inner steps {inner!r}, eval steps "
                         f"{eval_steps!r})")
    return Start(task, learner.field, learner.test_rule(), max(inner, eval_steps, 2), learner, str(source))


def random_start(task: Task, field: nn.Module) -> Start:
    """A random init of ``field`` fitted with the task preset's rule (Adam by default)."""
    rule = type(task).preset.random
    return Start(task, field, TestRule(rule.optimizer, rule.lr), rule.steps)  # type: ignore[arg-type]


def random_counterpart(start: Start) -> Start:
    """A random init of a checkpoint start's architecture, fitted with the task preset's random rule:
    a fresh field from the checkpoint's own FieldConfig, seed included (so the weights its
    meta-training started from: what the zoo's ``random_psnr`` scores), with the checkpoint field's
    buffers copied in (its fixed encodings and pruning masks: the same function of the params, so
    params of either start fit the other's field)."""
    if start.learner is None:
        raise ValueError("a random start has no random counterpart: it is one")
    like = next(start.field.parameters())
    fresh = build_field(start.field.config).to(device=like.device, dtype=like.dtype)
    with torch.no_grad():
        for name, buffer in start.field.named_buffers():
            fresh.get_buffer(name).copy_(buffer)
    return random_start(start.task, fresh)


def rule_with(default: TestRule, optimizer: str | None = None, lr: float | None = None,
              rescale: float | None = None) -> TestRule:
    """``default`` with the optimizer, step size or GradNCP rescaling keep ratio a caller chose (a
    new optimizer without an lr gets its usual one: 1e-3 for Adam, 1e-2 for SGD)."""
    optimizer = optimizer or default.optimizer
    rescale = default.rescale if rescale is None else rescale
    if not 0 <= rescale <= 1:
        raise ValueError(f"rescale must be a keep ratio in [0, 1], got {rescale}")
    if lr is not None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        return TestRule(optimizer, lr, rescale)
    if optimizer != default.optimizer:
        return TestRule(optimizer, 1e-3 if optimizer == "adam" else 1e-2, rescale)
    return TestRule(default.optimizer, default.lrs, rescale)


@dataclass
class Fitted:
    """What a fit of a user's file gives back (:func:`fit_from_checkpoint`, :meth:`FitPlan.run`)."""

    task: Task
    batch: Batch
    """the file's signal as the task read it (a batch of one)"""
    result: FitResult
    field: FittedField
    """the fitted field of the signal (save it with :func:`metainr.save_field`)"""
    steps: int
    rule: TestRule
    guard: GuardReport | None = None
    """what the out-of-class guard decided (None: no guard ran)"""


@dataclass
class FitPlan:
    """A fit of a user's file, ready to run: the task that read it, the signal, where it starts
    and the rule (:func:`prepare_fit`). Callers check what they must before any work (e.g. that
    outputs do not replace inputs), then :meth:`run`."""

    task: Task
    batch: Batch
    start: Start
    rule: TestRule
    source: str
    holdout: float = 0.0
    """held-out fraction of the observations (0: none; :func:`metainr.fit`'s ``holdout``)"""
    holdout_seed: int = 0
    """seed of the held-out rows"""
    guard: bool = True
    """a checkpoint start also fits a random init and keeps the better (:mod:`metainr.guard`)"""
    probe_steps: int | None = None
    """steps of the guard's probes (None: the fit's own)"""

    def run(self, steps: int | None = None, record: list[int] | None = None) -> Fitted:
        """Fit ``steps`` steps (default: the start's); ``record``: the steps whose metrics the
        result keeps besides the last (with held-out stopping the chosen step's are kept too)."""
        steps = self.start.steps(steps)
        start, task = self.start, self.task
        options = dict(record=sorted({*(record or []), steps}), holdout=self.holdout, holdout_seed=self.holdout_seed)
        report, field = None, start.field
        if self.guard and start.learner is not None:
            rand = random_counterpart(start)
            prior = Candidate(start.field, start.init(self.batch), self.rule.fit_options(task, start.field))
            random = Candidate(rand.field, rand.init(self.batch), rand.rule.fit_options(task, rand.field))
            result, report = guarded_fit(task, self.batch, steps, prior, random, probe_steps=self.probe_steps,
                                         **options)
            field = rand.field if report.winner[0] == "random" else start.field
        else:
            result = fit(task, start.field, start.init(self.batch), self.batch, steps, **options,
                         **self.rule.fit_options(task, start.field))
        one = {n: p[0].detach() for n, p in result.params.items()}
        fitted = FittedField(field, one, task, {"file": self.source, "steps": steps})
        return Fitted(task, self.batch, result, fitted, steps, self.rule, report)


def prepare_fit(init: str | Path | tuple[Learner, Mapping[str, Any]], source: str | Path, *,
                task: str | Task | None = None, reference: str | Path | None = None, optimizer: str | None = None,
                lr: float | None = None, rescale: float | None = None, field: FieldConfig | None = None,
                device: str | torch.device | None = "cpu", holdout: float | None = None, holdout_seed: int = 0,
                guard: bool = True, probe_steps: int | None = None, **task_options: Any) -> FitPlan:
    """Read the file ``source`` and set up its fit (see :func:`fit_from_checkpoint`); ``init`` may
    also be a loaded checkpoint, ``(learner, metadata)`` from :func:`metainr.load_learner`."""
    if holdout is not None and not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be a fraction in [0, 1), got {holdout}")
    if probe_steps is not None and probe_steps < 1:
        raise ValueError(f"probe_steps must be >= 1, got {probe_steps}")
    device = resolve_device(device)
    if isinstance(init, tuple):
        learner, meta = init
    elif str(init) == "random":
        learner, meta = None, {}
    else:
        learner, meta = load_learner(init, device=device)
    if learner is None:
        if task is None:
            raise ValueError("a random init needs a task (task='image', ...)")
        chosen = build_task(task, **task_options) if isinstance(task, str) else task
        chosen = for_field(chosen, (field or type(chosen).preset.field).kind)
    else:
        if field is not None:
            raise ValueError("a field config only applies to a random init; a checkpoint carries its own architecture")
        chosen = build_task(meta["task"], **task_options)
    if isinstance(chosen, FileDependent):  # a task whose geometry a file fixes (e.g. a scan's detectors)
        chosen = chosen.for_file(source)
    batch = chosen.read(source, reference)
    if learner is None:
        chosen = chosen.settled(batch)
        cfg = dataclasses.replace(field or type(chosen).preset.field, **field_dims(chosen))
        start = random_start(chosen, build_field(cfg).to(device))
    else:
        start = learner_start(learner, meta, chosen, "" if isinstance(init, tuple) else init)
    holdout = type(chosen).preset.holdout if holdout is None else float(holdout)
    return FitPlan(chosen, batch.to(device), start, rule_with(start.rule, optimizer, lr, rescale), str(source),
                   holdout, int(holdout_seed), bool(guard), probe_steps)


def fit_from_checkpoint(init: str | Path | tuple[Learner, Mapping[str, Any]], source: str | Path,
                        steps: int | None = None, *, record: list[int] | None = None, **options: Any) -> Fitted:
    """Fit the signal in the file ``source`` from a checkpoint (``init``: its path) or from
    ``init="random"`` (then ``task=`` names the task, ``field=`` the architecture: default the
    task preset's), as ``metainr fit`` does. ``options``: ``task``, ``reference``, ``optimizer`` /
    ``lr`` / ``rescale`` (change the start's rule), ``field``, ``device``, and task config
    overrides (e.g. ``frames=8``); ``steps`` default to the start's; ``record``: the steps whose
    metrics the result keeps (default: the last).

    ``holdout``: the fraction of the observations held out to choose the step whose params are
    returned (:func:`metainr.fit`; default: the task preset's, 0.1 where observations are sparse,
    CT and views, else 0; 0 turns it off), ``holdout_seed`` its rows. ``guard`` (default True, a
    checkpoint only): also fit a random init of the checkpoint's architecture with the task's
    random rule on the same held-out rows and keep the start whose held-out loss is lower
    (:func:`metainr.guard.guarded_fit`; ``Fitted.guard`` says which and why; it costs a second fit,
    see :mod:`metainr.guard`); ``probe_steps`` shortens its probes. Errors are one-line ValueErrors
    / MetaINRErrors."""
    return prepare_fit(init, source, **options).run(steps, record)
