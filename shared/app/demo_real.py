"""`demo --data DIR`: the main job on a folder of real captioned clips.

Trains the `real` preset on every clip of the folder, samples its captions, scores each sample
against the clips of its caption (`shared.evaluation.refeval`: PSNR, SSIM, pose DTW-MJE, each
beside the shuffled-caption baseline) and writes the results page with each sample beside its
reference as the model sees it. The question it answers is whether the model draws a person
signing *its* caption: a body in the frames, and paired scores better than shuffled ones by
several standard errors.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shared.app.backend import Backend
from shared.app.demo import demo_config, serve_command, train_or_reuse
from shared.app.report_html import reference_scores, sample_settings, write_results_page
from shared.config import DataConfig
from shared.data.clips import Clip, DataError, DataReport, find_clips
from shared.data.preprocess import preprocess_clip
from shared.data.video import read_video, slug, write_video
from shared.evaluation.metrics import noise_ratio, standard_error
from shared.evaluation.refeval import (
    RefEvalConfig,
    RefEvalResult,
    caption_key,
    evaluate_against_reference,
)

REAL_PRESET = "real"
# (key, label, which way is better): the figures the demo prints and puts in report.json.
FIGURES = (("dtw_mje", "pose DTW-MJE (shoulder widths)", "lower"),
           ("ssim", "SSIM", "higher"),
           ("psnr", "PSNR (dB)", "higher"))


def caption_clips(data_dir: Path, labels_file: str | None = None) -> dict[str, list[Clip]]:
    """The folder's clips grouped by caption (matched as `eval --reference` matches them),
    in path order."""
    report = DataReport()
    clips = find_clips(DataConfig(data_dir=str(data_dir), labels_file=labels_file), report)
    if not clips:
        raise DataError(f"{data_dir}: no captioned clips (GIF/MP4 with a same-named .txt); "
                        "see docs/data.md")
    groups: dict[str, list[Clip]] = {}
    for clip in clips:
        groups.setdefault(caption_key(clip.caption), []).append(clip)
    return groups


def pick_captions(groups: dict[str, list[Clip]], limit: int, seed: int) -> list[str]:
    """Every caption (its first clip's spelling), or a fixed random subset of `limit`."""
    keys = sorted(groups)
    if 0 < limit < len(keys):
        rng = np.random.default_rng([seed, 31])
        keys = sorted(rng.choice(keys, limit, replace=False).tolist())
    return [groups[k][0].caption for k in keys]


def write_real_references(folder: Path, groups: dict[str, list[Clip]], captions: list[str],
                          num_frames: int, image_size: int) -> dict[str, Path]:
    """Each caption's first clip as the model sees it (the training transform), for the
    results page to show beside the samples and for the frame-noise figure."""
    folder.mkdir(parents=True, exist_ok=True)
    refs = {}
    for caption in captions:
        path = folder / f"{slug(caption)}.gif"
        if not path.exists():
            frames, _ = read_video(groups[caption_key(caption)][0].path)
            write_video(path, preprocess_clip(frames, num_frames, image_size), fps=4)
            path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        refs[caption] = path
    return refs


def paired_gap(result: RefEvalResult, key: str) -> tuple[float | None, float | None]:
    """Mean over clips of shuffled minus paired score, and its standard error: one clip's two
    scores share its generated frames, so the difference is what varies less."""
    diffs = np.array([c.shuffled[key] - c.paired[key] for c in result.clips
                      if c.paired.get(key) is not None and c.shuffled.get(key) is not None],
                     dtype=np.float64)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) < 2:
        return None, None
    return float(diffs.mean()), standard_error(diffs.tolist())


def summarize(result: RefEvalResult, noise: float) -> dict[str, Any]:
    """The demo's figures: body rate, and per metric paired, shuffled and their gap."""
    totals = result.totals()
    out: dict[str, Any] = {"clips": len(result.clips),
                           "body_frames": totals["body_frames"]["generated"],
                           "hand_frames": totals["hand_frames"]["generated"],
                           "frame_noise": noise}
    for key, _, _ in FIGURES:
        gap, se = paired_gap(result, key)
        row = totals[key]
        out[key] = {"paired": row["paired"], "paired_se": row["paired_se"],
                    "shuffled": row["shuffled"], "shuffled_se": row["shuffled_se"],
                    "gap": gap, "gap_se": se}
    return out


def format_summary(figures: dict[str, Any]) -> list[str]:
    body = figures["body_frames"]
    lines = [f"generated frames with a body: "
             f"{'n/a (pose not computed)' if body is None else f'{100 * body:.0f}%'}"
             f" of {figures['clips']} clips"]
    for key, label, better in FIGURES:
        row = figures[key]
        if row["paired"] is None:
            lines.append(f"{label}: n/a")
            continue
        text = (f"{label}: paired {row['paired']:.3f} ± {row['paired_se'] or 0:.3f}, "
                f"shuffled captions {row['shuffled']:.3f} ± {row['shuffled_se'] or 0:.3f} "
                f"({better} is better)")
        if row["gap"] is not None and row["gap_se"]:
            sign = -1 if better == "lower" else 1
            text += f"; paired better by {-sign * row['gap']:.3f} = " \
                    f"{-sign * row['gap'] / row['gap_se']:.1f} standard errors"
        lines.append(text)
    lines.append(f"frame noise: {figures['frame_noise']:.2f}x the references' (robust noise "
                 "estimate; 1 = as clean as the reference clips)")
    return lines


def run_real_demo(out: Path, backend: Backend, data_dir: Path,
                  preset_name: str = REAL_PRESET, device: str | None = None,
                  progress: bool = True, overrides: tuple[str, ...] = (), captions: int = 0,
                  samples_per_caption: int = 1, pose: bool = True) -> Iterator[str]:
    """Yield the real-clips demo's report line by line as the work happens."""
    start_all = time.perf_counter()
    run_dir = out / f"run-{preset_name}"
    config = demo_config(preset_name, data_dir, run_dir, overrides)
    groups = caption_clips(data_dir, config.data.labels_file)
    chosen = pick_captions(groups, captions, config.data.seed)
    yield (f"real clips: {sum(len(g) for g in groups.values())} clips of {len(groups)} "
           f"captions in {data_dir}; sampling {len(chosen)} captions")
    yield from train_or_reuse(config, backend, run_dir, device, progress)

    sample = dataclasses.replace(config.sample, num_samples=samples_per_caption)
    folder = out / "samples"
    start = time.perf_counter()
    written = backend.sample_checkpoint(run_dir, chosen, folder, sample, device=device,
                                        progress=progress)
    yield f"sampling: {len(written)} clips in {time.perf_counter() - start:.0f} s into {folder}"

    refs = write_real_references(out / "references", groups, chosen, config.data.num_frames,
                                 config.data.image_size)
    result = evaluate_against_reference(
        folder, data_dir, RefEvalConfig(seed=config.data.seed, pose=pose, progress=progress,
                                        labels_file=config.data.labels_file))
    noise = noise_ratio([read_video(p)[0] for p in written],
                              [read_video(p)[0] for p in refs.values()])
    figures = summarize(result, noise)
    lines = format_summary(figures)
    yield from lines
    _, facts = reference_scores(result)
    page = write_results_page(folder, settings=sample_settings(sample, run_dir),
                              references=refs, extra=facts, summary=[*lines, result.format()],
                              clips=written, title=f"text2sign on real clips: {data_dir.name}")
    yield f"every sample beside a reference clip of its caption: {page}"
    report = {"preset": preset_name, "backend": backend.name, "data": str(data_dir),
              "sample": dataclasses.asdict(sample), "figures": figures,
              "reference_eval": result.to_dict()}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    yield (f"demo finished in {time.perf_counter() - start_all:.0f} s; figures in "
           f"{out / 'report.json'}")
    yield f"type your own sentences: {serve_command(backend, run_dir)}"
