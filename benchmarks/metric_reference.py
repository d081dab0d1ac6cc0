"""The metrics' own reference scores (PSNR, SSIM, DTW-MJE), so users know what a good score is.

    python benchmarks/metric_reference.py [--reference DIR] [--frames 28 --size 128]

With --reference DIR (real signing clips with captions), each clip is scored against itself,
its delayed copy, its mirror image, another clip of the same caption (another signer or take)
and a clip of a different caption, all at the generated size through the training transform.
Without it, the same rows on clips made from a bundled photo of a person (needs ".[pose]").
Each score is a mean ± its standard error over the row's pairs; DTW n counts the pairs with a
body found in both clips, which DTW-MJE averages. --max-clips caps the clips read from DIR.
Keypoints are cached under --cache (default: a temporary folder).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import click

from benchmarks import personclips as pc
from shared.app.cli_common import SCRIPT_SETTINGS
from shared.evaluation.calibration import (
    Row,
    folder_rows,
    format_rows,
    row_of,
    score,
    transformed_rows,
)
from shared.evaluation.pose import PoseCache


def synthetic_rows(cache: PoseCache, frames: int = 28, size: int = 128) -> list[Row]:
    """Reference scores on clips of the bundled photo (no real signing needed): one motion
    against itself, its delayed, retimed and mirrored copies, and another motion."""
    photo = pc.person_photo()
    base = pc.render(pc.uniform(frames), pc.sway, height=size, photo=photo)
    rows = list(transformed_rows([base], cache))
    rows.append(row_of("slow-then-fast retiming",
                       [score(pc.render(pc.eased(frames), pc.sway, height=size, photo=photo),
                              base, cache)]))
    rows.append(row_of("another motion",
                       [score(pc.render(pc.uniform(frames), pc.bow, height=size, photo=photo),
                              base, cache)]))
    return rows


@click.command(help=__doc__.splitlines()[0], context_settings=SCRIPT_SETTINGS)
@click.option("--reference", default=None, help="A folder of captioned real clips.")
@click.option("--labels", default=None, help="Its `filename,text` CSV, if any.")
@click.option("--frames", type=int, default=28)
@click.option("--size", type=int, default=128)
@click.option("--max-clips", type=int, default=40, help="At most this many clips of DIR.")
@click.option("--cache", default=None, help="Keypoint cache folder.")
def main(**options: object) -> None:
    args = SimpleNamespace(**options)
    with tempfile.TemporaryDirectory() as tmp, PoseCache(args.cache or tmp) as cache:
        if args.reference:
            rows = folder_rows(Path(args.reference), cache, args.frames, args.size,
                               args.max_clips, args.labels)
            source = args.reference
        else:
            rows = synthetic_rows(cache, args.frames, args.size)
            source = "clips of the bundled astronaut photo (benchmarks/personclips.py)"
        print(f"reference scores at {args.frames} x {args.size}^2 on {source}")
        print(format_rows(rows))


if __name__ == "__main__":
    main()
