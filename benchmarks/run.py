"""Throughput, memory and utilisation of both backends, side by side, with a peer.

    python benchmarks/run.py                     # tiny + small, every backend and device here
    python benchmarks/run.py --quick             # the CI smoke run (tiny; < 2 min on 2 cores)
    python benchmarks/run.py --presets small --backends mlx --json mac.json   # on a Mac
    python benchmarks/run.py --quality runs/demo/run-toy                      # sampler check
    python benchmarks/run.py --quality RUN --reference DIR --json cmp.json   # on real clips

Each figure comes from its own child process (`bench_torch.py` / `bench_mlx.py`), so peak memory
is that measurement's alone (CPU: the child's max RSS; CUDA: max_memory_allocated; MPS: driver
memory; MLX: mx.get_peak_memory). Rows that are compared (ours vs the peer, checkpointing on vs
off) are measured back to back in one invocation, on the same device.

Utilisation: FLOPs per training clip are counted analytically from the config
(`shared.flops`: forward + backward = 3 x forward, 4 x with gradient checkpointing's
recomputation); the device's ceiling is the best of an fp32 2048^2 matmul and an fp32
64 -> 64 3x3x3 conv3d, measured in the same run, before and after a device's rows (MFU uses
the mean of the two; the table shows both).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULT_PREFIX, Job, job_config  # noqa: E402
from shared.batching import physical_ram_bytes  # noqa: E402
from shared.config import ConfigError, ModelConfig  # noqa: E402
from shared.flops import num_parameters, training_flops_per_sample  # noqa: E402

# Latent mode as the Stable Diffusion VAE makes it: 8x smaller per side, 4 channels. The UNet
# work is all that changes (the clips are encoded once, before training).
VAE_FACTOR, VAE_CHANNELS = 8, 4
DEFAULT_BATCH = {"tiny": 4, "toy": 16, "toy-long": 16, "small": 1, "base": 1}
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


# --------------------------------------------------------------------------------- output


def ceiling_gflops(ceiling: dict[str, float]) -> float:
    return max(ceiling["matmul_gflops"], ceiling["conv3d_gflops"])


def plain_row(ours: list[Row], row: Row, same_conv: bool = True) -> Row | None:
    """Our pixel-mode row without checkpointing that `row` is compared with: same backend,
    device, preset and precision (and conv mode unless the peer, which has its own)."""
    def key(r: Row) -> tuple:
        return (r.backend, r.device, r.preset, r.precision, r.conv_mode if same_conv else "")

    return next((o for o in ours if key(o) == key(row) and not o.checkpointing), None)


def comparisons(rows: list[Row]) -> list[str]:
    """The ratios users choose by: ours vs the peer, checkpointing on vs off, samplers."""
    lines = []
    ours = [r for r in rows if r.model == "ours"]
    for r in rows:
        if r.model.startswith("diffusers"):
            mine = plain_row(ours, r, same_conv=False)
            if mine:
                lines.append(
                    f"- {r.backend}/{r.device} {r.preset}: ours ({mine.conv_mode}) trains "
                    f"{mine.samples_per_s / r.samples_per_s:.2f}x the clips/s of diffusers' "
                    f"UNet3DConditionModel at {mine.train_flops_per_sample / 1e9:.0f} vs "
                    f"{r.train_flops_per_sample / 1e9:.0f} GFLOP/clip, with "
                    f"{mine.peak_bytes / max(r.peak_bytes, 1):.2f}x its peak memory")
    for r in rows:
        if r.model.startswith("ours, latent"):
            pixel = plain_row(ours, r)
            if pixel:
                lines.append(
                    f"- {r.backend}/{r.device} {r.preset}: latent mode trains "
                    f"{r.samples_per_s / pixel.samples_per_s:.0f}x the clips/s of pixel mode "
                    f"({r.train_flops_per_sample / 1e9:.0f} vs "
                    f"{pixel.train_flops_per_sample / 1e9:.0f} GFLOP/clip; the VAE's one-off "
                    "encoding excluded: benchmarks/vae.py)")
    for r in rows:
        if r.model == "ours, torch.compile":
            eager = plain_row(ours, r)
            if eager:
                lines.append(
                    f"- {r.backend}/{r.device} {r.preset}: torch.compile trains "
                    f"{r.samples_per_s / eager.samples_per_s:.2f}x the clips/s of eager mode "
                    f"with {r.peak_bytes / max(eager.peak_bytes, 1):.2f}x its peak memory; its "
                    f"first step (compilation) took {r.extra['first_step_s']:.0f} s")
    for r in ours:
        if r.checkpointing:
            off = plain_row(ours, r)
            if off:
                lines.append(
                    f"- {r.backend}/{r.device} {r.preset}: gradient checkpointing takes "
                    f"{off.peak_bytes / max(r.peak_bytes, 1):.2f}x less peak memory at "
                    f"{100 * (r.step_s / off.step_s - 1):+.0f}% step time")
    for r in ours:
        if r.nfe_s is not None:
            (a, sa), (b, sb) = SAMPLERS
            lines.append(f"- {r.backend}/{r.device} {r.preset} {r.conv_mode}: {a} {sa} steps "
                         f"{sa * r.nfe_s:.2f} s/video, {b} {sb} steps {sb * r.nfe_s:.2f} "
                         f"s/video ({sa / sb:.1f}x fewer model evaluations)")
    return lines


def markdown(result: dict[str, Any], header: dict[str, str]) -> str:
    out = ["# text2sign benchmark", ""]
    out += [f"- {k}: {v}" for k, v in header.items()]
    out += ["", "## Device ceilings (fp32, measured in this run)", "",
            "| backend/device | matmul 2048² GFLOP/s | conv3d 64→64 3³ GFLOP/s |",
            "|---|---:|---:|"]
    for name, c in result["ceilings"].items():
        out.append(f"| {name} | {_bracket(c, 'matmul_gflops')} | {_bracket(c, 'conv3d_gflops')} |")
    out += ["", "## Training and sampling", "",
            "| backend/device | model | preset | conv | ckpt | precision | batch | params (M) | "
            "GFLOP/clip | s/step | clips/s | GFLOP/s | MFU | peak MiB | s/video DDIM 50 | "
            "s/video DPM++ 20 |",
            "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ceiling = ceiling_gflops(result["ceilings"][f"{r.backend}/{r.device}"])
        ddim = f"{50 * r.nfe_s:.2f}" if r.nfe_s is not None else "–"
        dpm = f"{20 * r.nfe_s:.2f}" if r.nfe_s is not None else "–"
        out.append(
            f"| {r.backend}/{r.device} | {r.model} | {r.preset} | {r.conv_mode} | "
            f"{'on' if r.checkpointing else 'off'} | {r.precision} | {r.batch} | "
            f"{r.params / 1e6:.2f} | {r.train_flops_per_sample / 1e9:.2f} | {r.step_s:.3f} | "
            f"{r.samples_per_s:.2f} | {r.achieved_gflops():.1f} | "
            f"{100 * r.achieved_gflops() / ceiling:.0f}% | {r.peak_bytes / 2**20:.0f} | "
            f"{ddim} | {dpm} |")
    out += ["", "MFU: achieved training GFLOP/s over the device ceiling above (the mean of its "
            "measurements before and after the rows, shown in brackets). s/video: "
            "steps x one guided model evaluation (batch 1, conditional + unconditional). Peak "
            "memory on CPU is the measuring process's max RSS.", ""]
    extra = comparisons(result["rows"]) + result.get("notes", [])
    if extra:
        out += ["## Comparisons", "", *extra, ""]
    return "\n".join(out)


def _bracket(ceiling: dict[str, Any], key: str) -> str:
    """`mean (before / after)` when the ceiling was measured at both ends of its rows."""
    if "before" not in ceiling:
        return f"{ceiling[key]:.1f}"
    return f"{ceiling[key]:.1f} ({ceiling['before'][key]:.1f} / {ceiling['after'][key]:.1f})"


def header_info(plan: Plan) -> dict[str, str]:
    info = {"date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.system()} {platform.machine()}, {platform.processor() or ''}"
                       f" {_cpu_count()} CPUs".strip(),
            "python": platform.python_version(), "commit": _commit()}
    for name in ("torch", "mlx", "diffusers"):
        if importlib.util.find_spec(name):
            from importlib.metadata import version

            info[name] = version(name)
    info["repeats"] = f"median of {plan.repeats} after {plan.warmup} warm-up step(s)"
    info["torch channels-last"] = plan.channels_last + (
        " (on for cpu, off for cuda / mps)" if plan.channels_last == "auto" else "")
    if plan.overrides:
        info["overrides (every model)"] = " ".join(plan.overrides)
    if plan.ceiling_scale > 1:
        info["ceiling"] = "quick: 1024² matmul and a batch-1 conv3d (smaller than the full run)"
    return info


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except OSError:
        return "?"


def to_json(result: dict[str, Any], header: dict[str, str]) -> dict[str, Any]:
    rows = []
    for r in result["rows"]:
        ceiling = ceiling_gflops(result["ceilings"][f"{r.backend}/{r.device}"])
        rows.append({**{k: v for k, v in vars(r).items() if k != "extra"}, **r.extra,
                     "samples_per_s": r.samples_per_s, "achieved_gflops": r.achieved_gflops(),
                     "mfu": r.achieved_gflops() / ceiling})
    return {"header": header, "ceilings": result["ceilings"], "rows": rows,
            "notes": result.get("notes", [])}


# --------------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--quick", action="store_true",
                   help="tiny preset, 2 timed steps: a smoke run (< 2 minutes on 2 cores)")
    p.add_argument("--presets", default=None, help="comma list (default: tiny,small)")
    p.add_argument("--backends", default="torch,mlx", help="comma list of torch, mlx")
    p.add_argument("--devices", default=None,
                   help="comma list to keep (cpu, cuda, mps, gpu); default: all available")
    p.add_argument("--conv-modes", default="factorized,full")
    p.add_argument("--batch", type=int, default=None, help="clips per step (default per preset)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-peer", action="store_true", help="skip diffusers' UNet3DConditionModel")
    p.add_argument("--no-sampling", action="store_true")
    p.add_argument("--no-checkpointing", action="store_true",
                   help="skip the gradient-checkpointing row")
    p.add_argument("--no-bf16", action="store_true", help="fp32 only on GPUs")
    p.add_argument("--latent", action="store_true",
                   help="add latent-mode rows (the UNet on SD-VAE latents: /8 per side, 4 ch)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per measurement (default: torch's own choice)")
    p.add_argument("--data", action="store_true",
                   help="also time cached data loading against the training step")
    p.add_argument("--quality", type=Path, default=None, metavar="CHECKPOINT",
                   help="a trained torch checkpoint: DPM++ 20 and DDIM 50 against DDIM 500")
    p.add_argument("--reference", type=Path, default=None, metavar="DIR",
                   help="with --quality: only the sampler comparison on real clips, each "
                        "sampler / steps / eta / guidance scored against DIR's clips of the "
                        "same caption beside the shuffled-caption baseline "
                        "(benchmarks/reference_quality.py); no throughput rows")
    p.add_argument("--reference-captions", type=int, default=8, metavar="N",
                   help="with --reference: sample the first N of DIR's captions")
    p.add_argument("--reference-samples", type=int, default=2, metavar="N",
                   help="with --reference: clips per caption")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="torch activations channels-last (auto: as training runs them, on the "
                        "CPU only); run on and off to see what the layout is worth")
    p.add_argument("--compile", action="store_true",
                   help="add a row for torch's UNet under torch.compile (static shapes), next "
                        "to its eager row; the first step's compilation is reported apart")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE",
                   help="change the presets for every model measured, ours and the peer (e.g. "
                        "--set data.num_frames=8 --set data.image_size=64: a shape the peer "
                        "fits in memory); repeatable")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    presets = (args.presets or ("tiny" if args.quick else "tiny,small")).split(",")
    targets = available_targets(args.backends.split(","),
                                args.devices.split(",") if args.devices else None)
    if not targets:
        raise SystemExit("no backend available: install text2sign[torch] and/or text2sign[mlx]")
    batch = {p: args.batch for p in presets} if args.batch else {}
    for name in presets:  # a bad preset or --set fails here, not in every child
        try:
            job_config(Job("train", preset=name, overrides=args.overrides)).validate()
        except ConfigError as error:
            raise SystemExit(f"--presets / --set: {error}") from None
    return Plan(presets, args.conv_modes.split(","), targets,
                args.repeats or (2 if args.quick else 3), args.warmup, batch,
                peer=not args.no_peer, sampling=not args.no_sampling,
                checkpointing=not args.no_checkpointing, bf16_on_gpu=not args.no_bf16,
                timeout=args.timeout, ceiling_scale=2 if args.quick else 1,
                latent=args.latent, threads=args.threads, channels_last=args.channels_last,
                compile=args.compile, overrides=args.overrides)


def reference_main(args: argparse.Namespace) -> int:
    """`--quality RUN --reference DIR`: the recipe table on real clips, printed and in --json."""
    from benchmarks.reference_quality import compare_on_references, format_table
    from shared.checkpoint import CheckpointError, resolve_checkpoint
    from shared.data import DataError

    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    try:
        resolve_checkpoint(args.quality)
        report = compare_on_references(args.quality, args.reference, log,
                                       max_captions=args.reference_captions,
                                       samples=args.reference_samples)
    except (CheckpointError, DataError, ConfigError) as error:
        raise SystemExit(f"--quality / --reference: {error}") from None
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    log(f"done in {time.perf_counter() - start:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.reference:
        if not args.quality:
            raise SystemExit("--reference needs --quality RUN: the checkpoint to sample")
        return reference_main(args)
    plan = make_plan(args)
    if args.quality:  # before the long measurements, not after them
        from shared.checkpoint import CheckpointError, resolve_checkpoint

        try:
            resolve_checkpoint(args.quality)
        except CheckpointError as error:
            raise SystemExit(f"--quality: {error}") from None
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    result = measure(plan, log)
    extras = []
    if args.data:
        from benchmarks.loading import data_notes

        extras.append(("data loading", lambda: data_notes(plan.presets, result["rows"], log,
                                                             plan.overrides)))
    if args.quality:
        from benchmarks.quality import quality_notes, text_following_notes

        extras.append(("sampler quality", lambda: quality_notes(args.quality, log)))
        extras.append(("text following", lambda: text_following_notes(args.quality, log)))
    for what, notes in extras:  # a failure here must not lose the table measured above
        try:
            result["notes"] += notes()
        except Exception as error:  # noqa: BLE001 - reported in the table, not raised
            result["notes"].append(f"- {what}: not measured, {type(error).__name__}: {error}")
    header = header_info(plan)
    print(markdown(result, header))
    if args.json:
        args.json.write_text(json.dumps(to_json(result, header), indent=2))
    log(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
