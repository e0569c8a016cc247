"""Reading a field store: :class:`FieldStore`, a ``torch.utils.data.Dataset`` of stored fields.

Opening reads the index once (a snapshot: signals committed later are not seen) and keeps no
database connection, so a store goes to DataLoader workers as it is. Params are read from their
shard on demand; a shard's size and sha256 are checked the first time this object reads it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from ..errors import MetaINRError
from ..field_files import FittedField
from ..fields import FieldConfig, build_field
from ..tasks import Task, build_task
from .index import INDEX_NAME, ShardRow, SignalRow, finite_mean, open_index
from .shards import read_signals, shard_path, verify_shard


class FieldStore(Dataset):
    """The fields of a store directory (written by :func:`metainr.encode`), ordered by signal id.

    ``store[i]`` is ``(id, params, metrics)``: ``params`` name -> tensor of that one signal (CPU,
    no batch dimension), ``metrics`` name -> float (e.g. ``psnr`` in dB; ``inf`` for an exact fit).
    With ``DataLoader(store, batch_size=B)`` the default collate gives ``(ids, params name ->
    (B, *shape), metrics name -> (B,))``. ``.field`` is the architecture (its own weights are not
    any signal's), ``.task`` the task the signals were fitted for; ``.fitted(id)`` gives one as
    a :class:`~metainr.field_files.FittedField`. A damaged index or shard is a one-line
    :class:`~metainr.errors.MetaINRError` naming the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open_index(self.path) as index:
            meta = index.meta()
            rows = index.signals()
            self._shards: dict[str, ShardRow] = index.shards()
        where = self.path / INDEX_NAME
        try:
            self.field = build_field(FieldConfig.from_dict(meta["field"]))
            self.task: Task = build_task(meta["task"])
        except (KeyError, ValueError, TypeError) as exc:
            raise MetaINRError(f"{where}: unusable field or task in the store's meta ({exc})") from None
        self.meta: dict[str, Any] = meta
        """the store-level meta (field, task, learner, init, rule, steps, template, ...)"""
        self._shapes = {n: p.shape for n, p in self.field.named_parameters()}
        missing = next((r for r in rows if r.shard not in self._shards), None)
        if missing is not None:
            raise MetaINRError(f"{where}: signal {missing.id!r} names shard {missing.shard!r}, which the index lacks")
        self._rows: list[SignalRow] = rows
        self._at = {r.id: i for i, r in enumerate(rows)}
        self._by_shard: dict[str, list[str]] = {}
        for r in rows:
            self._by_shard.setdefault(r.shard, []).append(r.id)
        self._verified: set[str] = set()
        self._cached: tuple[str, dict[str, dict[str, Tensor]]] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> tuple[str, dict[str, Tensor], dict[str, float]]:
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"a field store is indexed by position (int), got {type(i).__name__}; use .params(id)")
        if not -len(self) <= i < len(self):
            raise IndexError(f"signal {i} of a store of {len(self)}")
        row = self._rows[i]
        return row.id, self.params(row.id), dict(row.metrics)

    @property
    def ids(self) -> list[str]:
        """Signal ids, in the store's order (sorted)."""
        return [r.id for r in self._rows]

    def row(self, signal_id: str) -> SignalRow:
        """The index row of ``signal_id`` (source, steps, metrics, bytes, shard)."""
        at = self._at.get(signal_id)
        if at is None:
            hint = f" ({self._rows[0].id} ... {self._rows[-1].id})" if self._rows else " (it is empty)"
            raise MetaINRError(f"{self.path} holds no signal {signal_id!r}{hint}")
        return self._rows[at]

    def shard_file(self, signal_id: str) -> Path:
        """The shard file holding ``signal_id``."""
        return shard_path(self.path, self.row(signal_id).shard)

    def params(self, signal_id: str) -> dict[str, Tensor]:
        """name -> tensor (CPU) of one stored signal."""
        row = self.row(signal_id)
        if self._cached is None or self._cached[0] != row.shard:
            path = shard_path(self.path, row.shard)
            if row.shard not in self._verified:
                verify_shard(path, self._shards[row.shard])
                self._verified.add(row.shard)
            self._cached = (row.shard, read_signals(path, self._by_shard[row.shard], self._shapes))
        return dict(self._cached[1][signal_id])

    def fitted(self, signal_id: str) -> FittedField:
        """One stored signal as a fitted field (with the store's task; ``info``: id, source, steps, metrics)."""
        row = self.row(signal_id)
        info = {"id": row.id, "source": row.source, "steps": row.steps, "metrics": dict(row.metrics)}
        return FittedField(self.field, self.params(signal_id), self.task, info)

    def info(self) -> dict[str, Any]:
        """A summary: signals, mean of each metric (finite values), bytes (shards, index, per
        signal), task, learner, steps, init and field; JSON-serialisable."""
        names = sorted({k for r in self._rows for k in r.metrics})
        means = {k: finite_mean([r.metrics[k] for r in self._rows if k in r.metrics]) for k in names}
        indexed = {r.shard for r in self._rows}
        shard_bytes = sum(s.bytes for s in self._shards.values() if s.name in indexed)
        index_bytes = sum(os.path.getsize(p) for p in (self.path / INDEX_NAME, self.path / f"{INDEX_NAME}-wal")
                          if p.is_file())
        splits = {k.split(":", 1)[1]: v for k, v in self.meta.items() if k.startswith("split:")}
        return {
            "store": str(self.path), "signals": len(self), "task": self.task.name, "task_spec": self.task.spec(),
            "learner": (self.meta.get("learner") or {}).get("name"), "steps": self.meta.get("steps"),
            "rule": self.meta.get("rule"), "init": self.meta.get("init"), "field": self.meta.get("field"),
            "decode": self.meta.get("decode"), "splits": splits,
            "metrics": {k: None if v is None or not math.isfinite(v) else round(v, 6) for k, v in means.items()},
            "shards": len(indexed), "shard_bytes": shard_bytes, "index_bytes": index_bytes,
            "param_bytes": sum(r.bytes for r in self._rows),
            "bytes_per_signal": round(shard_bytes / len(self), 1) if len(self) else None,
        }
