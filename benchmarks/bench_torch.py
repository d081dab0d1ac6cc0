"""One PyTorch measurement, run in its own process by `benchmarks/run.py`.

    python benchmarks/bench_torch.py '{"kind": "train", "preset": "tiny", ...}'

A process per measurement keeps peak memory honest (the CPU figure is the child's max RSS) and
keeps one measurement's allocator state out of the next. The last stdout line is the result as
JSON. The twin of `benchmarks/bench_mlx.py`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import (
    Job,
    ceiling_shapes,
    conv3d_flops,
    job_config,
    median,
    report,
)
from shared.data.batching import max_rss_bytes
from t2s_torch.device import (
    autocast_context,
    optimizer_options,
    prefers_channels_last,
    select_device,
    synchronize,
)
from t2s_torch.diffusion import GaussianDiffusion, TextBatch
from t2s_torch.sample import guided_prediction
from t2s_torch.unet import UNet3D


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn` after `warmup` calls, each synchronised before the clock stops."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    return max_rss_bytes()


# ------------------------------------------------------------------------------------- peak


def measure_peak(job: Job, device: torch.device) -> dict[str, Any]:
    """fp32 matmul (2048^2) and conv3d (64 -> 64, 3x3x3) throughput: the device's ceiling."""
    n, shape = ceiling_shapes(job)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    matmul = median(timed(lambda: a @ b, device, 2, job.repeats))
    conv = torch.nn.Conv3d(64, 64, 3, padding=1, bias=False).to(device)
    x = torch.randn(*shape, device=device)
    per_format = {}
    for name, fmt in (("first", torch.contiguous_format), ("last", torch.channels_last_3d)):
        conv, x = conv.to(memory_format=fmt), x.contiguous(memory_format=fmt)

        def forward(conv=conv, x=x) -> torch.Tensor:
            return conv(x)

        with torch.no_grad():
            seconds = median(timed(forward, device, 1, job.repeats))
        per_format[name] = conv3d_flops(shape) / seconds / 1e9
    # The device's conv3d throughput is its best layout's: channels-last on oneDNN (CPU).
    return {"matmul_gflops": 2 * n**3 / matmul / 1e9,
            "conv3d_gflops": max(per_format.values()),
            "conv3d_gflops_channels_first": per_format["first"],
            "conv3d_gflops_channels_last": per_format["last"]}


# ------------------------------------------------------------------------------------- ours


def random_text(batch: int, length: int, dim: int, device: torch.device) -> TextBatch:
    return TextBatch(torch.randn(batch, length, dim, device=device),
                     torch.ones(batch, length, dtype=torch.long, device=device),
                     torch.randn(batch, dim, device=device))


def our_model(job: Job, device: torch.device) -> torch.nn.Module:
    """Our UNet on `device`, channels-last as the job says (auto: as the trainer runs it)."""
    enabled = {"on": True, "off": False}.get(job.channels_last, prefers_channels_last(device))
    model = UNet3D(job_config(job).model).to(device).use_channels_last(enabled)
    # Static shapes: every step has the same input, and dynamic-shape tracing of the UNet fails
    # in inductor (torch 2.13, CPU: "cannot determine truth value of Relational").
    return torch.compile(model, dynamic=False) if job.compile else model


def measure_train(job: Job, device: torch.device) -> dict[str, Any]:
    """Optimizer steps of the real loss at a fixed batch, fresh inputs every step."""
    config = job_config(job)
    m, d = config.model, config.data
    torch.manual_seed(0)
    model = our_model(job, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **optimizer_options(device))
    diffusion = GaussianDiffusion(config.diffusion, device)
    autocast = autocast_context(device, job.precision)
    shape = (job.batch, m.in_channels, d.num_frames, d.image_size, d.image_size)

    def step() -> None:
        x0 = torch.randn(shape, device=device)
        text = random_text(job.batch, config.text.max_length, m.context_dim, device)
        t = torch.randint(0, config.diffusion.num_train_timesteps, (job.batch,), device=device)
        with autocast:
            loss = diffusion.loss(model, x0, text, t, torch.randn_like(x0))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    # With torch.compile the first step traces and generates code: what a run pays once.
    (first_step_s,) = timed(step, device, 0, 1)
    times = timed(step, device, max(0, job.warmup - 1), job.repeats)
    return {"step_s": median(times), "times": times, "first_step_s": first_step_s,
            "peak_bytes": peak_bytes(device)}


def measure_sample(job: Job, device: torch.device) -> dict[str, Any]:
    """One guided model evaluation (conditional and unconditional as one doubled batch): what
    every sampler step costs, the sampler's own arithmetic being negligible beside it."""
    config = job_config(job)
    m, d = config.model, config.data
    model = our_model(job, device).eval()
    x = torch.randn(job.batch, m.in_channels, d.num_frames, d.image_size, d.image_size,
                    device=device)
    text = random_text(job.batch, config.text.max_length, m.context_dim, device)
    uncond = random_text(job.batch, config.text.max_length, m.context_dim, device)
    autocast = autocast_context(device, job.precision)

    def nfe() -> None:
        with torch.no_grad(), autocast:
            guided_prediction(model, x, 500, text, uncond, 3.0)

    reset_peak(device)
    times = timed(nfe, device, 1, job.repeats)
    return {"nfe_s": median(times), "times": times, "peak_bytes": peak_bytes(device)}


# ------------------------------------------------------------------------------------- peer


def peer_model(job: Job) -> torch.nn.Module:
    """diffusers' UNet3DConditionModel shaped like our preset: the same widths per level (unless
    `job.peer_widths` says otherwise), two resnets per level, cross-attention at our attention
    levels only, the same text width."""
    from diffusers import UNet3DConditionModel

    m = job_config(job).model
    widths = tuple(job.peer_widths or m.level_channels())
    down = tuple("CrossAttnDownBlock3D" if i in m.attention_levels else "DownBlock3D"
                 for i in range(len(widths)))
    up = tuple("CrossAttnUpBlock3D" if i in m.attention_levels else "UpBlock3D"
               for i in reversed(range(len(widths))))
    return UNet3DConditionModel(
        sample_size=job_config(job).data.image_size, in_channels=m.in_channels,
        out_channels=m.out_channels, down_block_types=down, up_block_types=up,
        block_out_channels=widths, layers_per_block=m.num_res_blocks,
        norm_num_groups=m.norm_groups, cross_attention_dim=m.context_dim,
        # One int for every level: its blocks take it as the head width (heads = channels / it),
        # its first temporal transformer as the head width of 8 heads. This gives our head
        # count at the deepest level and in the mid block.
        attention_head_dim=max(1, widths[-1] // m.num_heads))


def measure_peer(job: Job, device: torch.device) -> dict[str, Any]:
    """The same training step on the peer, and its FLOPs per clip counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    config = job_config(job)
    m, d = config.model, config.data
    torch.manual_seed(0)
    model = peer_model(job).to(device).train()
    if job.checkpointing:
        model.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = autocast_context(device, job.precision)
    shape = (job.batch, m.in_channels, d.num_frames, d.image_size, d.image_size)
    length = config.text.max_length

    def loss_of(batch: int) -> torch.Tensor:
        x = torch.randn(batch, *shape[1:], device=device)
        t = torch.randint(0, 1000, (batch,), device=device)
        states = torch.randn(batch, length, m.context_dim, device=device)
        with autocast:
            out = model(x, t, encoder_hidden_states=states).sample
        return torch.nn.functional.mse_loss(out.float(), torch.randn_like(x))

    def step() -> None:
        loss_of(job.batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    times = timed(step, device, job.warmup, job.repeats)
    result = {"step_s": median(times), "times": times, "peak_bytes": peak_bytes(device),
              "params": sum(p.numel() for p in model.parameters())}
    if job.count_flops:
        counter = FlopCounterMode(display=False)
        with counter:
            loss_of(1).backward()
        model.zero_grad(set_to_none=True)
        result["train_flops_per_sample"] = int(counter.get_total_flops())
    return result


KINDS = {"peak": measure_peak, "train": measure_train, "sample": measure_sample,
         "peer": measure_peer}


def main() -> None:
    job = Job.from_json(sys.argv[1])
    if job.threads:
        torch.set_num_threads(job.threads)
    device = select_device(job.device)
    result = KINDS[job.kind](job, device)
    report({**result, "device_name": _device_name(device), "version": torch.__version__})


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
