"""The metrics' own reference scores: what a clip scores against itself, against a retimed or
mirrored copy, against another clip of the same caption and against a different caption.

A DTW-MJE of 0.3 means nothing until one knows that the same clip delayed scores ~0.05 and a
different sign ~0.4; these rows give that scale, on real reference clips when a folder is given
(`benchmarks/metric_reference.py --reference DIR`), else on clips of a bundled photo
(`benchmarks.metric_reference.synthetic_rows`, out of the core with the clips it makes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.config import DataConfig
from shared.data.clips import DataReport, find_clips
from shared.data.preprocess import preprocess_clip
from shared.data.video import VideoError, read_video
from shared.evaluation.metrics import psnr, ssim, standard_error
from shared.evaluation.pose import PoseCache
from shared.evaluation.refeval import PoseSummary, caption_key, pose_distance

log = logging.getLogger("text2sign.calibration")


@dataclass(frozen=True)
class Row:
    """Mean scores over a row's pairs, with their standard errors (NaN under 2 pairs), so two
    rows can be told apart or not; DTW-MJE only over the pairs with a body in both clips."""

    name: str
    pairs: int
    psnr: float
    ssim: float
    dtw_mje: float | None
    psnr_se: float = math.nan
    ssim_se: float = math.nan
    dtw_se: float = math.nan
    dtw_pairs: int | None = None  # pairs DTW-MJE was measured on (None: not counted)


def score(a: np.ndarray, b: np.ndarray, cache: PoseCache) -> tuple[float, float, float | None]:
    """PSNR, SSIM and DTW-MJE of clip `a` scored against reference clip `b` (same shape)."""
    d = pose_distance(PoseSummary.of(cache.track(a)), PoseSummary.of(cache.track(b)))
    return psnr(a, b), ssim(a, b), d


def delayed_copy(clip: np.ndarray, frames: int) -> np.ndarray:
    """The clip starting `frames` late (its first frame held), same length, end cut off."""
    return np.concatenate([np.repeat(clip[:1], frames, axis=0), clip[:len(clip) - frames]])


def row_of(name: str, scores: list[tuple[float, float, float | None]]) -> Row:
    """A row from its pairs' (PSNR, SSIM, DTW-MJE) scores; DTW-MJE None means no body."""
    psnrs, ssims = [s[0] for s in scores], [s[1] for s in scores]
    dtws = [s[2] for s in scores if s[2] is not None]
    return Row(name, len(scores), float(np.mean(psnrs)), float(np.mean(ssims)),
               float(np.mean(dtws)) if dtws else None, standard_error(psnrs),
               standard_error(ssims), standard_error(dtws), len(dtws))


def transformed_rows(clips: list[np.ndarray], cache: PoseCache) -> Iterator[Row]:
    """Each clip against itself, its delayed copy and its mirror image."""
    delay = max(1, len(clips[0]) // 7)
    yield row_of("itself", [score(c, c, cache) for c in clips])
    yield row_of(f"delayed {delay} frames", [score(delayed_copy(c, delay), c, cache)
                                              for c in clips])
    yield row_of("mirrored", [score(np.ascontiguousarray(c[:, :, ::-1]), c, cache)
                              for c in clips])


def folder_rows(folder: Path, cache: PoseCache, frames: int = 28, size: int = 128,
                max_clips: int = 40, labels_file: str | None = None) -> list[Row]:
    """Reference scores on real clips: transformed copies, another clip of the same caption
    (another signer or take), and a clip of a different caption.

    Two clips of one caption are scored once, not once each way: the metrics are symmetric, so
    the reverse pair would repeat the score and shrink the row's standard error for nothing.
    """
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
        mates = [j for j in range(i + 1, len(found)) if keys[j] == key]
        strangers = [j for j in range(len(found)) if keys[j] != key]
        same.extend(score(clips[i], clips[j], cache) for j in mates)
        if strangers:
            other.append(score(clips[i], clips[strangers[i % len(strangers)]], cache))
    if same:
        rows.append(row_of("same caption, another clip", same))
    if other:
        rows.append(row_of("different caption", other))
    return rows


def _mean_se(mean: float | None, se: float, digits: int) -> str:
    """`mean ± se`, the mean alone where no standard error is defined, `n/a` without a mean."""
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(se) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def format_rows(rows: list[Row]) -> str:
    """One line per row: means ± standard errors, and DTW n, the pairs with a body in both clips
    that DTW-MJE averages (a pair without one has no pose score)."""
    lines = [f"{'scored against the clip':30s} {'pairs':>5s} {'PSNR dB':>14s} {'SSIM':>15s} "
             f"{'DTW-MJE':>15s} {'DTW n':>5s}"]
    for r in rows:
        bodies = "" if r.dtw_pairs is None else str(r.dtw_pairs)
        lines.append(f"{r.name:30s} {r.pairs:5d} {_mean_se(r.psnr, r.psnr_se, 2):>14s} "
                     f"{_mean_se(r.ssim, r.ssim_se, 3):>15s} "
                     f"{_mean_se(r.dtw_mje, r.dtw_se, 3):>15s} {bodies:>5s}".rstrip())
    return "\n".join(lines)
