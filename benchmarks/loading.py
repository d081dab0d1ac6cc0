"""Is data loading ever the bottleneck? Cached clips per second from the batch iterator against
the clips per second the fastest measured training step consumes, per preset."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shared.config import apply_overrides, preset
from shared.data.dataset import BatchIterator, ClipDataset
from shared.data.toy import make_toy_dataset


def cached_clips_per_s(preset_name: str, n: int = 48, batch: int = 4,
                       overrides: list[str] | None = None) -> float:
    """Clips/s of a second pass over a toy set of reference-size GIFs (the cache built)."""
    with tempfile.TemporaryDirectory(prefix="t2s-bench-data-") as tmp:
        make_toy_dataset(Path(tmp) / "toy", n=n, num_prompts=8, progress=False)
        config = apply_overrides(preset(preset_name), overrides or []).data
        config.data_dir, config.val_fraction = str(Path(tmp) / "toy"), 0.0
        config.cache_dir = str(Path(tmp) / "cache")
        ClipDataset(config, split="all", progress=False)  # decode once, fill the cache
        start = time.perf_counter()
        clips = 0
        dataset = ClipDataset(config, split="all", progress=False)
        for b in BatchIterator(dataset, batch, epochs=1, drop_last=False, seed=0):
            clips += len(b.indices)
        return clips / (time.perf_counter() - start)


def data_notes(presets: list[str], rows: list, log: Callable[[str], None],
               overrides: list[str] | None = None) -> list[str]:
    lines = []
    for name in presets:
        log(f"data loading: {name}")
        loading = cached_clips_per_s(name, overrides=overrides)
        trained = [r.samples_per_s for r in rows if r.preset == name and r.model == "ours"]
        fastest = max(trained) if trained else float("nan")
        lines.append(f"- data {name}: the cached loader gives {loading:.0f} clips/s, "
                     f"{loading / fastest:.0f}x the fastest training step here "
                     f"({fastest:.2f} clips/s)")
    return lines
