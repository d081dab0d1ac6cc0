"""The README's main job: toy-signer data -> training -> samples -> faithfulness, on a backend.

One implementation for both tools: the backend (`t2s_torch` or `t2s_mlx`) is imported by name,
and everything else (data, prompts, scoring, the report) is shared. A finished run is reused,
an interrupted one resumes, so running the demo twice costs little the second time.
"""

from __future__ import annotations

import dataclasses
import importlib
import platform
import time
from collections.abc import Iterator
from pathlib import Path

from shared.checkpoint import list_checkpoints
from shared.config import apply_overrides, preset
from shared.eval import evaluate_folder
from shared.toy import make_toy_dataset, sample_prompts

# The demo's closed set of sentences: chance level for prompt identification is 1 / 20.
DEMO_PROMPTS = 20
UNSEEN_PROMPTS = 10
# Bigger gloves keep the hands several pixels wide at the demo's 16 x 16, and sentences of at
# most two words give each word four of the demo's eight frames (measured: prompt accuracy
# 0.42 against 0.25-0.30 with three-word sentences, same budget).
DEMO_HAND_SIZE = 1.6
DEMO_MAX_WORDS = 2


def default_backend() -> str:
    """MLX on Apple Silicon, PyTorch elsewhere (MLX's Linux CPU build is for correctness)."""
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    if apple and importlib.util.find_spec("mlx") is not None:
        return "t2s_mlx"
    return "t2s_torch"


def ensure_toy_data(data_dir: Path, n: int, workers: int = 1) -> bool:
    """Make the demo's toy set unless a complete one is already there; True if it was made."""
    prompts = data_dir / "prompts.txt"
    if prompts.exists() and len(list(data_dir.glob("toy_*.gif"))) >= n:
        return False
    make_toy_dataset(data_dir, n=n, num_prompts=DEMO_PROMPTS, workers=workers,
                     hand_size=DEMO_HAND_SIZE, max_words=DEMO_MAX_WORDS)
    return True


def unseen_prompts(seen: list[str], count: int = UNSEEN_PROMPTS) -> list[str]:
    """Sentences of the same vocabulary that training never showed (generalisation)."""
    pool = sample_prompts(len(seen) + 4 * count, seed=12345, max_words=DEMO_MAX_WORDS)
    return [p for p in pool if p not in set(seen)][:count]


def run_demo(out: Path, backend: str, preset_name: str = "toy", n: int = 400,
             device: str | None = None, workers: int = 1, progress: bool = True,
             overrides: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield the demo's report line by line as the work happens."""
    start_all = time.perf_counter()
    train_mod = importlib.import_module(f"{backend}.train")
    sample_mod = importlib.import_module(f"{backend}.sample")
    data_dir, run_dir = out / "data", out / f"run-{preset_name}"
    start = time.perf_counter()
    made = ensure_toy_data(data_dir, n, workers)
    yield (f"toy-signer data: {'wrote' if made else 'found'} {n} clips of {DEMO_PROMPTS} "
           f"sentences in "
           f"{data_dir} ({time.perf_counter() - start:.0f} s)")

    config = apply_overrides(preset(preset_name), [f"data.data_dir={data_dir}",
                                                   f"train.out_dir={run_dir}", *overrides])
    config.validate()
    done = list_checkpoints(run_dir / "checkpoints")
    if done and done[-1][0] >= config.train.steps:
        yield f"training: found a finished run in {run_dir}"
    else:
        start = time.perf_counter()
        trainer = train_mod.Trainer(config, device=device, progress=progress,
                                    log=lambda _: None)
        result = trainer.train(resume=bool(done))
        yield (f"training: {result.step} steps of {config.train.batch_size} clips "
               f"({config.data.num_frames} frames of {config.data.image_size} px) in "
               f"{time.perf_counter() - start:.0f} s on {trainer.device}; final loss "
               f"{sum(result.losses[-50:]) / max(1, len(result.losses[-50:])):.3f}")

    seen = [p for p in (data_dir / "prompts.txt").read_text().splitlines() if p]
    sample = dataclasses.replace(config.sample, num_samples=2)
    for label, prompts in (("seen", seen), ("unseen", unseen_prompts(seen))):
        folder = out / "samples" / label
        start = time.perf_counter()
        sample_mod.sample_checkpoint(run_dir, prompts, folder, sample, device=device,
                                     progress=progress)
        score = evaluate_folder(folder, None)
        yield (f"{label} captions ({len(prompts)}, {sample.num_samples} samples each, "
               f"{time.perf_counter() - start:.0f} s): {score.format()}")
        yield f"  videos: {folder}/*.gif, all together in {folder}/grid.gif"
    yield f"demo finished in {time.perf_counter() - start_all:.0f} s"
