"""The benchmark's measurements: the plan of rows, one child process per figure
(`bench_torch.py` / `bench_mlx.py`), and the rows built from what the children report."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.common import RESULT_PREFIX, Job, job_config
from shared.config import ModelConfig
from shared.data.batching import physical_ram_bytes
from shared.model.flops import num_parameters, training_flops_per_sample

ROOT = Path(__file__).resolve().parents[1]

# Latent mode as the Stable Diffusion VAE makes it: 8x smaller per side, 4 channels. The UNet
# work is all that changes (the clips are encoded once, before training).
VAE_FACTOR, VAE_CHANNELS = 8, 4
DEFAULT_BATCH = {"tiny": 4, "toy": 8, "toy-long": 16, "real": 8, "small": 1, "base": 1}
SAMPLERS = (("ddim", 50), ("dpm++", 20))


@dataclass
class Row:
    """One line of the table: a training (and sampling) measurement of one model on one device."""

    backend: str
    device: str
    model: str  # "ours" | "diffusers UNet3D"
    preset: str
    conv_mode: str
    checkpointing: bool
    precision: str
    batch: int
    params: int
    train_flops_per_sample: int
    step_s: float = float("nan")
    peak_bytes: int = 0
    nfe_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.batch / self.step_s

    def achieved_gflops(self) -> float:
        return self.train_flops_per_sample * self.samples_per_s / 1e9


# --------------------------------------------------------------------------------- children


class MeasurementFailed(RuntimeError):
    """One figure could not be measured; the run goes on and the table's notes say why."""


def run_child(job: Job, timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh process; its last result line is the answer."""
    script = ROOT / "benchmarks" / ("bench_mlx.py" if job.backend == "mlx" else "bench_torch.py")
    try:
        proc = subprocess.run([sys.executable, str(script), job.to_json()], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MeasurementFailed(f"did not finish within --timeout {timeout:.0f} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise MeasurementFailed(failure_reason(proc.returncode, tail))
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def failure_reason(returncode: int, tail: list[str]) -> str:
    """What a failed child's exit says: a SIGKILL without a traceback is the kernel's
    out-of-memory killer far more often than anything else."""
    if returncode == -signal.SIGKILL:
        ram = physical_ram_bytes()
        has = f" (this machine has {ram / 2**30:.0f} GiB)" if ram else ""
        return f"killed by SIGKILL, most likely out of memory{has}; try a smaller --batch"
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}: " + (" | ".join(tail) or "no output")


def available_targets(backends: list[str], devices: list[str] | None) -> list[tuple[str, str]]:
    """(backend, device) pairs this machine can run, as asked."""
    targets = []
    if "torch" in backends and importlib.util.find_spec("torch"):
        import torch

        found = ["cpu"]
        if torch.cuda.is_available():
            found.append("cuda")
        if torch.backends.mps.is_available():
            found.append("mps")
        targets += [("torch", d) for d in found]
    if "mlx" in backends and importlib.util.find_spec("mlx"):
        import mlx.core as mx

        found = ["cpu"] + (["gpu"] if mx.metal.is_available() else [])
        targets += [("mlx", d) for d in found]
    return [t for t in targets if devices is None or t[1] in devices]


# --------------------------------------------------------------------------------- the run


@dataclass
class Plan:
    presets: list[str]
    conv_modes: list[str]
    targets: list[tuple[str, str]]
    repeats: int
    warmup: int
    batch: dict[str, int]
    peer: bool
    sampling: bool
    checkpointing: bool
    bf16_on_gpu: bool
    timeout: float
    ceiling_scale: int = 1
    latent: bool = False
    threads: int = 0
    channels_last: str = "auto"
    compile: bool = False  # add a torch.compile row next to torch's eager one
    # `--set section.field=value` for every model measured (ours and the peer alike).
    overrides: list[str] = field(default_factory=list)


def measure(plan: Plan, log) -> dict[str, Any]:
    """Every row of the plan: ceilings first, then per target and preset the training rows
    (each conv mode; checkpointing on for the first), the peer right after ours, sampling."""
    ceilings, rows, notes = {}, [], []

    def attempt(job: Job, what: str) -> dict[str, Any] | None:
        try:
            return run_child(job, plan.timeout)
        except MeasurementFailed as failure:
            notes.append(f"- {job.backend}/{job.device} {job.preset} {what}: not measured, "
                         f"{failure}")
            log(f"{job.backend}/{job.device}: {what} failed ({failure})")
            return None

    for backend, device in plan.targets:
        log(f"{backend}/{device}: device ceiling (matmul, conv3d)")
        peak = attempt(Job("peak", backend, device, repeats=max(3, plan.repeats),
                           threads=plan.threads, ceiling_scale=plan.ceiling_scale),
                       "device ceiling")
        if peak is None:
            continue
        ceilings[f"{backend}/{device}"] = peak
        rows_before = len(rows)
        precisions = ["no"] + (["bf16"] if plan.bf16_on_gpu and device in ("cuda", "gpu")
                               else [])
        for preset_name in plan.presets:
            batch = plan.batch.get(preset_name, DEFAULT_BATCH.get(preset_name, 1))
            estimate = too_slow(plan, preset_name, batch, peak)
            if estimate:
                notes.append(f"- {backend}/{device} {preset_name}: skipped, {estimate}")
                log(f"{backend}/{device}: {preset_name} skipped ({estimate})")
                continue
            for precision in precisions:
                for i, mode in enumerate(plan.conv_modes):
                    variants = [False, True] if (plan.checkpointing and i == 0) else [False]
                    for ckpt in variants:
                        job = Job("train", backend, device, preset_name, mode, ckpt, precision,
                                  batch, plan.warmup, plan.repeats, plan.threads,
                                  channels_last=plan.channels_last, overrides=plan.overrides)
                        log(f"{backend}/{device}: train {preset_name} {mode}"
                            f"{' +checkpointing' if ckpt else ''} {precision} batch {batch}")
                        result = attempt(job, f"train {mode}{' +checkpointing' * ckpt}")
                        if result is None:
                            continue
                        rows.append(train_row(job, result, peak))
                        if plan.sampling and not ckpt:
                            log(f"{backend}/{device}: sampling step {preset_name} {mode}")
                            sample = attempt(replace(job, kind="sample", batch=1),
                                             f"sampling {mode}")
                            if sample is None:
                                continue
                            rows[-1].nfe_s = sample["nfe_s"]
                            rows[-1].extra["sample_peak_bytes"] = sample["peak_bytes"]
                if plan.compile and backend == "torch":
                    job = Job("train", backend, device, preset_name, plan.conv_modes[0], False,
                              precision, batch, plan.warmup, plan.repeats, plan.threads,
                              channels_last=plan.channels_last, compile=True,
                              overrides=plan.overrides)
                    log(f"{backend}/{device}: train {preset_name} {plan.conv_modes[0]} "
                        f"torch.compile {precision} batch {batch}")
                    result = attempt(job, "train torch.compile")
                    if result is not None:
                        rows.append(train_row(job, result, peak))
                        rows[-1].model = "ours, torch.compile"
                if plan.latent:
                    size = job_config(Job("train", preset=preset_name,
                                          overrides=plan.overrides)).data.image_size
                    job = Job("train", backend, device, preset_name, plan.conv_modes[0], False,
                              precision, batch, plan.warmup, plan.repeats, plan.threads,
                              channels_last=plan.channels_last,
                              overrides=[*plan.overrides,
                                         f"data.image_size={size // VAE_FACTOR}",
                                         f"model.in_channels={VAE_CHANNELS}",
                                         f"model.out_channels={VAE_CHANNELS}"])
                    log(f"{backend}/{device}: train {preset_name} latent "
                        f"({size // VAE_FACTOR}² x {VAE_CHANNELS})")
                    result = attempt(job, "train latent")
                    if result is not None:
                        rows.append(train_row(job, result, peak))
                        rows[-1].model = f"ours, latent /{VAE_FACTOR}"
                if plan.peer and backend == "torch":
                    job = Job("peer", backend, device, preset_name, plan.conv_modes[0], False,
                              precision, batch, plan.warmup, plan.repeats, plan.threads,
                              count_flops=True, overrides=plan.overrides)
                    log(f"{backend}/{device}: peer diffusers UNet3DConditionModel {preset_name}")
                    result = attempt(job, "peer diffusers UNet3DConditionModel")
                    if result is not None:
                        rows.append(peer_row(job, result))
                        config = job_config(job)
                        widths = flop_matched_widths(config.model,
                                                     training_flops_per_sample(config),
                                                     result["train_flops_per_sample"])
                        if widths is not None:
                            job = replace(job, peer_widths=widths)
                            log(f"{backend}/{device}: peer at widths {widths} (about our "
                                "FLOPs per clip)")
                            result = attempt(job, "peer at about our FLOPs")
                            if result is not None:
                                rows.append(peer_row(job, result))
        if len(rows) > rows_before:
            log(f"{backend}/{device}: device ceiling again, after its rows")
            after = attempt(Job("peak", backend, device, repeats=max(3, plan.repeats),
                                threads=plan.threads, ceiling_scale=plan.ceiling_scale),
                            "device ceiling (after)")
            if after is not None:
                ceilings[f"{backend}/{device}"] = bracketed_ceiling(peak, after)
    return {"ceilings": ceilings, "rows": rows, "notes": notes}


def bracketed_ceiling(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The ceiling the rows are measured against: each figure the mean of its measurement
    before and after them, both kept. On a shared machine one busy neighbour halves a 2-core
    CPU's conv3d throughput for minutes, so a single measurement taken before rows that run for
    an hour can swing MFU by 2x; the two ends bracket the conditions the rows ran in."""
    mean = {k: (before[k] + after[k]) / 2 for k in before
            if isinstance(before[k], (int, float)) and isinstance(after.get(k), (int, float))}
    return {**before, **mean, "before": before, "after": after}


def too_slow(plan: Plan, preset_name: str, batch: int, peak: dict[str, float]) -> str | None:
    """Why a preset is not measured on this device: its training steps would not fit the
    per-measurement timeout even at the device's measured ceiling (MLX's Linux CPU build, with
    its reference BLAS, at `small`)."""
    ceiling = max(peak["matmul_gflops"], peak["conv3d_gflops"]) * 1e9
    config = job_config(Job("train", preset=preset_name, overrides=plan.overrides))
    step_s = training_flops_per_sample(config) * batch / ceiling
    total = step_s * (plan.warmup + plan.repeats)
    if total <= plan.timeout:
        return None
    return (f"{plan.warmup + plan.repeats} steps would take at least {total / 60:.0f} min at "
            f"this device's measured ceiling ({ceiling / 1e9:.1f} GFLOP/s); --timeout raises "
            "the limit")


def train_row(job: Job, result: dict[str, Any], peak: dict[str, Any]) -> Row:
    config = job_config(job)
    flops = training_flops_per_sample(config)
    if job.checkpointing:  # the forward runs twice: 4 x forward instead of 3 x
        flops = flops * 4 // 3
    return Row(job.backend, job.device, "ours", job.preset, job.conv_mode, job.checkpointing,
               job.precision, job.batch, num_parameters(config), flops, result["step_s"],
               result["peak_bytes"], extra={"times": result["times"],
                                            "first_step_s": result.get("first_step_s"),
                                            "device_name": result["device_name"],
                                            "version": result["version"]})


def flop_matched_widths(model: ModelConfig, ours: int, peer: int) -> list[int] | None:
    """The peer's widths scaled so that its FLOPs per clip come near ours (FLOPs grow with the
    square of the width), kept multiples of the norm groups; None when that changes nothing.
    At the same widths diffusers' UNet3D does several times our work (a temporal transformer at
    every level, four temporal convs per resnet), so a same-width comparison alone would favour
    us for doing less."""
    scale = (ours / peer) ** 0.5
    g = model.norm_groups
    same = model.level_channels()
    widths = [max(g, round(w * scale / g) * g) for w in same]
    return None if widths == same else widths


def peer_row(job: Job, result: dict[str, Any]) -> Row:
    label = "diffusers UNet3D" + (
        f" {'/'.join(map(str, job.peer_widths))}" if job.peer_widths else "")
    return Row(job.backend, job.device, label, job.preset, "(2+1)D", False,
               job.precision, job.batch, result["params"], result["train_flops_per_sample"],
               result["step_s"], result["peak_bytes"],
               extra={"times": result["times"], "device_name": result["device_name"]})
