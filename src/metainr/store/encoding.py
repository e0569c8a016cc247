"""Encoding a dataset into a field store, decoding one signal back, and a store's summary: the
library calls behind ``metainr encode`` / ``decode`` / ``store info``.

:func:`encode` fits every signal of a dataset split from a checkpoint's learned init with its test
rule, a batch of signals at a time, and stores each batch as one shard (:mod:`.shards`) indexed in
SQLite (:mod:`.index`). It is resumable: a signal is stored exactly when its index row is, a row
is committed only after its shard is on disk, and a run skips the signals the index holds, so a
killed run re-run with the same arguments continues where it stopped and never fits a stored
signal again. Under ``torchrun`` (call :func:`metainr.train.distributed.init_world` first, as
the CLI does) each process takes a disjoint part of the signals not yet stored.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor

from ..device import resolve_device
from ..disk import check_outputs
from ..errors import MetaINRError
from ..fit import fit, per_signal
from ..functional import field_function
from ..meta import Learner
from ..start import learner_start, rule_with
from ..tasks import Renderable, Task, build_task, field_dims
from ..train import load_learner
from ..train.distributed import World, any_process, barrier, current_world, shard
from ..zoo import resolve_checkpoint
from .field_store import FieldStore
from .index import INDEX_NAME, NAME, STORE_FORMAT, Index, SignalRow, create_index, finite_mean, open_index
from .shards import new_shard_name, remove_orphans, sha256_file, write_shard
from .templates import decode_mode, resized, signal_template, template_signals

METRICS = ("psnr", "ssim", "iou", "chamfer")
"""the metrics stored with each signal: those of this list its task computes"""
CHECKED = {"field": "field", "task": "task", "learner": "learner", "init": "init checkpoint", "rule": "test rule",
           "steps": "step count"}
"""meta entries a run must share with the store it adds to (key -> what it is called in errors)"""
LOCK_NAME = "lock"
log = logging.getLogger(__name__)


def encode(source: str | Path, init: str | Path, store: str | Path, *, steps: int | None = None,
           split: str = "test", batch_size: int = 16, device: str | torch.device | None = "cpu",
           optimizer: str | None = None, lr: float | None = None, rescale: float | None = None,
           loaded: tuple[Learner, Mapping[str, Any]] | None = None, **task_options: Any) -> dict[str, Any]:
    """Fit every signal of ``source`` (what the checkpoint's task loads: a dataset name or a
    folder; ``split`` of it) from the checkpoint ``init``'s learned init and test rule (``optimizer``
    / ``lr`` / ``rescale`` change it), ``steps`` steps (default: the checkpoint's), in blocks of
    ``batch_size`` consecutive signals (one fit and one shard each; resume with the same value to
    get bit-identical params), into the store directory ``store`` (created if missing). ``task_options``
    override the checkpoint's task config (e.g. ``resolution=16``); ``loaded``: the checkpoint
    already loaded (``(learner, metadata)``). A store made with another field, task, learner,
    init, rule or step count is refused. Returns a summary (complete on rank 0 under torchrun):
    signals, how many this call stored, already stored and missing (fits that diverged), mean metrics."""
    started = time.perf_counter()
    world = current_world()
    device = resolve_device(device)
    if str(init) == "random":
        raise ValueError("encode needs a checkpoint's learned init (--init CKPT): a store's signals share one init")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not NAME.match(split) or not split[0].isalnum():
        raise ValueError(f"split must be a name of letters, digits, '-', '_' or '.', got {split!r}")
    learner, ckpt = loaded if loaded is not None else load_learner(init, device=device)
    init_file = resolve_checkpoint(init)  # a packaged init (zoo:NAME) is its file
    learner = learner.to(device)
    if not isinstance(ckpt.get("task"), dict):
        raise ValueError(f"{init} names no task (a checkpoint of an older metainr?)")
    task = build_task(ckpt["task"], **task_options)
    start = learner_start(learner, ckpt, task, init)
    rule = rule_with(start.rule, optimizer, lr, rescale)
    steps = start.steps(steps)
    signals = task.load(str(source), split)
    n = len(signals)
    if n == 0:
        raise ValueError(f"{source} ({split}) holds no signals")
    ids = signal_ids(split, n)
    field, fn = start.field, field_function(start.field)
    shapes = {k: p.shape for k, p in field.named_parameters()}
    first = task.batch(signals[:1]).to(device)
    params0 = {k: per_signal(p, shapes[k], 1) for k, p in start.init(first).items()}
    template = signal_template(signals)
    source_key = str(Path(source).resolve()) if Path(source).exists() else str(source)
    recipe = {
        "field": field.config.to_dict(), "task": task.spec(), "learner": learner.spec(),
        "init": {"path": str(init_file.resolve()), "sha256": sha256_file(init_file)},
        "rule": {"optimizer": rule.optimizer, "lr": rule.lrs if isinstance(rule.lrs, (int, float)) else "learned",
                 "rescale": rule.rescale},
        "steps": steps, f"split:{split}": {"source": source_key, "count": n},
        "template": template,
        "decode": decode_mode(task, signals, template, lambda b: task.reconstruct(fn, params0, b.to(device))),
    }
    store = Path(store)
    with contextlib.ExitStack() as stack:
        index = _join_store(store, recipe, world, device, stack)
        done = index.ids()
        before = sum(sid in done for sid in ids)
        # fixed blocks of the whole split, whatever is stored: a resumed or parallel run fits every
        # signal in the batch an uninterrupted run does, so its params come out bit for bit the same
        # (batched kernels round a batch of one differently from larger ones)
        blocks = [[i for i in range(at, min(at + batch_size, n)) if ids[i] not in done]
                  for at in range(0, n, batch_size)]
        blocks = [b for b in blocks if b]
        mine = blocks[shard(len(blocks), world)]
        barrier(world)  # every process has read what is stored before any writes
        about = dict(source=source_key, task=task.name, learner=learner.spec()["name"], steps=steps)
        for k, chunk in enumerate(mine):
            log.info("encoding block %d of %d (%d signals) into %s", k + 1, len(mine), len(chunk), store)
            batch = task.batch(signals[chunk]).to(device)
            result = fit(task, field, start.init(batch), batch, steps, record=[steps], metrics=METRICS,
                         **rule.fit_options(task, field))
            _store_batch(store, index, world, [ids[i] for i in chunk], result.params, result.metrics,
                         result.final_loss, about)
        barrier(world)  # every process has committed: the index is complete
        wanted = set(ids)
        rows = [r for r in index.signals() if r.id in wanted]
        total = len(index.ids())
    names = sorted({k for r in rows for k in r.metrics})
    means = {k: finite_mean([r.metrics[k] for r in rows if k in r.metrics]) for k in names}
    return {"store": str(store), "source": source_key, "split": split, "task": task.name,
            "learner": about["learner"], "steps": steps, "signals": n, "encoded": len(rows) - before,
            "already_stored": before, "stored": len(rows), "missing": n - len(rows), "store_signals": total,
            "metrics": {k: None if v is None else round(v, 6) for k, v in means.items()},
            "bytes_per_signal": round(sum(r.bytes for r in rows) / len(rows), 1) if rows else None,
            "processes": world.size, "seconds": round(time.perf_counter() - started, 3)}


def signal_ids(split: str, count: int) -> list[str]:
    """The ids of a split's signals: ``{split}-{index}``, the index zero-padded (to 6 digits at
    least) so that ids sort as the signals do."""
    width = max(6, len(str(max(count - 1, 0))))
    return [f"{split}-{i:0{width}d}" for i in range(count)]


def _store_batch(store: Path, index: Index, world: World, ids: list[str], params: Mapping[str, Tensor],
                 metrics: Mapping[str, Tensor], final_loss: Tensor, about: dict[str, Any]) -> None:
    """Write the fitted signals of a batch (params name -> (B, *shape)) as one shard, then index
    them; signals whose fit diverged (non-finite loss or params) are left out (a later run retries them)."""
    kept: dict[str, dict[str, Tensor]] = {}
    scores: dict[str, dict[str, float]] = {}
    for b, sid in enumerate(ids):
        one = {k: p[b].detach().cpu() for k, p in params.items()}
        if not (math.isfinite(float(final_loss[b])) and all(bool(torch.isfinite(t).all()) for t in one.values())):
            continue
        kept[sid] = one
        scores[sid] = {k: float(v[b, -1]) for k, v in metrics.items()}
    if not kept:
        return
    name = new_shard_name(world.rank)
    shard_row = write_shard(store, name, kept, {"store": STORE_FORMAT, "task": about["task"], "steps": about["steps"]})
    rows = [SignalRow(sid, about["source"], about["task"], about["learner"], about["steps"], scores[sid],
                      sum(t.numel() * t.element_size() for t in one.values()), name) for sid, one in kept.items()]
    index.commit_shard(shard_row, rows)


def _join_store(store: Path, recipe: dict[str, Any], world: World, device: torch.device,
                stack: contextlib.ExitStack) -> Index:
    """The store's index for this run, every process agreeing: rank 0 creates it (or opens it),
    checks it against ``recipe``, takes the writers' lock and removes orphan shards; then the
    others open and check it. Any process's refusal stops them all."""
    index = None
    for phase_main in (True, False):
        error = None
        if world.main == phase_main:
            try:
                if world.main:
                    index = stack.enter_context(create_index(store, recipe))
                    _check_recipe(index.meta(), recipe, store)
                    index.add_meta({k: v for k, v in recipe.items() if k.startswith("split:")})  # a new split
                    _check_recipe(index.meta(), recipe, store)
                    stack.enter_context(_writer_lock(store))
                    remove_orphans(store, set(index.shards()))
                else:
                    index = stack.enter_context(open_index(store, writable=True))
                    _check_recipe(index.meta(), recipe, store)
            except OSError as exc:
                error = MetaINRError(f"{exc.strerror or type(exc).__name__}: {exc.filename or store}")
            except MetaINRError as exc:
                error = exc
        failed = any_process([error is not None], world, device)[0]
        if error is not None:
            raise error
        if failed:
            raise MetaINRError(f"another process of this run could not open {store} (its error says why)")
    assert index is not None
    return index


def _check_recipe(meta: Mapping[str, Any], recipe: Mapping[str, Any], store: Path) -> None:
    """Refuse (one line) a store whose shared settings differ from this run's."""
    ours = json.loads(json.dumps(recipe))
    for key, what in CHECKED.items():
        theirs, mine = meta.get(key), ours[key]
        if key == "init":
            theirs, mine = (theirs or {}).get("sha256"), mine["sha256"]
        if theirs != mine:
            detail = _difference(theirs, mine)
            raise MetaINRError(f"{store} was encoded with another {what}{detail}: encode into another store")
    for key in (k for k in ours if k.startswith("split:")):
        theirs, mine = meta.get(key), ours[key]
        if theirs is not None and theirs != mine:
            if not isinstance(theirs, dict):
                raise MetaINRError(f"{store / INDEX_NAME}: a damaged meta entry {key!r}")
            raise MetaINRError(f"{store} holds split '{key[6:]}' of {theirs.get('source')} ({theirs.get('count')} "
                               f"signals), not of {mine['source']} ({mine['count']} signals): encode into another "
                               "store")


def _difference(theirs: Any, mine: Any) -> str:
    """' (KEY: THEIRS, not MINE)' for the first differing key of two dicts, else the values."""
    if isinstance(theirs, dict) and isinstance(mine, dict):
        key = next((k for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)), None)
        if key is not None and not isinstance(theirs.get(key), dict):
            return f" ({key}: {theirs.get(key)!r}, not {mine.get(key)!r})"
        return ""
    text = f" ({theirs!r}, not {mine!r})"
    return text if len(text) < 200 else ""


@contextlib.contextmanager
def _writer_lock(store: Path) -> Iterator[None]:
    """One encode run at a time per store (the processes of a torchrun are one run: rank 0 holds it)."""
    fd = os.open(store / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MetaINRError(f"another metainr encode is writing {store}: wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def default_output(signal_id: str) -> Path:
    """Where ``decode`` writes a signal when not told: ``ID.png`` in the working directory (other
    characters than letters, digits, '-', '_' and '.' replaced by '_'; the task adds its companions)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", signal_id).lstrip(".") or "signal"
    return Path(f"{safe}.png")


def decode(store: str | Path, signal_id: str, out: str | Path | None = None, *, resolution: int | None = None,
           views: int = 8, device: str | torch.device | None = "cpu") -> list[Path]:
    """Write the stored signal ``signal_id`` in its task's own form (``task.write``) at ``out``
    (default: :func:`default_output`) and return the files written. ``resolution``: decode a grid
    task at R (its config's ``resolution`` set to R); a task that cannot is refused in one line.
    A task whose reconstruction needs its data's geometry (views) is decoded as a turntable of
    ``views`` renders. Outputs never replace the store's files."""
    stored = FieldStore(store)
    stored.row(signal_id)  # an unknown id is refused before anything else
    task = _decode_task(stored, resolution)
    out = Path(out) if out is not None else default_output(signal_id)
    check_outputs(task.output_paths(out), [stored.path / INDEX_NAME, stored.shard_file(signal_id)])
    dev = resolve_device(device)
    field = stored.field.to(dev)
    params = {k: p.to(dev) for k, p in stored.params(signal_id).items()}
    mode, what = stored.meta.get("decode"), f"{stored.path / INDEX_NAME}"
    with torch.no_grad():
        if mode == "template":
            template = stored.meta.get("template")
            old = getattr(stored.task.config, "resolution", None)
            if resolution is not None and resolution != old and isinstance(template, dict):
                template = resized(template, int(old or 0), resolution, f"task {task.name!r}")
            batch = task.batch(template_signals(task, template, what)).to(dev)
            signal = task.reconstruct(field_function(field), {k: p[None] for k, p in params.items()}, batch)[0]
        elif mode == "render" and isinstance(task, Renderable):
            signal = task.render(field_function(field), params, views)
        else:
            raise MetaINRError(f"{stored.path}: task {task.name!r} signals cannot be decoded without their data (its "
                               "reconstruction depends on the data and it has nothing to render)")
    return task.write(out, signal.cpu())


def _decode_task(stored: FieldStore, resolution: int | None) -> Task:
    """The store's task, at ``resolution`` where asked (refused where its config has none, or its
    field's dims would change: a frame-valued field's outputs are whole frames)."""
    task = stored.task
    if resolution is None:
        return task
    if resolution < 1:
        raise MetaINRError(f"resolution must be a positive integer, got {resolution}")
    if "resolution" not in {f.name for f in dataclasses.fields(task.config)}:
        raise MetaINRError(f"task {task.name!r} has no resolution to decode at: decode without --resolution")
    try:
        task = build_task({**task.spec(), "resolution": resolution})
        dims = field_dims(task)
    except ValueError as exc:
        raise MetaINRError(f"task {task.name!r} at resolution {resolution}: {exc}") from None
    config = stored.field.config
    for key, value in dims.items():
        if getattr(config, key, value) != value:
            raise MetaINRError(f"task {task.name!r} cannot decode at resolution {resolution}: its field has {key} "
                               f"{getattr(config, key)}, that resolution needs {value}")
    return task


def store_info(store: str | Path) -> dict[str, Any]:
    """The summary of a store (:meth:`FieldStore.info`): signals, mean metrics, bytes, task, learner, steps."""
    return FieldStore(store).info()
