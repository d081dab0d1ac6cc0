"""Where the CPU training step's time goes, and this tree against another commit side by side.

    python benchmarks/profile_step.py                       # the toy step's per-op table
    python benchmarks/profile_step.py --against d043c13     # + clips/s here vs that commit
    python benchmarks/profile_step.py --against d043c13 --neighbour   # ... beside a busy core
    python benchmarks/profile_step.py --preset real --json step.json

The step is the trainer's own (`Trainer._micro_step` + `_optimizer_step`, EMA included) on a
small toy-signer set made in a temporary folder, torch on the CPU. The table sorts torch
profiler self times into kinds of work; what no op accounts for is Python and dispatch (plus
the profiler's own cost, so the plain step time is measured apart). The achieved GFLOP/s use the
analytic count (`shared.model.flops`, text at its padded length) and sit beside an fp32 2048²
matmul measured in the same run.

`--against REV` checks REV out into a temporary git worktree and runs the same step there and
here in two child processes, alternating rounds of steps, so that both see the same machine
load; the ratio of the medians is the speed-up. Both trees must have the trainer hooks used
here (any commit since 2026-12-01).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from statistics import median
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[1]
# The tree whose code runs: this checkout, or (`--against`'s children) the other revision's.
sys.path.insert(0, os.environ.get("T2S_PROFILE_TREE", str(ROOT)))

# Profiler op names -> the kind of work, first match wins.
KINDS = (
    ("optimizer + EMA", ("Optimizer", "adam", "_foreach", "lerp")),
    ("convolutions", ("convolution", "conv3d", "TemporalConv")),
    ("attention", ("scaled_dot_product", "softmax")),
    ("matmuls (linear layers)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear",
                                 "aten::matmul")),
    ("norms (GroupNorm, LayerNorm)", ("group_norm", "layer_norm", "GroupNormSiLU")),
    ("elementwise, copies, reductions", ("aten::",)),
)


def kind_of(name: str) -> str:
    for kind, needles in KINDS:
        if any(n in name for n in needles):
            return kind
    return "other ops"


def make_data(folder: Path, clips: int) -> Path:
    from shared.app.demo import ensure_toy_data

    ensure_toy_data(folder, clips, progress=False)
    return folder


class Step:
    """The trainer's step on `data`, built once; `run(n)` times n steps."""

    def __init__(self, preset_name: str, data: Path, out: Path, batch: int | None,
                 tune_threads: bool = True):
        from shared.config import apply_overrides, preset
        from t2s_torch.train import Trainer

        overrides = [f"data.data_dir={data}", f"train.out_dir={out}",
                     f"data.cache_dir={out / 'cache'}", "train.steps=100000"]
        if batch:
            overrides.append(f"train.batch_size={batch}")
        self.config = apply_overrides(preset(preset_name), overrides).validate()
        self.trainer = Trainer(self.config, device="cpu", progress=False, log=lambda _: None)
        t = self.trainer
        t.micro_batch, t.grad_accum = t._resolve_batch()
        self.batches = t._batches()
        t.model.train()
        if not tune_threads and getattr(t, "threads", None) is not None:
            t.threads = None  # a profile of the step at the machine's thread count
        self.data_s = 0.0

    def one(self) -> None:
        t = self.trainer
        if hasattr(t, "train_step"):  # the loop's own step (trees since 2026-12-07)
            t.train_step(self._timed_batches())
            return
        t._set_lr()
        losses = []
        for i in range(t.grad_accum):
            start = time.perf_counter()
            batch = next(self.batches)
            self.data_s += time.perf_counter() - start
            losses.append(t._micro_step(batch, i))
        t._mean_loss(losses)
        t._optimizer_step()
        t.step += 1

    def _timed_batches(self):
        while True:
            start = time.perf_counter()
            batch = next(self.batches)
            self.data_s += time.perf_counter() - start
            yield batch

    def run(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            self.one()
            times.append(time.perf_counter() - start)
        return times

    @property
    def clips(self) -> int:
        return self.trainer.clips_per_step


def profile(step: Step, steps: int) -> dict[str, Any]:
    """Per-kind milliseconds per step from the torch profiler's self times."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step.data_s = 0.0
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step.run(steps)
        wall = time.perf_counter() - start
    kinds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        kinds[kind_of(event.key)] += event.self_cpu_time_total / 1e6
    kinds["data (next batch)"] = step.data_s
    kinds["Python, dispatch, profiler"] = max(0.0, wall - sum(kinds.values()))
    return {"profiled_step_s": wall / steps,
            "ms_per_step": {k: 1000 * v / steps for k, v in
                            sorted(kinds.items(), key=lambda kv: -kv[1])}}


def profile_main(preset_name: str, batch: int | None, steps: int, warmup: int,
                 work: Path) -> dict[str, Any]:
    import torch

    from shared.app.doctor import MATMUL_SIZE, matmul_gflops
    from shared.model.flops import training_flops_per_sample

    data = make_data(work / "data", 64)
    step = Step(preset_name, data, work / "here", batch, tune_threads=False)
    step.run(warmup)
    plain = median(step.run(steps))
    result = profile(step, steps)
    flops = training_flops_per_sample(step.config) * step.clips
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    matmul = matmul_gflops(lambda: a @ a)
    return {"preset": preset_name, "clips_per_step": step.clips, "threads":
            torch.get_num_threads(), "step_s": plain, "clips_per_s": step.clips / plain,
            "gflop_per_step": flops / 1e9, "gflops": flops / plain / 1e9,
            "matmul_gflops": matmul, "matmul_share": flops / plain / 1e9 / matmul, **result}


def format_profile(r: dict[str, Any]) -> str:
    total = r["profiled_step_s"] * 1000
    lines = [f"## {r['preset']} training step, torch CPU, {r['threads']} threads, "
             f"{r['clips_per_step']} clips per step", "",
             f"- step: {1000 * r['step_s']:.1f} ms ({r['clips_per_s']:.1f} clips/s); "
             f"{r['gflop_per_step']:.1f} GFLOP per step = {r['gflops']:.1f} GFLOP/s, "
             f"{100 * r['matmul_share']:.0f}% of this run's fp32 2048² matmul "
             f"({r['matmul_gflops']:.0f} GFLOP/s)",
             f"- under the profiler: {total:.1f} ms per step", "",
             "| work | ms/step | share |", "|---|---:|---:|"]
    for kind, ms in r["ms_per_step"].items():
        lines.append(f"| {kind} | {ms:.1f} | {100 * ms / total:.0f}% |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- side by side


def worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force",
                    str(where), rev], check=True, capture_output=True)
    return where


def start_child(tree: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "T2S_PROFILE_TREE": str(tree)}
    return subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "profile_step.py"),
                             "--serve", *args], cwd=tree, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def ask(child: subprocess.Popen, n: int) -> list[float]:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(f"{n}\n")
    child.stdin.flush()
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"a child stopped (exit {child.wait()})")
    return json.loads(line)


def serve_steps(preset_name: str, batch: int | None, data: Path, out: Path) -> None:
    """Child: announce which tree it runs, then time `n` steps per line read from stdin."""
    import shared

    step = Step(preset_name, data, out, batch)
    print(json.dumps({"tree": str(Path(shared.__file__).parents[1])}), flush=True)
    for line in sys.stdin:
        print(json.dumps(step.run(int(line))), flush=True)


def against(rev: str, preset_name: str, batch: int | None, rounds: int, per_round: int,
            warmup: int, work: Path, log, neighbour: bool = False) -> dict[str, Any]:
    data = make_data(work / "data", 64)
    trees = {"here": ROOT, rev: worktree(rev, work / "old")}
    children, cleanup = {}, []
    try:
        for name, tree in trees.items():
            log(f"starting the step in {name} ({tree})")
            child = start_child(tree, ["--preset", preset_name, "--data", str(data),
                                       "--out", str(work / f"run-{name.replace('/', '_')}")]
                                + (["--batch", str(batch)] if batch else []))
            assert child.stdout is not None
            hello = json.loads(child.stdout.readline())
            if Path(hello["tree"]).resolve() != tree.resolve():
                raise RuntimeError(f"{name}: imported {hello['tree']}, not {tree}")
            children[name] = child
        times: dict[str, list[float]] = {name: [] for name in children}
        for child in children.values():
            ask(child, warmup)
        if neighbour:  # a process that wants one core the whole time, as a busy neighbour would
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            cleanup.append(busy)
        for r in range(rounds):
            for name, child in (children.items() if r % 2 == 0
                                else reversed(children.items())):
                times[name] += ask(child, per_round)
            log(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {1000 * median(t):.1f} ms" for n, t in times.items()))
    finally:
        for child in [*children.values(), *cleanup]:
            child.kill()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                        str(trees[rev])], capture_output=True)
    medians = {n: median(t) for n, t in times.items()}
    return {"rev": rev, "step_s": medians, "steps_each": rounds * per_round,
            "busy_neighbour": neighbour,
            "speedup": medians[rev] / medians["here"]}


# ----------------------------------------------------------------------------- command line


@click.command(help=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
               context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", "preset_name", default="toy", show_default=True)
@click.option("--batch", type=int, default=None, help="clips per step (default: the preset's)")
@click.option("--steps", type=int, default=20, show_default=True, help="profiled steps")
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--against", "rev", default=None, metavar="REV",
              help="also time a git revision's step against this tree's, interleaved")
@click.option("--rounds", type=int, default=6, show_default=True,
              help="with --against: alternating rounds")
@click.option("--round-steps", type=int, default=10, show_default=True,
              help="with --against: steps per round and tree")
@click.option("--neighbour", is_flag=True,
              help="with --against: a busy-looping process takes one core during the rounds")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
@click.option("--serve", is_flag=True, hidden=True)
@click.option("--data", type=click.Path(path_type=Path), default=None, hidden=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, hidden=True)
def main(preset_name: str, batch: int | None, steps: int, warmup: int, rev: str | None,
         rounds: int, round_steps: int, neighbour: bool, json_path: Path | None, serve: bool,
         data: Path | None, out: Path | None) -> None:
    if serve:
        serve_steps(preset_name, batch, data, out)
        return

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="t2s-profile-") as tmp:
        work = Path(tmp)
        report = {"profile": profile_main(preset_name, batch, steps, warmup, work)}
        print(format_profile(report["profile"]))
        if rev:
            report["against"] = against(rev, preset_name, batch, rounds, round_steps, warmup,
                                        work, log, neighbour)
            a = report["against"]
            busy = ", one core busy with another process" if neighbour else ""
            print(f"\n## this tree vs {rev}, {a['steps_each']} steps each, interleaved{busy}\n\n"
                  f"- {rev}: {1000 * a['step_s'][rev]:.1f} ms/step; this tree: "
                  f"{1000 * a['step_s']['here']:.1f} ms/step: {a['speedup']:.2f}x")
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
