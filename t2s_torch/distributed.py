"""Data-parallel training across processes, on torch.distributed's own engine.

`t2s-torch train` is launched unchanged by `torchrun` or `accelerate launch`: both set RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and this module reads them. Gradients are
averaged by DistributedDataParallel (nccl on CUDA, gloo on CPU); everything else a step needs
(the data order, noise, timesteps, caption dropout) is drawn from one seed on every rank, so the
ranks agree without talking, and N ranks of micro-batch B compute what one process computes at
batch N x B.
"""

from __future__ import annotations

import atexit
import contextlib
import os

import torch
import torch.distributed as dist

from shared.app.distributed import Distributed


def launched_world() -> Distributed:
    """What the launcher (torchrun, accelerate launch) says about this process, or one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group the launcher set up (once per process); CUDA ranks take the GPU
    of their local rank, as `torchrun --nproc_per_node=N` expects."""
    world = launched_world()
    if not world.enabled:
        return world
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=backend)
        atexit.register(dist.destroy_process_group)
    return world


def rank_device(device: torch.device, world: Distributed) -> torch.device:
    """One GPU per process: rank r on a node uses cuda:local_rank."""
    if world.enabled and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def all_mean(value: torch.Tensor, world: Distributed) -> torch.Tensor:
    """The mean of `value` over the ranks (the same number on every rank, so every rank takes
    the same decisions: stop on NaN, log, checkpoint)."""
    if not world.enabled:
        return value
    value = value.detach().clone().float()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world.world_size


def all_min(value: int, world: Distributed, device: torch.device) -> int:
    """The smallest `value` over the ranks (e.g. the micro-batch that fits on every GPU)."""
    if not world.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def any_rank(flag: bool, world: Distributed, device: torch.device) -> bool:
    """Whether `flag` is set on any rank (a stop signal that reached only some processes), so
    that every rank stops at the same step; one tiny all-reduce, and none on one process."""
    if not world.enabled:
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def barrier(world: Distributed) -> None:
    if world.enabled:
        dist.barrier()


def no_sync(model: torch.nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """DDP's `no_sync` when `skip` (a micro-step that is not the last of its optimizer step:
    gradients only accumulate locally, and the all-reduce happens once, on the last)."""
    if skip and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def wrap(model: torch.nn.Module, world: Distributed,
         device: torch.device) -> torch.nn.Module:
    """The module the training step calls: DDP around `model` on several ranks, else itself."""
    if not world.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
