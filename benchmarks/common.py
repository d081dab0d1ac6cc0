"""What the benchmark's parent and its per-measurement child processes share: the job
description, the config it builds, the device-ceiling workloads, and how a child reports."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field

from shared.config import Config, apply_overrides, preset

# The device ceiling: an fp32 2048^2 matmul and an fp32 64 -> 64 channel 3x3x3 conv3d over a
# (4, 64, 8, 32, 32) video (channels-first shape; MLX takes the same sizes channels-last).
# `--quick` shrinks both (`ceiling_scale` 2: 1024^2 and a batch of 1) to keep the smoke run short
# where MLX's reference-BLAS CPU build runs them at a few GFLOP/s.
MATMUL_SIZE = 2048
CONV_SHAPE = (4, 64, 8, 32, 32)
RESULT_PREFIX = "T2S_BENCH_RESULT "


@dataclass
class Job:
    """One measurement in one child process."""

    kind: str  # peak | train | sample | peer
    backend: str = "torch"  # torch | mlx
    device: str = "cpu"
    preset: str = "tiny"
    conv_mode: str = "factorized"
    checkpointing: bool = False
    precision: str = "no"  # no | bf16 | fp16 (torch autocast; MLX bf16 casts the weights)
    batch: int = 1
    warmup: int = 1
    repeats: int = 3
    threads: int = 0  # 0: the framework's default
    count_flops: bool = False
    ceiling_scale: int = 1  # 1: the full ceiling workloads; 2: the quick run's smaller ones
    channels_last: str = "auto"  # torch activations: auto (the device's default) | on | off
    compile: bool = False  # torch.compile the UNet (torch only: MLX always compiles its step)
    peer_widths: list[int] | None = None  # the peer's block widths (None: the preset's)
    overrides: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))


def job_config(job: Job) -> Config:
    return apply_overrides(preset(job.preset), [
        f"model.conv_mode={job.conv_mode}",
        f"model.gradient_checkpointing={str(job.checkpointing).lower()}", *job.overrides])


def ceiling_shapes(job: Job) -> tuple[int, tuple[int, int, int, int, int]]:
    """The matmul size and the conv3d input shape (channels-first) of this job's ceiling."""
    b, c, f, h, w = CONV_SHAPE
    k = job.ceiling_scale
    return MATMUL_SIZE // k, (max(1, b // k**2), c, f, h, w)


def conv3d_flops(shape: tuple[int, int, int, int, int]) -> int:
    b, c, f, h, w = shape
    return 2 * b * f * h * w * c * c * 27


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def report(result: dict) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)
