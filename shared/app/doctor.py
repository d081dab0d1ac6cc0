"""The plumbing of `doctor` that both backends share: run a check, report instead of raising."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

CheckResult = tuple[str, bool, str]


def check(name: str, fn: Callable[[], str]) -> CheckResult:
    """(name, passed, detail): a doctor reports every failure, it never stops at the first."""
    try:
        return name, True, fn()
    except Exception as e:
        return name, False, f"{type(e).__name__}: {e}"


# The toy step's achieved GFLOP/s over an fp32 2048² matmul's on the same machine (torch, 2-core
# CPU: 44-51%, `benchmarks/profile_step.py`, docs/benchmarks.md): a demo's training time
# follows the machine's matmul speed, which differs up to 3x between machines of one type.
TOY_STEP_MATMUL_SHARE = 0.45


def demo_training_minutes(matmul_gflops: float) -> float:
    """Minutes the README demo's training (the `toy` preset) should take at this matmul speed."""
    from shared.config import preset
    from shared.model.flops import training_flops_per_sample

    toy = preset("toy")
    flops = training_flops_per_sample(toy) * toy.train.batch_size * toy.train.steps
    return flops / (TOY_STEP_MATMUL_SHARE * matmul_gflops * 1e9) / 60


MATMUL_SIZE = 2048


def matmul_gflops(multiply: Callable[[], None], repeats: int = 4) -> float:
    """fp32 GFLOP/s of `multiply`: one MATMUL_SIZE² product, finished on the device when it
    returns; the median of `repeats` calls after a warm-up one."""
    multiply()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        multiply()
        times.append(time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / statistics.median(times) / 1e9


def speed_detail(matmul_gflops: float, threads: int = 0) -> str:
    """`doctor`'s speed line; `threads` 0 = the framework does not say."""
    where = f" ({threads} threads)" if threads else ""
    return (f"fp32 2048² matmul {matmul_gflops:.0f} GFLOP/s{where}; the demo's "
            f"training (t2s-demo) takes about {demo_training_minutes(matmul_gflops):.0f} min "
            "at this speed")
