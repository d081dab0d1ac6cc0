"""Throughput, memory and utilisation of both backends, side by side, with a peer.

    python benchmarks/run.py                     # tiny, toy, small: every backend and device here
    python benchmarks/run.py --quick             # the CI smoke run (tiny; < 2 min on 2 cores)
    python benchmarks/run.py --presets small --backends mlx --json mac.json   # on a Mac
    python benchmarks/run.py --quality runs/demo/run-toy                      # sampler check
    python benchmarks/run.py --quality RUN --reference DIR --json cmp.json   # on real clips

Each figure comes from its own child process (`bench_torch.py` / `bench_mlx.py`), so peak memory
is that measurement's alone (CPU: the child's max RSS; CUDA: max_memory_allocated; MPS: driver
memory; MLX: mx.get_peak_memory). Rows that are compared (ours vs the peer, checkpointing on vs
off) are measured back to back in one invocation, on the same device.

Utilisation: FLOPs per training clip are counted analytically from the config
(`shared.model.flops`: forward + backward = 3 x forward, 4 x with gradient checkpointing's
recomputation); the device's ceiling is the best of an fp32 2048^2 matmul and an fp32
64 -> 64 3x3x3 conv3d, measured in the same run, before and after a device's rows (MFU uses
the mean of the two; the table shows both).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import click

from benchmarks.common import Job, job_config
from benchmarks.measure import Plan, available_targets, measure
from benchmarks.report import header_info, markdown, to_json
from shared.app.cli_common import SCRIPT_SETTINGS, parse_script
from shared.config import ConfigError


def _help(doc: str) -> tuple[str, str]:
    """The docstring's first line as the help, the rest as the epilog, each paragraph printed
    as written (click's "\\b"), as argparse's RawDescriptionHelpFormatter did."""
    first, rest = doc.split("\n", 1)
    return first, "\n\n".join("\b\n" + p for p in rest.strip("\n").split("\n\n"))


_DESCRIPTION, _EPILOG = _help(__doc__)


@click.command(help=_DESCRIPTION, epilog=_EPILOG, context_settings=SCRIPT_SETTINGS)
@click.option("--quick", is_flag=True,
              help="tiny preset, 2 timed steps: a smoke run (< 2 minutes on 2 cores)")
@click.option("--presets", default=None, help="comma list (default: tiny,toy,small)")
@click.option("--backends", default="torch,mlx", help="comma list of torch, mlx")
@click.option("--devices", default=None,
              help="comma list to keep (cpu, cuda, mps, gpu); default: all available")
@click.option("--conv-modes", default="factorized,full")
@click.option("--batch", type=int, default=None, help="clips per step (default per preset)")
@click.option("--repeats", type=int, default=None, help="timed steps (median reported)")
@click.option("--warmup", type=int, default=1)
@click.option("--no-peer", is_flag=True, help="skip diffusers' UNet3DConditionModel")
@click.option("--no-sampling", is_flag=True)
@click.option("--no-checkpointing", is_flag=True, help="skip the gradient-checkpointing row")
@click.option("--no-bf16", is_flag=True, help="fp32 only on GPUs")
@click.option("--latent", is_flag=True,
              help="add latent-mode rows (the UNet on SD-VAE latents: /8 per side, 4 ch)")
@click.option("--threads", type=int, default=0,
              help="torch threads per measurement (default: torch's own choice)")
@click.option("--data", is_flag=True,
              help="also time cached data loading against the training step")
@click.option("--quality", type=click.Path(path_type=Path), default=None, metavar="CHECKPOINT",
              help="a trained torch checkpoint: DPM++ 20 and DDIM 50 against DDIM 500")
@click.option("--reference", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="with --quality: only the sampler comparison on real clips, each "
                   "sampler / steps / eta / guidance scored against DIR's clips of the "
                   "same caption beside the shuffled-caption baseline "
                   "(benchmarks/reference_quality.py); no throughput rows")
@click.option("--reference-captions", type=int, default=8, metavar="N",
              help="with --reference: sample the first N of DIR's captions")
@click.option("--reference-samples", type=int, default=2, metavar="N",
              help="with --reference: clips per caption")
@click.option("--channels-last", type=click.Choice(("auto", "on", "off")), default="auto",
              help="torch activations channels-last (auto: as training runs them, on the "
                   "CPU only); run on and off to see what the layout is worth")
@click.option("--compile", is_flag=True,
              help="add a row for torch's UNet under torch.compile (static shapes), next "
                   "to its eager row; the first step's compilation is reported apart")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="change the presets for every model measured, ours and the peer (e.g. "
                   "--set data.num_frames=8 --set data.image_size=64: a shape the peer "
                   "fits in memory); repeatable")
@click.option("--timeout", type=float, default=1800, help="seconds per measurement")
@click.option("--json", type=click.Path(path_type=Path), default=None,
              help="also write every figure here")
def command(**options: object) -> SimpleNamespace:
    """The parsed options, read downstream as `args.name` (as argparse's Namespace was)."""
    options["overrides"] = list(options["overrides"])  # type: ignore[call-overload]
    return SimpleNamespace(**options)


def parse(argv: list[str] | None = None) -> SimpleNamespace:
    """The command line (default: sys.argv[1:]) as a namespace; --help and usage errors exit
    (0 and 2)."""
    return parse_script(command, argv)  # type: ignore[return-value]


def make_plan(args: SimpleNamespace) -> Plan:
    presets = (args.presets or ("tiny" if args.quick else "tiny,toy,small")).split(",")
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


def reference_main(args: SimpleNamespace) -> int:
    """`--quality RUN --reference DIR`: the recipe table on real clips, printed and in --json."""
    from benchmarks.reference_quality import compare_on_references, format_table
    from shared.data.clips import DataError
    from shared.model.checkpoint import CheckpointError, resolve_checkpoint

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
        from shared.model.checkpoint import CheckpointError, resolve_checkpoint

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
