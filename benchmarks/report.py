"""The benchmark's report: the markdown tables, the comparisons users choose by, the header
(machine, versions, commit) and the JSON of every figure."""

from __future__ import annotations

import importlib.util
import platform
import subprocess
import time
from typing import Any

from benchmarks.measure import ROOT, SAMPLERS, Plan, Row


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
            "GFLOP/clip | s/step | clips/s | GFLOP/s | MFU | % matmul | peak MiB | "
            "s/video DDIM 50 | s/video DPM++ 20 |",
            "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ceiling = ceiling_gflops(result["ceilings"][f"{r.backend}/{r.device}"])
        matmul = result["ceilings"][f"{r.backend}/{r.device}"]["matmul_gflops"]
        ddim = f"{50 * r.nfe_s:.2f}" if r.nfe_s is not None else "–"
        dpm = f"{20 * r.nfe_s:.2f}" if r.nfe_s is not None else "–"
        out.append(
            f"| {r.backend}/{r.device} | {r.model} | {r.preset} | {r.conv_mode} | "
            f"{'on' if r.checkpointing else 'off'} | {r.precision} | {r.batch} | "
            f"{r.params / 1e6:.2f} | {r.train_flops_per_sample / 1e9:.2f} | {r.step_s:.3f} | "
            f"{r.samples_per_s:.2f} | {r.achieved_gflops():.1f} | "
            f"{100 * r.achieved_gflops() / ceiling:.0f}% | "
            f"{100 * r.achieved_gflops() / matmul:.0f}% | {r.peak_bytes / 2**20:.0f} | "
            f"{ddim} | {dpm} |")
    out += ["", "MFU: achieved training GFLOP/s over the device ceiling above (the mean of its "
            "measurements before and after the rows, shown in brackets); % matmul: the same over "
            "the fp32 matmul alone. s/video: "
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
