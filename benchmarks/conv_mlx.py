"""MLX conv micro-benchmark: every ResBlock conv shape of a preset, old path vs new.

    python benchmarks/conv_mlx.py --json mac-conv.json            # on a Mac: small, batch 4
    python benchmarks/conv_mlx.py --frames 8 --size 64 --batch 1 --clock cpu   # a shared CPU

Why: `t2s_mlx/kernels/fast_conv.py` runs the UNet's convs as 2-D convs and matmuls because
MLX's Metal backend is reported 2-5x faster there than in `mx.conv3d` (ml-explore/mlx issue
3625, PRs 3785 and 2195). This measures that claim per shape on the machine at hand, forward
and forward + backward, so the choice of path rests on numbers, not on the report.

Shapes: the preset's UNet is built and walked; each ResBlock contributes its convs at its
level's resolution — factorized mode a spatial (1, 3, 3) conv and a temporal (3, 1, 1) conv per
conv1 / conv2, full mode a 3x3x3 conv, and a 1x1x1 skip where the width changes. Equal shapes
are measured once and counted (`count`, uses per UNet forward).

Paths: `conv3d` is the old one (`nn.Conv3d`, `mx.conv3d`); `fast` is `FastConv3d`, what the UNet
runs now; full-mode shapes add `taps_in`, PR 3785's decomposition as written there (kD 2-D
convs over shifted input frames, accumulated), the alternative to `fast`'s stacked taps. Each
path is `mx.compile`d, as the training step is, warmed up, then timed `--repeats` times with
the paths interleaved (so drift in a shared machine's load hits them alike), at least `--repeats`
calls and at least `--min-seconds` each; the figure is the best call (the cost without other
processes' interference; the JSON has the medians too). `speedup` is conv3d time / fast time
(> 1: the new path is faster).

MLX's Linux CPU build is a correctness proxy here, not a speed one: its CPU convs are im2col +
BLAS for both 2-D and 3-D, so the 2-D paths can only tie or win by layout, while the reason for
them (Metal's Winograd and 2-D kernels) exists only on Apple Silicon.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import click
import mlx.core as mx
import mlx.nn as nn

from shared.app.cli_common import SCRIPT_SETTINGS, run_script, spread_nargs
from shared.config import ModelConfig, preset
from t2s_mlx.kernels.fast_conv import FastConv3d
from t2s_mlx.unet import FactorizedConv3d, ResBlock3D, UNet3D

KERNELS = {"spatial": ((1, 3, 3), (0, 1, 1)), "temporal": ((3, 1, 1), (1, 0, 0)),
           "pointwise": ((1, 1, 1), (0, 0, 0)), "full": ((3, 3, 3), (1, 1, 1))}


@dataclass(frozen=True)
class ConvShape:
    """One conv as a ResBlock runs it: kernel kind, widths, and the level's square size."""

    kind: str  # spatial | temporal | pointwise | full
    in_ch: int
    out_ch: int
    size: int


def resblock_levels(model: UNet3D) -> list[tuple[ResBlock3D, int]]:
    """Every ResBlock of the UNet with its level (0 = full resolution)."""
    last = model.config.num_levels - 1
    out = [(r, i) for i, block in enumerate(model.down_blocks) for r in block.resnets]
    out += [(r, last) for r in model.mid_block.resnets]
    out += [(r, last - j) for j, block in enumerate(model.up_blocks) for r in block.resnets]
    return out


def conv_shapes(config: ModelConfig, size: int) -> dict[ConvShape, int]:
    """The distinct ResBlock conv shapes of a model at input size `size`, with their counts."""
    counts: dict[ConvShape, int] = {}
    for resnet, level in resblock_levels(UNet3D(config)):
        side = size // 2 ** level
        convs = []
        for conv in (resnet.conv1, resnet.conv2):
            parts = [("spatial", conv.spatial), ("temporal", conv.temporal)] if isinstance(
                conv, FactorizedConv3d) else [("full", conv)]
            convs += parts
        if isinstance(resnet.skip, nn.Conv3d):
            convs.append(("pointwise", resnet.skip))
        for kind, conv in convs:
            key = ConvShape(kind, conv.weight.shape[-1], conv.weight.shape[0], side)
            counts[key] = counts.get(key, 0) + 1
    return counts


def taps_in_conv(x: mx.array, weight: mx.array, padding: tuple[int, int, int]) -> mx.array:
    """PR 3785's decomposition for any batch: kD 2-D convs over frame-shifted input views."""
    b, f, h, w, c = x.shape
    o, kf = weight.shape[:2]
    xp = mx.pad(x, [(0, 0), (padding[0], padding[0]), (0, 0), (0, 0), (0, 0)])
    frames_out = f + 2 * padding[0] - kf + 1
    out = None
    for k in range(kf):
        y = mx.conv2d(xp[:, k:k + frames_out].reshape(b * frames_out, h, w, c), weight[:, k],
                      padding=padding[1:])
        out = y if out is None else out + y
    return out.reshape(b, frames_out, *out.shape[1:])


def paths(shape: ConvShape) -> dict[str, Callable[[FastConv3d, mx.array], mx.array]]:
    """name -> conv(module, x) for the paths measured on this shape."""
    out = {"conv3d": FastConv3d.reference_call, "fast": FastConv3d.__call__}
    if shape.kind == "full":
        out["taps_in"] = lambda m, x: taps_in_conv(x, m.weight, m.padding) + m.bias
    return out


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], None], warmup: int,
          clock: Callable[[], float] = time.perf_counter) -> Callable[[], float]:
    for _ in range(warmup):
        fn()

    def once() -> float:
        start = clock()
        fn()
        return clock() - start
    return once


def measure(shape: ConvShape, batch: int, frames: int, warmup: int, repeats: int,
            min_seconds: float, clock: str = "wall") -> dict[str, dict[str, float]]:
    """Seconds per path, the best and the median of the calls: `forward` (conv) and `train`
    (conv + gradients of x, weight and bias). At least `repeats` calls each, more (up to 20x)
    until each has run `min_seconds`: the smallest shapes take a millisecond or less, where
    one burst of another process's work would decide a median of five. `clock` "cpu" times
    the process's CPU seconds (all its threads) instead of wall seconds: the work itself, for
    a CPU shared with other jobs, where waiting for a core would swamp the wall time."""
    kernel, padding = KERNELS[shape.kind]
    mx.random.seed(0)
    conv = FastConv3d(shape.in_ch, shape.out_ch, kernel, padding=padding)
    x = mx.random.normal((batch, frames, shape.size, shape.size, shape.in_ch))
    cot = mx.random.normal((batch, frames, shape.size, shape.size, shape.out_ch))
    params = conv.trainable_parameters()
    mx.eval(x, cot, params)
    runners: dict[tuple[str, str], Callable[[], float]] = {}
    for name, call in paths(shape).items():
        def apply(p, inp, _call=call):
            conv.update(p)
            return _call(conv, inp)

        forward = mx.compile(apply)
        train = mx.compile(mx.grad(lambda p, inp, _apply=apply: (_apply(p, inp) * cot).sum(),
                                   argnums=(0, 1)))
        runners[name, "forward"] = timed(lambda f=forward: mx.eval(f(params, x)), warmup,
                                         CLOCKS[clock])
        runners[name, "train"] = timed(lambda g=train: mx.eval(g(params, x)), warmup,
                                       CLOCKS[clock])
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    calls = 0
    while calls < repeats or (calls < 20 * repeats
                              and min(sum(v) for v in times.values()) < min_seconds):
        for key, run in runners.items():
            times[key].append(run())
        calls += 1
    out: dict[str, dict[str, float]] = {}
    for (name, what), values in times.items():
        out.setdefault(name, {})[what] = min(values)
        out[name][what + "_median"] = statistics.median(values)
        out[name]["calls"] = len(values)
    return out


@click.command(help=__doc__.split("\n\n")[0], context_settings=SCRIPT_SETTINGS)
@click.option("--preset", default="small")
@click.option("--modes", type=click.Choice(["factorized", "full"]), multiple=True,
              default=["factorized", "full"], metavar="{factorized,full} [...]",
              help="one or more (default: both)")
@click.option("--batch", type=int, default=None,
              help="clips per conv call (default: the preset's training batch)")
@click.option("--frames", type=int, default=None, help="default: the preset's")
@click.option("--size", type=int, default=None,
              help="level-0 side in pixels (default: the preset's model size)")
@click.option("--warmup", type=int, default=1)
@click.option("--repeats", type=int, default=5, help="calls per path, at least")
@click.option("--min-seconds", type=float, default=1.0,
              help="per path, more calls (up to 20x --repeats) until it has run this")
@click.option("--clock", type=click.Choice(sorted(CLOCKS)), default="wall",
              help="wall seconds (default), or the process's CPU seconds: for a CPU "
                   "shared with other jobs")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None,
              help="default: MLX's (the GPU on Apple Silicon)")
@click.option("--json", type=click.Path(path_type=Path), default=None)
def command(**options: object) -> int:
    return run(SimpleNamespace(**options))


def main(argv: list[str] | None = None) -> int:
    """`--modes a b` as argparse's nargs="+" read it: one or more values after one flag."""
    return run_script(command, spread_nargs(sys.argv[1:] if argv is None else argv, "--modes"))


def run(args: SimpleNamespace) -> int:
    config = preset(args.preset)
    batch = args.batch or config.train.batch_size
    frames = args.frames or config.data.num_frames
    size = args.size or config.data.model_size
    if args.device:
        mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)
    rows = []
    print(f"MLX {mx.__version__} on {mx.default_device()} ({platform.platform()}); preset "
          f"{args.preset}, batch {batch}, {frames} frames, level-0 size {size}; best of "
          f">= {args.repeats} calls, {args.clock} ms", flush=True)
    print(f"{'mode':10} {'kind':9} {'in':>4} {'out':>4} {'size':>4} {'n':>2} | "
          f"{'fwd old':>8} {'fwd new':>8} {'x':>5} | {'f+b old':>8} {'f+b new':>8} {'x':>5}"
          f" | taps_in f / f+b", flush=True)
    for mode in args.modes:
        shapes = conv_shapes(replace(config.model, conv_mode=mode), size)
        for shape, count in sorted(shapes.items(), key=lambda kv: (kv[0].kind, -kv[0].size,
                                                                   kv[0].in_ch, kv[0].out_ch)):
            result = measure(shape, batch, frames, args.warmup, args.repeats,
                             args.min_seconds, args.clock)
            row = {"mode": mode, **asdict(shape), "count": count, "seconds": result,
                   "speedup": {what: result["conv3d"][what] / result["fast"][what]
                               for what in ("forward", "train")}}
            rows.append(row)
            old, new = result["conv3d"], result["fast"]
            alt = result.get("taps_in")
            print(f"{mode:10} {shape.kind:9} {shape.in_ch:4} {shape.out_ch:4} {shape.size:4} "
                  f"{count:2} | {1e3 * old['forward']:8.1f} {1e3 * new['forward']:8.1f} "
                  f"{row['speedup']['forward']:5.2f} | {1e3 * old['train']:8.1f} "
                  f"{1e3 * new['train']:8.1f} {row['speedup']['train']:5.2f}"
                  + (f" | {1e3 * alt['forward']:.1f} / {1e3 * alt['train']:.1f}" if alt else ""),
                  flush=True)
    totals = summarize(rows)
    for mode, total in totals.items():
        print(f"{mode}: all ResBlock convs of one UNet forward (count-weighted): forward "
              f"{total['forward']:.2f}x, forward + backward {total['train']:.2f}x "
              f"(conv3d / fast)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "mlx": mx.__version__, "device": str(mx.default_device()),
            "platform": platform.platform(), "machine": platform.machine(),
            "preset": args.preset, "batch": batch, "frames": frames, "size": size,
            "repeats": args.repeats, "clock": args.clock, "rows": rows, "totals": totals},
            indent=1))
    return 0


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per mode, the count-weighted conv3d time over the fast time: the whole UNet's ResBlock
    convs, old over new."""
    totals: dict[str, dict[str, float]] = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        totals[mode] = {what: sum(r["count"] * r["seconds"]["conv3d"][what] for r in mine)
                        / sum(r["count"] * r["seconds"]["fast"][what] for r in mine)
                        for what in ("forward", "train")}
    return totals


if __name__ == "__main__":
    raise SystemExit(main())
