"""Time `eval --reference` on 100 generated 28 x 128^2 clips with pose metrics.

    python benchmarks/eval_reference.py [--n 100] [--captions 20] [--refs 2] [--dir DIR]

Makes a reference folder (`--refs` wide 320 x 180 MP4s of 28 frames per caption) and a generated
folder (`--n` GIFs at 28 x 128^2, spread over `--captions` captions) of real-person clips
(benchmarks/personclips.py: a bundled photo moved along a per-caption path), then scores the
generated folder twice with the library call behind `eval GENERATED --reference DIR`: pass 1 runs
MediaPipe on every clip (cold keypoint cache), pass 2 is what every later evaluation of the same
clips pays (keypoints cached). The target is pass 2 <= 120 s on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

from benchmarks import personclips as pc
from shared.app.cli_common import SCRIPT_SETTINGS
from shared.data.video import write_video
from shared.evaluation.refeval import RefEvalConfig, evaluate_against_reference


def caption_path(k: int) -> pc.Path2D:
    """A distinct motion per caption: its own sway amplitude, bob and tilt."""
    rng = np.random.default_rng(k)
    ax, ay, deg = rng.uniform(-0.15, 0.15), rng.uniform(0, 0.12), rng.uniform(-12, 12)
    freq = rng.integers(1, 3)

    def path(p: float) -> pc.Pose2D:
        s = float(np.sin(2 * np.pi * freq * p))
        return pc.Pose2D(ax * s, ay * float(np.sin(np.pi * p)), deg * s)

    return path


def make_folders(root: Path, n: int, captions: int, refs: int, frames: int = 28) -> None:
    photo = pc.person_photo()
    for k in range(captions):
        path, caption = caption_path(k), f"sign {k}"
        for r in range(refs):
            phases = pc.eased(frames) if r % 2 else pc.uniform(frames)
            clip = pc.render(phases, path, height=180, width=320, photo=photo)
            out = write_video(root / "ref" / f"c{k:02d}_{r}.mp4", clip, 25)
            out.with_suffix(".txt").write_text(caption + "\n")
    for i in range(n):
        k = i % captions
        clip = pc.render(pc.delayed(frames, i // captions), caption_path(k), photo=photo)
        out = write_video(root / "gen" / f"{i:03d}_sign_{k}.gif", clip, 10)
        out.with_suffix(".txt").write_text(f"sign {k}\n")


@click.command(help=__doc__.splitlines()[0], context_settings=SCRIPT_SETTINGS)
@click.option("--n", type=int, default=100)
@click.option("--captions", type=int, default=20)
@click.option("--refs", type=int, default=2)
@click.option("--dir", default=None, help="Keep the clips and caches here.")
@click.option("--json", default=None, help="Also write the timings here.")
def main(**options: object) -> None:
    args = SimpleNamespace(**options)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        if not (root / "gen").exists():
            start = time.perf_counter()
            make_folders(root, args.n, args.captions, args.refs)
            print(f"made {args.n} generated and {args.captions * args.refs} reference clips "
                  f"in {time.perf_counter() - start:.1f} s")
        timings, cpu = {}, {}
        for name in ("cold", "cached"):
            start, start_cpu = time.perf_counter(), time.process_time()
            result = evaluate_against_reference(root / "gen", root / "ref",
                                                RefEvalConfig(progress=False))
            timings[name] = round(time.perf_counter() - start, 1)
            # CPU seconds of this process (all its threads): on a shared machine the wall time
            # also counts other jobs' turns, this does not
            cpu[name] = round(time.process_time() - start_cpu, 1)
            print(f"{name}: {timings[name]} s wall, {cpu[name]} s CPU, keypoint cache "
                  f"{result.pose_cache}")
        print(result.format())
        report = {"clips": len(result.clips), "frames": 28, "size": 128, "seconds": timings,
                  "cpu_seconds": cpu, "load_average": [round(x, 2) for x in os.getloadavg()],
                  "cpus": os.cpu_count(), "target_cached_s": 120,
                  "met": timings["cached"] <= 120}
        if os.getloadavg()[0] > (os.cpu_count() or 1):
            report["note"] = ("the machine was busy (load above its core count): the wall "
                              "times count other jobs' turns; cpu_seconds is this run's work, "
                              "which an idle machine does in about that wall time")
        print(json.dumps(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
