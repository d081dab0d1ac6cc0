"""The metrics' own reference scores: what a clip scores against itself, against a retimed or
mirrored copy, against another clip of the same caption and against a different caption.

A DTW-MJE of 0.3 means nothing until one knows that the same clip delayed scores ~0.05 and a
different sign ~0.4; these rows give that scale, on real reference clips when a folder is given
(`benchmarks/metric_reference.py --reference DIR`), else on the bundled-photo clips.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.config import DataConfig
from shared.data.dataset import DataReport, find_clips, preprocess_clip
from shared.data.video import VideoError, read_video
from shared.evaluation.metrics import psnr, ssim
from shared.evaluation.pose import PoseCache
from shared.evaluation.refeval import PoseSummary, caption_key, pose_distance

log = logging.getLogger("text2sign.calibration")


@dataclass(frozen=True)
class Row:
    name: str
    pairs: int
    psnr: float
    ssim: float
    dtw_mje: float | None


def score(a: np.ndarray, b: np.ndarray, cache: PoseCache) -> tuple[float, float, float | None]:
    """PSNR, SSIM and DTW-MJE of clip `a` scored against reference clip `b` (same shape)."""
    d = pose_distance(PoseSummary.of(cache.track(a)), PoseSummary.of(cache.track(b)))
    return psnr(a, b), ssim(a, b), d


def delayed_copy(clip: np.ndarray, frames: int) -> np.ndarray:
    """The clip starting `frames` late (its first frame held), same length, end cut off."""
    return np.concatenate([np.repeat(clip[:1], frames, axis=0), clip[:len(clip) - frames]])


def _row(name: str, scores: list[tuple[float, float, float | None]]) -> Row:
    dtws = [s[2] for s in scores if s[2] is not None]
    return Row(name, len(scores), float(np.mean([s[0] for s in scores])),
               float(np.mean([s[1] for s in scores])), float(np.mean(dtws)) if dtws else None)


def transformed_rows(clips: list[np.ndarray], cache: PoseCache) -> Iterator[Row]:
    """Each clip against itself, its delayed copy and its mirror image."""
    delay = max(1, len(clips[0]) // 7)
    yield _row("itself", [score(c, c, cache) for c in clips])
    yield _row(f"delayed {delay} frames", [score(delayed_copy(c, delay), c, cache)
                                            for c in clips])
    yield _row("mirrored", [score(np.ascontiguousarray(c[:, :, ::-1]), c, cache)
                            for c in clips])


def folder_rows(folder: Path, cache: PoseCache, frames: int = 28, size: int = 128,
                max_clips: int = 40, labels_file: str | None = None) -> list[Row]:
    """Reference scores on real clips: transformed copies, another clip of the same caption
    (another signer or take), and a clip of a different caption."""
    listed = find_clips(DataConfig(data_dir=str(folder), labels_file=labels_file), DataReport())
    found, clips = [], []
    for clip in listed:
        if len(found) == max_clips:
            break
        try:  # a broken file is skipped with a warning, as training skips it
            clips.append(preprocess_clip(read_video(clip.path)[0], frames, size))
        except (VideoError, OSError, ValueError) as e:
            log.warning("skipping %s: %s", clip.path, e)
            continue
        found.append(clip)
    if len(found) < 2:
        raise ValueError(f"{folder}: need at least 2 captioned clips for reference scores")
    keys = [caption_key(c.caption) for c in found]
    rows = list(transformed_rows(clips, cache))
    same, other = [], []
    for i, key in enumerate(keys):
        mates = [j for j in range(len(found)) if j != i and keys[j] == key]
        strangers = [j for j in range(len(found)) if keys[j] != key]
        if mates:
            same.append(score(clips[i], clips[mates[0]], cache))
        if strangers:
            other.append(score(clips[i], clips[strangers[i % len(strangers)]], cache))
    if same:
        rows.append(_row("same caption, another clip", same))
    if other:
        rows.append(_row("different caption", other))
    return rows


def synthetic_rows(cache: PoseCache, frames: int = 28, size: int = 128) -> list[Row]:
    """Reference scores on clips of the bundled photo (no real signing needed): one motion
    against itself, its delayed, retimed and mirrored copies, and another motion."""
    from shared.data import personclips as pc

    photo = pc.person_photo()
    base = pc.render(pc.uniform(frames), pc.sway, height=size, photo=photo)
    rows = list(transformed_rows([base], cache))
    rows.append(_row("slow-then-fast retiming",
                     [score(pc.render(pc.eased(frames), pc.sway, height=size, photo=photo),
                            base, cache)]))
    rows.append(_row("another motion",
                     [score(pc.render(pc.uniform(frames), pc.bow, height=size, photo=photo),
                            base, cache)]))
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'scored against the clip':30s} {'pairs':>5s} {'PSNR dB':>8s} {'SSIM':>7s} "
             f"{'DTW-MJE':>8s}"]
    for r in rows:
        dtw = "n/a" if r.dtw_mje is None else f"{r.dtw_mje:.3f}"
        lines.append(f"{r.name:30s} {r.pairs:5d} {r.psnr:8.2f} {r.ssim:7.3f} {dtw:>8s}")
    return "\n".join(lines)
