"""Many processes, one run: torch.distributed as torchrun launches it, without the DDP wrapper.

Every process holds the whole learner and takes a disjoint, contiguous shard of each meta-batch;
its meta-gradient (a mean over its shard) is weighted by the shard's share and summed across
processes in ONE flat all-reduce, so every process applies the same update to the same
parameters, and N processes with global meta-batch B follow one process with meta-batch B. This
works for second-order MAML too (DDP's hooks cannot see a double backward; we only reduce the
gradients a learner returns). Rank 0 alone touches the run directory; what it reads there (a
resumed checkpoint) and decides (validation scores, stopping) reaches the others as broadcasts of
plain tensors (names travel as JSON bytes: nothing is pickled).

``gloo`` on CPU, ``nccl`` on CUDA (each process on ``cuda:LOCAL_RANK``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import MetaINRError


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the process that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def many(self) -> bool:
        """True when there is more than one process to talk to."""
        return self.size > 1


def launched() -> bool:
    """True when torchrun (or another launcher setting its variables) started more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def current_world() -> World:
    """This process's :class:`World` (one process unless a process group is up)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0") or 0))


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes in the environment (once); returns (world, the
    device this process computes on: ``cuda:LOCAL_RANK`` for CUDA, else ``device``). Without a
    launcher (or with one process) nothing is initialised."""
    if not launched():
        return World(), device
    if not dist.is_available():
        raise MetaINRError("this torch build has no torch.distributed: run one process")
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise MetaINRError(f"process with LOCAL_RANK {local} has no GPU ({torch.cuda.device_count()} visible): use "
                               "--nproc-per-node at most the GPU count")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in os.environ]
        if missing:
            raise MetaINRError(f"WORLD_SIZE is set but {', '.join(missing)} not: launch with torchrun")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return current_world(), device


def close_world() -> None:
    """Leave the process group, if one is up."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, world: World) -> slice:
    """The contiguous part of ``n`` items this process takes (sizes differ by at most one; a
    process may get none when ``n`` is smaller than the world)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (1 if world.rank < extra else 0))


def _comm_device(reference: torch.device) -> torch.device:
    return reference if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_mean(stats: Mapping[str, Tensor], grads: Mapping[str, Tensor], count: int, total: int,
                    world: World) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The meta-batch mean of per-shard means: every process passes its shard's ``stats`` (0-dim)
    and ``grads`` (means over ``count`` of the ``total`` signals) and gets the same global ones."""
    if not world.many:
        return dict(stats), dict(grads)
    names = list(grads)
    any_grad = next(iter(grads.values()))
    comm = _comm_device(any_grad.device)
    weight = count / total
    dtype = any_grad.dtype  # the gradients' own precision (float64 runs stay float64)
    flat = torch.cat([*(grads[n].detach().reshape(-1).to(comm, dtype) * weight for n in names),
                      *(stats[k].detach().reshape(1).to(comm, dtype) * weight for k in stats)])
    dist.all_reduce(flat)
    out, at = {}, 0
    for n in names:
        g = grads[n]
        out[n] = flat[at:at + g.numel()].view(g.shape).to(g.device, g.dtype)
        at += g.numel()
    new_stats = {k: flat[at + i].to(v.device, v.dtype) for i, (k, v) in enumerate(stats.items())}
    return new_stats, out


def broadcast_floats(values: Sequence[float], world: World, device: torch.device) -> list[float]:
    """Rank 0's ``values`` on every process (others pass placeholders of the same length)."""
    if not world.many:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device(device))
    dist.broadcast(t, 0)
    return t.tolist()


def any_process(flags: Sequence[bool], world: World, device: torch.device) -> list[bool]:
    """Each flag OR-ed over the processes (e.g. "stop now": one process's reason stops all)."""
    if not world.many:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], dtype=torch.float32, device=_comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def broadcast_tensors(tensors: Mapping[str, Tensor] | None, world: World, device: torch.device) -> dict[str, Tensor]:
    """Rank 0's ``tensors`` (name -> tensor) on every process, on the CPU. Names, shapes and dtypes
    go first as JSON bytes; other processes pass None."""
    if not world.many:
        return dict(tensors or {})
    comm = _comm_device(device)
    header = b""
    if world.main:
        assert tensors is not None
        header = json.dumps([[n, list(t.shape), str(t.dtype).removeprefix("torch.")] for n, t in tensors.items()]
                            ).encode()
    size = torch.tensor([len(header)], dtype=torch.int64, device=comm)
    dist.broadcast(size, 0)
    raw = (torch.frombuffer(bytearray(header), dtype=torch.uint8).to(comm) if world.main
           else torch.empty(int(size), dtype=torch.uint8, device=comm))
    dist.broadcast(raw, 0)
    out = {}
    for name, shape, dtype in json.loads(bytes(raw.cpu().tolist()).decode()):
        t = (tensors[name].detach().to(comm).contiguous() if world.main  # type: ignore[index]
             else torch.empty(shape, dtype=getattr(torch, dtype), device=comm))
        dist.broadcast(t, 0)
        out[name] = t.cpu()
    return out


def barrier(world: World) -> None:
    """Wait until every process gets here."""
    if world.many:
        dist.barrier()
