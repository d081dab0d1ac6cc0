"""The README's main job: toy-signer data -> training -> samples -> faithfulness, on a backend.

One implementation for both tools: the entry point hands in its backend (a
`shared.app.backend.Backend`, which trains and samples), and everything else (data, prompts,
scoring, the report) is shared. A finished run is reused, an interrupted one resumes, so
running the demo twice costs little the second time.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from shared.app.backend import Backend
from shared.app.report_html import sample_settings, write_results_page, write_sets_page
from shared.app.trainer import ESTIMATE_PREFIX
from shared.config import Config, DataConfig, apply_overrides, preset
from shared.data.clips import DataReport, find_clips
from shared.data.preprocess import preprocess_clip
from shared.data.toy import make_toy_dataset, render_clip
from shared.data.video import read_video, slug, write_video
from shared.evaluation.folder import evaluate_set
from shared.evaluation.metrics import noise_ratio
from shared.evaluation.textfollow import (
    SPLIT_FILE,
    SentenceSplit,
    make_split,
    read_split,
    training_captions,
)
from shared.model.checkpoint import list_checkpoints

# Bigger gloves keep the hands several pixels wide at the demo's 16 x 16, and sentences of at
# most two words give each word four of the demo's eight frames (measured: prompt accuracy
# 0.42 against 0.25-0.30 with three-word sentences, same budget).
DEMO_HAND_SIZE = 1.6
DEMO_MAX_WORDS = 2
# Samples per evaluation sentence: 20 sentences x 5 = 100 clips per set, so that each figure's
# standard error is at most 5 points.
DEMO_SAMPLES = 5


def ensure_toy_data(data_dir: Path, n: int, workers: int = 1, seed: int = 0,
                    progress: bool = True) -> bool:
    """Make the demo's toy set unless a complete one is already there; True if it was made.
    Its training sentences leave out the split's held-out ones (`split.json` beside them)."""
    existing = read_split_safe(data_dir)
    if existing is not None and existing.seed == seed and \
            len(list(data_dir.glob("toy_*.gif"))) >= n:
        return False
    split = make_split(max_words=DEMO_MAX_WORDS, seed=seed)
    make_toy_dataset(data_dir, n=n, seed=seed, workers=workers, hand_size=DEMO_HAND_SIZE,
                     captions=training_captions(split, n, seed), progress=progress)
    split.save(data_dir / SPLIT_FILE)
    return True


def read_split_safe(data_dir: Path) -> SentenceSplit | None:
    try:
        return read_split(data_dir)
    except ValueError:
        return None


def write_references(folder: Path, captions: list[str], num_frames: int, image_size: int,
                     seed: int) -> dict[str, Path]:
    """One toy clip per caption, as the model sees its training data (the source render,
    resampled, centre-cropped and resized by the loader's own transform), for the results
    page to show beside each generated clip: what a right answer looks like."""
    folder.mkdir(parents=True, exist_ok=True)
    refs = {}
    for i, caption in enumerate(captions):
        clip = render_clip(caption, seed=np.random.default_rng([seed, 23, i]),
                           hand_size=DEMO_HAND_SIZE)
        path = write_video(folder / f"{slug(caption)}.gif",
                           preprocess_clip(clip, num_frames, image_size), fps=4)
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        refs[caption] = path
    return refs


def demo_config(preset_name: str, data_dir: Path, run_dir: Path,
                overrides: tuple[str, ...]) -> Config:
    config = apply_overrides(preset(preset_name), [f"data.data_dir={data_dir.resolve()}",
                                                   f"train.out_dir={run_dir}", *overrides])
    return config.validate()


def train_or_reuse(config: Config, backend: Backend, run_dir: Path, device: str | None,
                   progress: bool) -> Iterator[str]:
    """Train `config` into `run_dir`, resuming an interrupted run and reusing a finished one."""
    done = list_checkpoints(run_dir / "checkpoints")
    if done and done[-1][0] >= config.train.steps:
        yield f"training: found a finished run in {run_dir}"
        return
    start = time.perf_counter()
    trainer = backend.trainer(config, device=device, progress=progress, log=estimate_only)
    result = trainer.train(resume=bool(done))
    yield (f"training: {result.step} steps of {config.train.batch_size} clips "
           f"({config.data.num_frames} frames of {config.data.image_size} px) in "
           f"{time.perf_counter() - start:.0f} s on {trainer.device}; final loss "
           f"{sum(result.losses[-50:]) / max(1, len(result.losses[-50:])):.3f}")


def serve_command(backend: Backend, run_dir: Path) -> str:
    """The one command that serves the demo's model on a local page (`serve`)."""
    return f"{backend.tool} serve --checkpoint {run_dir}"


def estimate_only(message: str) -> None:
    """The trainer's log, quiet but for its one time estimate (above the progress bar)."""
    if message.startswith(ESTIMATE_PREFIX):
        tqdm.write(message)


def folder_noise(folder: Path, references: dict[str, Path]) -> float:
    """`noise_ratio` of a folder of generated clips against the reference clips of their
    captions (what the results page shows beside them)."""
    clips = find_clips(DataConfig(data_dir=str(folder)), DataReport())
    generated = [read_video(c.path)[0] for c in clips]
    refs = [read_video(references[c.caption])[0] for c in clips if c.caption in references]
    return noise_ratio(generated, refs)


def run_demo(out: Path, backend: Backend, preset_name: str = "toy", n: int = 400,
             device: str | None = None, workers: int = 1, progress: bool = True,
             overrides: tuple[str, ...] = (), seed: int = 0,
             samples_per_sentence: int = DEMO_SAMPLES) -> Iterator[str]:
    """Yield the demo's report line by line as the work happens."""
    start_all = time.perf_counter()
    data_dir, run_dir = out / "data", out / f"run-{preset_name}"
    start = time.perf_counter()
    made = ensure_toy_data(data_dir, n, workers, seed, progress)
    split = read_split(data_dir)
    yield (f"toy-signer data: {'wrote' if made else 'found'} {n} clips of "
           f"{len(set(training_captions(split, n, seed)))} training sentences in {data_dir} "
           f"({time.perf_counter() - start:.0f} s); held out: {len(split.unseen)} sentences of "
           f"{split.max_words} words, {len(split.longer)} of {split.max_words + 1}")

    # Absolute, so that `--quality` and `eval` find the data (and its split) from anywhere.
    config = demo_config(preset_name, data_dir, run_dir, overrides)
    yield from train_or_reuse(config, backend, run_dir, device, progress)

    sample = dataclasses.replace(config.sample, num_samples=samples_per_sentence)
    report = {"preset": preset_name, "backend": backend.name, "split_seed": split.seed,
              "sample": dataclasses.asdict(sample), "sets": {}}
    sets = split.sets()
    refs = write_references(out / "references", [p for ps in sets.values() for p in ps],
                            config.data.num_frames, config.data.image_size, split.seed)
    scored = []
    for label, prompts in sets.items():
        folder = out / "samples" / label
        start = time.perf_counter()
        backend.sample_checkpoint(run_dir, list(prompts), folder, sample, device=device,
                                  progress=progress)
        (folder / "prompts.txt").write_text("".join(p + "\n" for p in prompts))
        result = evaluate_set(folder, label)
        noise = folder_noise(folder, refs)
        report["sets"][label] = {**result.to_dict(), "frame_noise": noise}
        write_results_page(folder, settings=sample_settings(sample, run_dir), score=result,
                           references=refs, summary=[result.format()])
        scored.append((folder, result))
        yield f"{result.format()} ({time.perf_counter() - start:.0f} s)"
        yield (f"  frame noise: {noise:.2f}x the references' (robust noise estimate; 1 = as "
               "clean as the reference clips)")
        yield f"  videos: {folder}/*.gif, all together in {folder}/grid.gif"
    page = write_sets_page(out / "samples", scored, references=refs,
                           title=f"text2sign demo: {preset_name}, seed {split.seed}")
    yield f"every sample with its caption, score and a reference clip: {page}"
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    yield (f"demo finished in {time.perf_counter() - start_all:.0f} s; figures in "
           f"{out / 'report.json'}")
    yield f"type your own sentences: {serve_command(backend, run_dir)}"
