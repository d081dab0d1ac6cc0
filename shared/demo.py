"""The README's main job, framework-free part: the toy data set, its cache, a metric check."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from shared.config import DataConfig
from shared.data import ClipDataset
from shared.eval import read_prompts
from shared.toy import make_toy_dataset, score_clips

# The demo's closed set of sentences: chance level for prompt identification is 1 / 20.
DEMO_PROMPTS = 20
DEMO_FRAMES, DEMO_SIZE = 16, 32


def ensure_toy_data(data_dir: Path, n: int, workers: int = 1) -> bool:
    """Make the demo's toy set unless a complete one is already there; True if it was made."""
    prompts = data_dir / "prompts.txt"
    if prompts.exists() and len(list(data_dir.glob("toy_*.gif"))) >= n:
        return False
    make_toy_dataset(data_dir, n=n, num_prompts=DEMO_PROMPTS, workers=workers)
    return True


def prepare_demo(out: Path, n: int = 400, prog: str = "t2s-torch",
                 workers: int = 1) -> Iterator[str]:
    """Yield the demo's report line by line as the work happens."""
    data_dir = out / "data"
    start = time.perf_counter()
    made = ensure_toy_data(data_dir, n, workers)
    yield (f"toy-signer data: {'wrote' if made else 'found'} {n} clips in {data_dir} "
           f"({time.perf_counter() - start:.1f} s)")
    config = DataConfig(data_dir=str(data_dir), num_frames=DEMO_FRAMES, image_size=DEMO_SIZE,
                        val_fraction=0.0)
    start = time.perf_counter()
    dataset = ClipDataset(config, split="all")
    yield (f"training cache: {len(dataset)} clips of {DEMO_FRAMES} x {DEMO_SIZE} x {DEMO_SIZE} "
           f"ready ({time.perf_counter() - start:.1f} s; {dataset.report.summary()})")
    score = score_clips([dataset[i][0] for i in range(len(dataset))], dataset.captions,
                        read_prompts(data_dir / "prompts.txt"))
    yield f"metric on the data's own clips (the ceiling a model can reach): {score.format()}"
    yield ("next: training and sampling arrive with the backends "
           f"(`{prog} train`, `{prog} sample`); today `{prog} --help` lists what works.")
