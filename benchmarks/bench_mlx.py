"""One MLX measurement, run in its own process by `benchmarks/run.py`.

    python benchmarks/bench_mlx.py '{"kind": "train", "backend": "mlx", "device": "gpu", ...}'

The twin of `benchmarks/bench_torch.py`. MLX is lazy, so every timed call ends in `mx.eval` of
everything the step produced (loss, parameters, optimizer state); peak memory is
`mx.get_peak_memory()`, MLX's own allocator high-water mark.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from benchmarks.common import (
    Job,
    ceiling_shapes,
    conv3d_flops,
    job_config,
    median,
    report,
)
from t2s_mlx.device import mixed_value_and_grad, select_device
from t2s_mlx.diffusion import GaussianDiffusion, TextBatch
from t2s_mlx.sample import guided_prediction
from t2s_mlx.unet import UNet3D


def timed(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn` (which must `mx.eval` its results) after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# ------------------------------------------------------------------------------------- peak


def measure_peak(job: Job) -> dict[str, Any]:
    """fp32 matmul (2048^2) and conv3d (64 -> 64, 3x3x3) throughput: the device's ceiling."""
    n, shape = ceiling_shapes(job)
    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    matmul = median(timed(lambda: mx.eval(a @ b), 1, job.repeats))
    bsz, c, f, h, w = shape
    x = mx.random.normal((bsz, f, h, w, c))
    weight = mx.random.normal((c, 3, 3, 3, c)) * 0.05
    conv = median(timed(lambda: mx.eval(mx.conv3d(x, weight, padding=1)), 1, job.repeats))
    return {"matmul_gflops": 2 * n**3 / matmul / 1e9,
            "conv3d_gflops": conv3d_flops(shape) / conv / 1e9}


# ------------------------------------------------------------------------------------- ours


def random_text(batch: int, length: int, dim: int) -> TextBatch:
    return TextBatch(mx.random.normal((batch, length, dim)), mx.ones((batch, length)),
                     mx.random.normal((batch, dim)))


def measure_train(job: Job) -> dict[str, Any]:
    """Optimizer steps of the real loss at a fixed batch, fresh inputs every step, compiled as
    the trainer compiles them."""
    config = job_config(job)
    m, d = config.model, config.data
    mx.random.seed(0)
    model = UNet3D(m)
    model.train()
    optimizer = optim.AdamW(learning_rate=1e-4, bias_correction=True)
    optimizer.init(model.trainable_parameters())
    diffusion = GaussianDiffusion(config.diffusion)
    loss_fn = partial(diffusion.loss, model)
    value_and_grad = (mixed_value_and_grad(model, loss_fn, mx.bfloat16)
                      if job.precision == "bf16" else nn.value_and_grad(model, loss_fn))
    state = [model.state, optimizer.state, mx.random.state]
    shape = (job.batch, d.num_frames, d.image_size, d.image_size, m.in_channels)

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x0, states, mask, pooled):
        t = diffusion.sample_timesteps(job.batch)
        loss, grads = value_and_grad(x0, TextBatch(states, mask, pooled), t,
                                     mx.random.normal(x0.shape))
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return loss

    def run() -> None:
        text = random_text(job.batch, config.text.max_length, m.context_dim)
        loss = step(mx.random.normal(shape), text.states, text.mask, text.pooled)
        mx.eval(loss, model.parameters(), optimizer.state)

    mx.reset_peak_memory()
    (first_step_s,) = timed(run, 0, 1)  # tracing and compiling the step: paid once per run
    times = timed(run, max(0, job.warmup - 1), job.repeats)
    return {"step_s": median(times), "times": times, "first_step_s": first_step_s,
            "peak_bytes": int(mx.get_peak_memory())}


def measure_sample(job: Job) -> dict[str, Any]:
    """One guided model evaluation (conditional and unconditional as one doubled batch)."""
    config = job_config(job)
    m, d = config.model, config.data
    model = UNet3D(m)
    model.eval()
    if job.precision == "bf16":
        model.set_dtype(mx.bfloat16)
    x = mx.random.normal((job.batch, d.num_frames, d.image_size, d.image_size, m.in_channels))
    text = random_text(job.batch, config.text.max_length, m.context_dim)
    uncond = random_text(job.batch, config.text.max_length, m.context_dim)
    mx.reset_peak_memory()
    times = timed(lambda: mx.eval(guided_prediction(model, x, 500, text, uncond, 3.0)), 1,
                  job.repeats)
    return {"nfe_s": median(times), "times": times, "peak_bytes": int(mx.get_peak_memory())}


KINDS = {"peak": measure_peak, "train": measure_train, "sample": measure_sample}


def main() -> None:
    job = Job.from_json(sys.argv[1])
    device = select_device(job.device)
    mx.set_default_device(device)
    result = KINDS[job.kind](job)
    report({**result, "device_name": str(device), "version": mx.__version__})


if __name__ == "__main__":
    main()
