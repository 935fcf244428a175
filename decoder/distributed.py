"""torch.distributed plumbing for data-parallel training under torchrun.

`init()` reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
without it everything here is a no-op for a single process. Backend: nccl on CUDA, gloo on CPU.
Each rank draws its own batches, so the global batch is batch_size * world_size.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")


def init() -> DistContext:
    """Join the process group torchrun describes (once); a single process gets the trivial context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def is_rank0() -> bool:
    """Whether this process speaks and writes for the job: rank 0 of a torchrun job, or the only
    process. Valid before `init()` and after `shutdown()` (torchrun's RANK then says)."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def warn(message: str) -> None:
    """One warning line on stderr, from rank 0 only."""
    if is_rank0():
        print(f"warning: {message}", file=sys.stderr, flush=True)


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    if ctx.world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def no_sync(model: torch.nn.Module, ctx: DistContext, last: bool):
    """Skip the gradient all-reduce on every micro-batch but the last of a step."""
    if ctx.world_size == 1 or last:
        return nullcontext()
    return model.no_sync()


def barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's `obj`, in rank order (a list of one without distribution)."""
    if ctx.world_size == 1:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's `obj` on every rank."""
    if ctx.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _reduce(value: float, ctx: DistContext, op) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=op)
    return float(t.item())


def broadcast_float(value: float, ctx: DistContext) -> float:
    """Rank 0's value everywhere (so time-based schedules and budgets agree across ranks)."""
    if ctx.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.broadcast(t, src=0)
    return float(t.item())


def mean_float(value: float, ctx: DistContext) -> float:
    if ctx.world_size == 1:
        return value
    return _reduce(value, ctx, dist.ReduceOp.SUM) / ctx.world_size


def any_true(flag: bool, ctx: DistContext) -> bool:
    if ctx.world_size == 1:
        return flag
    return _reduce(float(flag), ctx, dist.ReduceOp.MAX) > 0


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
