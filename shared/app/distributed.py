"""Data-parallel bookkeeping both backends share: who this process is among the training
processes, which rows of a global draw are its own, and how a run resumes on another number of
processes. The engines (torch.distributed, mx.distributed) stay in the backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, samples, logs and progress bars."""
        return self.rank == 0


def shard(global_rows: T, world: Distributed) -> T:
    """This rank's rows of an array drawn for the whole global batch (numpy, torch or MLX).

    `BatchIterator` gives rank r the clips r, r + N, r + 2N, ... of each global batch, so taking
    the same stride here pairs every clip with the draw one process would have given it.
    """
    return global_rows[world.rank::world.world_size]


def regroup(micro_batch: int, grad_accum: int, saved_world: int,
            world: Distributed) -> tuple[int, str | None]:
    """Gradient accumulation for a run resumed on `world` after `saved_world` processes: the
    global batch (clips per optimizer step) stays what it was when it divides evenly; otherwise
    the accumulation is kept and the message says how the global batch changed."""
    if saved_world == world.world_size:
        return grad_accum, None
    clips = micro_batch * grad_accum * saved_world
    per_pass = micro_batch * world.world_size
    if clips % per_pass:
        return grad_accum, (
            f"resumed on {world.world_size} process(es) from a run on {saved_world}: "
            f"{clips} clips per step cannot be kept at micro-batch {micro_batch}; the step now "
            f"takes {per_pass * grad_accum} clips")
    return clips // per_pass, None


def stream_start(step: int, clips_per_step: int, micro_batch: int, world: Distributed) -> int:
    """The per-rank batch index where a resumed run's data stream continues.

    Counted in clips, so a run resumed on another number of processes picks up where the
    global stream stopped (with N unchanged: `step x grad_accum`, the exact stream)."""
    return step * clips_per_step // (micro_batch * world.world_size)
