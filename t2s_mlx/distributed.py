"""Data-parallel training across processes, on mx.distributed's own engine.

The twin of `t2s_torch/distributed.py`. `t2s-mlx train` is launched unchanged by `mlx.launch`
(the ring backend over TCP between Macs or local processes; MPI where installed), which tells
`mx.distributed.init()` who this process is. Gradients are averaged with
`mlx.nn.average_gradients`; everything else a step needs (the data order, noise, timesteps,
caption dropout) is drawn from one seed on every rank, so the ranks agree without talking, and
N ranks of micro-batch B compute what one process computes at batch N x B.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from shared.app.distributed import Distributed


def init_distributed() -> Distributed:
    """Join the group `mlx.launch` set up; a plain run is a group of one."""
    group = mx.distributed.init()
    if group.size() <= 1:
        return Distributed()
    return Distributed(group.rank(), group.size(), group.rank())


def all_mean(value: mx.array, world: Distributed) -> mx.array:
    """The mean of `value` over the ranks (the same number on every rank, so every rank takes
    the same decisions: stop on NaN, log, checkpoint)."""
    if not world.enabled:
        return value
    return mx.distributed.all_sum(value.astype(mx.float32)) / world.world_size


def all_min(value: int, world: Distributed) -> int:
    """The smallest `value` over the ranks (e.g. the micro-batch that fits on every Mac)."""
    if not world.enabled:
        return value
    return int(mx.distributed.all_min(mx.array([value])).item())


def any_rank(flag: bool, world: Distributed) -> bool:
    """Whether `flag` is set on any rank (a stop signal that reached only some processes), so
    that every rank stops at the same step; one tiny all-reduce, and none on one process."""
    if not world.enabled:
        return flag
    return bool(mx.distributed.all_sum(mx.array([float(flag)])).item() > 0)


def barrier(world: Distributed) -> None:
    if world.enabled:
        mx.eval(mx.distributed.all_sum(mx.array([1.0])))


def average_gradients(grads: Any, world: Distributed) -> Any:
    """Gradients averaged over the ranks (one all-reduce per optimizer step, after
    accumulation)."""
    if not world.enabled:
        return grads
    return nn.average_gradients(grads)
