"""Decode-once vs cached iteration of a toy data set: what the decoded-clip cache buys.

    python benchmarks/data_cache.py --n 400 [--frames 28 --size 128] [--data DIR]

Pass 1 builds the dataset from the GIFs (decode, resample, crop, resize, write the cache) and
reads every clip once; pass 2 builds it again (everything cached) and reads every clip through
the batch iterator. Each pass is timed whole, so the ratio is what a second training run sees.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import click

from shared.app.cli_common import SCRIPT_SETTINGS
from shared.config import DataConfig
from shared.data.dataset import BatchIterator, ClipDataset
from shared.data.decode_cache import cache_root
from shared.data.toy import make_toy_dataset


def one_pass(config: DataConfig, batch_size: int) -> tuple[float, int]:
    start = time.perf_counter()
    dataset = ClipDataset(config, split="all", progress=False)
    clips = 0
    for batch in BatchIterator(dataset, batch_size, epochs=1, drop_last=False, shuffle=True):
        clips += len(batch.indices)
    return time.perf_counter() - start, clips


@click.command(help=__doc__.splitlines()[0], context_settings=SCRIPT_SETTINGS)
@click.option("--n", type=int, default=400)
@click.option("--frames", type=int, default=28)
@click.option("--size", type=int, default=128)
@click.option("--batch-size", type=int, default=8)
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="an existing folder of clips (default: a fresh toy set)")
def main(**options: object) -> None:
    args = SimpleNamespace(**options)
    tmp = Path(tempfile.mkdtemp(prefix="t2s-bench-"))
    try:
        data = args.data or tmp / "toy"
        if args.data is None:
            start = time.perf_counter()
            make_toy_dataset(data, n=args.n, num_prompts=20, progress=False)
            print(f"toy set: {args.n} clips of 28 x 180 x 320 GIF written in "
                  f"{time.perf_counter() - start:.2f} s")
        config = DataConfig(data_dir=str(data), num_frames=args.frames, image_size=args.size,
                            cache_dir=str(tmp / "cache"), val_fraction=0.0)
        shutil.rmtree(cache_root(config), ignore_errors=True)
        first, n1 = one_pass(config, args.batch_size)
        second, n2 = one_pass(config, args.batch_size)
        print(f"pass 1 (decode + cache + read): {first:.3f} s for {n1} clips "
              f"({1000 * first / n1:.2f} ms/clip)")
        print(f"pass 2 (cached read):           {second:.3f} s for {n2} clips "
              f"({1000 * second / n2:.3f} ms/clip)")
        print(f"speed-up: {first / second:.1f}x  (clips of {args.frames} x {args.size} x "
              f"{args.size}, batch {args.batch_size})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
