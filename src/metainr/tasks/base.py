"""The Task protocol: what one kind of signal means to learners, ``fit`` and the trainer.

A task says, for a batch of B signals, where the field is queried, what was observed there and
how observations arise from field values: ``observe(field_fn, params, query) -> predictions``,
a plain function of the caller's field function (identity for images, line integrals for CT,
volume rendering for views). It also owns the per-observation loss, per-signal metrics, how an
inner loop's context is drawn, and reading and writing its files. Learners, ``fit`` and the
trainer only ever talk to a task through this protocol.

Query row ``i`` produces observation ``i``: a context (a subset of observations) is therefore a
subset of query rows, whatever the forward model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, Union

import torch
from torch import Tensor

from ..config import Config
from ..fields.config import FieldConfig
from ..functional import FieldFn, coordinate_chunks
from .capabilities import field_dims
from ..metrics import psnr

Context = Union[None, Tensor, Sequence[Tensor]]
"""Which observations an inner loop may see: None (all), one index tensor (M,) shared by the
batch, or one index tensor per signal. Outer losses and metrics always use every observation."""


@dataclass
class Batch:
    """B signals as a task presents them: query rows, the observation of each, an inner-loop context."""

    query: Tensor
    """(N, d) shared by the batch, or (B, N, d) one set per signal (e.g. rays of posed views)"""
    values: Tensor
    """(B, N, C) observations; row i is observed through query row i"""
    context: Context = None
    """the observations inner loops may see (see :data:`Context`)"""
    reference: Tensor | None = None
    """(B, ...) what metrics compare with when it is not the observations (e.g. CT images)"""

    def __post_init__(self) -> None:
        if self.values.dim() != 3:
            raise ValueError(f"batch values must be (B, N, C), got {tuple(self.values.shape)}")
        rows = self.query.shape[-2]
        if rows != self.values.shape[1] or (self.per_signal_query and self.query.shape[0] != len(self)):
            raise ValueError(f"query {tuple(self.query.shape)} does not match values {tuple(self.values.shape)}")

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def per_signal_query(self) -> bool:
        """True when every signal has its own query rows (B, N, d)."""
        return self.query.dim() == 3

    @property
    def shared_context(self) -> bool:
        """True when one context (None: all rows, or one index tensor) serves every signal."""
        return self.context is None or isinstance(self.context, Tensor)

    @property
    def device(self) -> torch.device:
        return self.values.device

    def query_of(self, b: int) -> Tensor:
        """(N, d) query rows of signal ``b``."""
        return self.query[b] if self.per_signal_query else self.query

    def context_of(self, b: int) -> Tensor | None:
        """Context indices of signal ``b`` (None: all observations)."""
        return self.context if self.shared_context else self.context[b]

    def signals(self, index: slice | Tensor) -> "Batch":
        """The signals ``index`` (a slice, or a (k,) index tensor) of this batch, of this batch's
        class (a subclass's own fields are kept as they are)."""
        if self.shared_context:
            ctx = self.context
        elif isinstance(index, slice):
            ctx = self.context[index]
        else:
            ctx = [self.context[int(i)] for i in index]
        return dataclasses.replace(self, query=self.query[index] if self.per_signal_query else self.query,
                                   values=self.values[index], context=ctx,
                                   reference=None if self.reference is None else self.reference[index])

    def to(self, device: torch.device | str) -> "Batch":
        """The same batch on ``device``, of this batch's class."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        ctx = self.context
        ctx = move(ctx) if ctx is None or isinstance(ctx, Tensor) else [c.to(device) for c in ctx]
        return dataclasses.replace(self, query=self.query.to(device), values=self.values.to(device), context=ctx,
                                   reference=move(self.reference))


@dataclass(frozen=True)
class RandomFit:
    """How a fit from a random init runs when the user does not say (``fit --init random``)."""

    optimizer: str = "adam"
    """adam | sgd"""
    lr: float = 1e-3
    """step size"""
    steps: int = 500
    """steps"""


@dataclass(frozen=True)
class Preset:
    """A task's defaults, applied before the user's options by the CLI and the benchmarks."""

    field: FieldConfig = FieldConfig()
    """the field (its ``in_dim`` and ``out_dim`` are ignored: the task's own are used)"""
    learner: str = "maml"
    """the learner or learner preset of ``meta-train``"""
    learner_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """options of that learner's config (applied only when the chosen learner is this one)"""
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """TrainConfig fields (e.g. outer_lr, batch_size)"""
    random: RandomFit = RandomFit()
    """how a fit from a random init runs"""
    data: str = "faces"
    """the dataset a verb uses when none is given"""
    holdout: float = 0.0
    """fraction of a file's observations a fit holds out to choose its step (``metainr fit``'s
    ``--holdout``): > 0 where observations are sparse and a fit overfits them, 0 where they are dense"""

    def field_config(self, task: "Task", **overrides: Any) -> FieldConfig:
        """The preset's field for ``task`` (the dims it fixes: :func:`field_dims`), with ``overrides``."""
        return dataclasses.replace(self.field, **{**field_dims(task), **overrides})


class Task:
    """One kind of signal. Subclasses set ``name`` and ``Config`` and override what differs.

    Defaults describe a signal observed directly (the identity forward model), scored by the
    mean squared error and by PSNR of the observations against a data range of 1.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = Config

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        if config is None:
            config = self.Config(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config

    # -- the field it needs ------------------------------------------------------------------
    @property
    def in_dim(self) -> int:
        """Coordinate dimension of the field this task observes."""
        raise NotImplementedError

    @property
    def out_dim(self) -> int:
        """Value channels of the field this task observes."""
        raise NotImplementedError

    # -- the forward model, loss and metrics -----------------------------------------------------
    def observe(self, field_fn: FieldFn, params: Mapping[str, Tensor], query: Tensor) -> Tensor:
        """Predictions of ONE signal's observations: query (M, d) -> (M, C)."""
        return field_fn(params, query)

    def errors(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-observation loss (M,) of predictions (M, C) against observations (M, C)."""
        return (pred - target).pow(2).mean(dim=-1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of ONE signal: the mean of :meth:`errors` (so chunks of rows add up exactly)."""
        return self.errors(pred, target).mean()

    def metrics(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch,
                names: Sequence[str] = ("psnr",)) -> dict[str, Tensor]:
        """Per-signal metrics, name -> (B,), of params name -> (B, *shape) on ``batch``."""
        pred = observe_batch(self, field_fn, params, batch)
        return {"psnr": psnr(pred, batch.values)} if "psnr" in names else {}

    def reconstruct(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """The signals the params describe, in the task's natural layout (B, ...)."""
        return observe_batch(self, field_fn, params, batch)

    # -- data -------------------------------------------------------------------------------------
    def batch(self, signals: Any) -> Batch:
        """Every observation of ``signals`` (what a test-time fit sees)."""
        raise NotImplementedError

    def train_batch(self, signals: Any, generator: torch.Generator) -> Batch:
        """A meta-training batch: like :meth:`batch`, with the inner loops' context drawn from
        ``generator`` (e.g. a few random CT views per signal). Default: every observation."""
        return self.batch(signals)

    def validation_batches(self, signals: Any) -> list[Batch]:
        """The fits that validation averages over (default: one full batch)."""
        return [self.batch(signals)]

    def load(self, source: str, split: str) -> Any:
        """Signals of a named dataset or a user folder, for meta-training or evaluation."""
        raise NotImplementedError(f"task {self.name!r} cannot load datasets")

    def read(self, path: str | Path, reference: str | Path | None = None) -> Batch:
        """One signal from a user's file, as a batch of one; ``reference``: a file holding the true
        signal that metrics compare with, where the observations are not the signal itself."""
        raise NotImplementedError(f"task {self.name!r} cannot read files")

    def settled(self, batch: Batch) -> "Task":
        """This task with the settings its config leaves to the data (e.g. 0 = "those of the
        data") fixed from a batch of its signals; itself when there are none."""
        return self

    def write(self, path: str | Path, signal: Tensor) -> list[Path]:
        """Write one reconstructed signal (from :meth:`reconstruct`); returns the files written
        (exactly :meth:`output_paths` of ``path``)."""
        raise NotImplementedError(f"task {self.name!r} cannot write files")

    def output_paths(self, path: str | Path) -> list[Path]:
        """The files :meth:`write` would write for ``path`` (checked against a command's inputs first)."""
        return [Path(path)]

    preset: ClassVar[Preset] = Preset()
    """Defaults a CLI and benchmarks apply for this task before the user's options (a :class:`Preset`)."""

    def spec(self) -> dict[str, Any]:
        """Name + config: what a checkpoint stores to rebuild this task."""
        return {"name": self.name, **self.config.to_dict()}


def observe_batch(task: Task, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch,
                  chunk_rows: int = 16384) -> Tensor:
    """Predictions (B, N, C) of every signal's observations, params name -> (B, *shape), swept
    over query rows in chunks of ``chunk_rows`` so memory stays bounded."""
    q_dim = 0 if batch.per_signal_query else None
    observe = torch.vmap(lambda p, q: task.observe(field_fn, p, q), in_dims=(0, q_dim))
    n = batch.query.shape[-2]
    chunks = coordinate_chunks(n, chunk_rows)
    if len(chunks) == 1:
        return observe(dict(params), batch.query)
    # written into one preallocated tensor: small parts kept between the chunks' large temporaries
    # fragment glibc's heap (observing a 1024^2 image grew RSS by 445 MB with a list of parts, 146 here)
    out = None
    for rows in chunks:
        part = observe(dict(params), batch.query[..., rows, :])
        if out is None:
            out = part.new_empty(part.shape[0], n, *part.shape[2:])
        out[:, rows] = part
    return out


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available by its ``name`` (CLI ``--task``, checkpoints)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name to be registered")
    TASKS[cls.name] = cls
    return cls


ENTRY_POINT_GROUP = "metainr.tasks"
"""the entry-point group through which other packages add tasks (each entry point names a Task class)"""


def load_task_plugins() -> list[str]:
    """Register the tasks installed packages declare in the ``metainr.tasks`` entry-point group
    (``name = "package.module:TaskClass"``); returns the names added. A plugin that fails to load,
    or is not a named Task class, is skipped with a logged warning naming it: a broken package
    never stops the built-in tasks."""
    import logging
    from importlib.metadata import entry_points

    added = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # third-party code: any failure is the plugin's
            logging.getLogger(__name__).warning("task plugin %r (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Task) and cls.name):
            logging.getLogger(__name__).warning("task plugin %r (%s) is not a named Task class", ep.name, ep.value)
            continue
        if cls.name not in TASKS:
            TASKS[cls.name] = cls
            added.append(cls.name)
    return added


def build_task(spec: str | Mapping[str, Any], **overrides: Any) -> Task:
    """A task from its name (default config + ``overrides``) or from a checkpoint's spec dict."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    cls = TASKS[name]
    return cls(cls.Config.from_dict({**spec, **overrides}))
