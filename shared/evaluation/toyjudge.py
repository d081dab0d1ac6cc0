"""Toy-signer judge: track both gloved hands in a clip and score it against captions.

A toy clip's meaning can be read back from its hands alone (`shared.data.toy` draws every word as a
deterministic two-hand motion in gloves no other colour of the signer can pass for), so text
faithfulness of generated clips is measured here, with numpy alone.

`track_hands` recovers both hands per frame; `score_clips` shifts each trajectory onto every
candidate prompt's canonical trajectory by the difference of their mean positions (clipped to the
signer's offset range), compares them by banded dynamic time warping (absorbing the signer's
tempo), and reports the error against the clip's own caption and how often the own caption is
the closest candidate (prompt identification; chance = 1 / P).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from shared.data.toy import (
    GLOVE_HUES,
    HAND_RADIUS,
    caption_text,
    parse_caption,
    reference_trajectory,
)

# --------------------------------------------------------------------------------------------
# Hand tracking
# --------------------------------------------------------------------------------------------

# Chroma (along a glove's hue) that counts as no glove / surely glove, in 0..255 units: other
# signer colours stay below ~60, gloves start near 150.
_CHROMA_LO, _CHROMA_HI = 60.0, 100.0
_HUE_TOL = math.tan(math.radians(40.0))  # max angle between a pixel's hue and the glove's
_MIN_PEAK_DENSITY = 0.3  # glove fraction in the densest hand-sized box
_MIN_COMPACTNESS = 0.25  # fraction of all glove-coloured weight near that box
_MIN_AREA = 0.15  # glove weight as a fraction of a canonical hand's area


def _glove_weights(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel evidence in [0, 1] for each glove, from the opponent-colour chroma plane
    (R - (G + B) / 2, (G - B) * sqrt(3) / 2), whose angle is the hue: the chroma component
    along the glove's hue, zeroed beyond a hue tolerance. (Elementwise on purpose: a BLAS
    matrix product here is no faster and stalls when the cores are busy.)"""
    rgb = np.asarray(rgb, np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    cx = r - np.float32(0.5) * (g + b)
    cy = np.float32(math.sqrt(3.0) / 2.0) * (g - b)
    out = []
    for hue in GLOVE_HUES:
        c, s = np.float32(math.cos(math.radians(hue))), np.float32(math.sin(math.radians(hue)))
        along = cx * c + cy * s
        across = np.abs(cy * c - cx * s)
        w = np.clip((along - _CHROMA_LO) * np.float32(1.0 / (_CHROMA_HI - _CHROMA_LO)), 0.0, 1.0)
        w[across > along * np.float32(_HUE_TOL)] = 0.0
        out.append(w)
    return out[0], out[1]


def _locate(w: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre (F, 2) as (x, y) pixel indices and a found flag (F,) of a hand-sized blob in
    weight maps (F, h, w): the densest hand-sized box, refined twice by the weighted centroid
    of a window around it. Scattered evidence (noise) has no dense box and no compact mass."""
    F, h, wd = w.shape
    side = int(max(3, min(h, wd, round(1.6 * radius))))
    side -= 1 - side % 2  # odd, so a box has a centre pixel
    side = max(1, min(side, h - (1 - h % 2), wd - (1 - wd % 2)))
    ii = np.zeros((F, h + 1, wd + 1), np.float32)
    ii[:, 1:, 1:] = w.cumsum(1).cumsum(2)
    box = ii[:, side:, side:] - ii[:, :-side, side:] - ii[:, side:, :-side] + ii[:, :-side, :-side]
    flat = box.reshape(F, -1)
    k = flat.argmax(1)
    density = flat[np.arange(F), k] / (side * side)
    cy = (k // box.shape[2] + side // 2).astype(np.float32)
    cx = (k % box.shape[2] + side // 2).astype(np.float32)
    total = ii[:, -1, -1].astype(np.float64)
    rho = max(1.5, 1.7 * radius)
    yy = np.arange(h, dtype=np.float32)
    xx = np.arange(wd, dtype=np.float32)
    mass = np.zeros(F)
    for _ in range(2):  # separable window: two batched mat-vecs instead of a masked copy
        my = (np.abs(yy[None] - cy[:, None]) <= rho).astype(np.float32)  # (F, h)
        mx = (np.abs(xx[None] - cx[:, None]) <= rho).astype(np.float32)  # (F, w)
        rows = np.einsum("fyx,fx->fy", w, mx) * my  # window mass per row
        cols = np.einsum("fyx,fy->fx", w, my) * mx  # window mass per column
        mass = rows.sum(1, dtype=np.float64)
        safe = np.maximum(mass, 1e-12)
        cy = np.where(mass > 0, (rows * yy).sum(1) / safe, cy).astype(np.float32)
        cx = np.where(mass > 0, (cols * xx).sum(1) / safe, cx).astype(np.float32)
    found = ((density >= _MIN_PEAK_DENSITY) & (mass >= _MIN_COMPACTNESS * np.maximum(total, 1e-12))
             & (mass >= _MIN_AREA * math.pi * radius * radius))
    return np.stack([cx, cy], axis=-1).astype(np.float64), found


def track_hands(clip: np.ndarray) -> np.ndarray:
    """(F, 2, 2) normalised (x, y) of hand 0 (green, image left) and hand 1 (magenta, image
    right) per frame; NaN where a hand is not found. Works for any frame size from ~16 px up:
    large frames are box-averaged to 60-119 px high first (the answer does not need more, and it
    keeps 400 reference clips to seconds)."""
    v = np.asarray(clip)
    if v.ndim == 3:
        v = v[None]
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"expected a clip shaped (F, H, W, 3), got {v.shape}")
    if v.dtype != np.uint8:  # colour thresholds are in 0..255 units
        raise ValueError(f"expected uint8 pixels, got {v.dtype}; see shared.data.video.to_uint8")
    F, H, W, _ = v.shape
    k = max(1, H // 60)
    if k > 1:  # box average by k x k: add row phases, then column phases (no 6-D reduce)
        hk, wk = H // k, W // k
        rows = v[:, 0:hk * k:k, :wk * k].astype(np.float32)
        for dy in range(1, k):
            rows += v[:, dy:hk * k:k, :wk * k]
        cols = rows.reshape(F, hk, wk, k, 3)
        v = cols[:, :, :, 0].copy()
        for dx in range(1, k):
            v += cols[:, :, :, dx]
        v *= np.float32(1.0 / (k * k))
    else:
        v = v.astype(np.float32)
    radius = HAND_RADIUS * H / k
    out = np.full((F, 2, 2), np.nan)
    for hand, w in enumerate(_glove_weights(v)):
        centre, found = _locate(w, radius)
        x = ((centre[:, 0] + 0.5) * k - W / 2.0) / H
        y = (centre[:, 1] + 0.5) * k / H
        out[found, hand, 0] = x[found]
        out[found, hand, 1] = y[found]
    return out


# --------------------------------------------------------------------------------------------
# Trajectory comparison and the faithfulness score
# --------------------------------------------------------------------------------------------

#: Cost of a frame where a hand was not found, in frame heights (wrong prompts cost ~0.1).
MISSING_PENALTY = 0.5
#: Sakoe-Chiba band: the fraction of the clip a frame may be matched away from its own time.
DTW_BAND = 0.12
#: Largest (x, y) shift, in frame heights, that the comparison forgives: the signer's offset
#: range plus a margin. Full centring would also erase where a symmetric sign is made (hands
#: high vs low), which is part of what tells words apart.
MAX_SHIFT = (0.07, 0.05)


def _mean_position(tracks: np.ndarray) -> np.ndarray:
    """(N, 2) mean (x, y) over found frames and both hands (0 where nothing was found)."""
    t = np.asarray(tracks, np.float64)
    valid = ~np.isnan(t)
    count = valid.sum((1, 2))
    total = np.where(valid, t, 0.0).sum((1, 2))
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def trajectory_errors(tracks: np.ndarray, references: np.ndarray, band: float = DTW_BAND,
                      max_shift: tuple[float, float] = MAX_SHIFT) -> np.ndarray:
    """(N, P) banded-DTW error between N tracked trajectories (N, F, 2, 2) and P references
    (P, R, 2, 2). Each pair is first aligned by the difference of their mean positions, clipped
    to `max_shift` (the signer's position). The local cost is the mean over the two hands of
    the Euclidean distance (frame heights), or MISSING_PENALTY for a hand not found in that
    frame; the symmetric step pattern normalised by F + R makes the error an average distance
    whatever the lengths. Vectorised over all pairs, row by row: the horizontal moves within a
    row are a min-plus prefix scan, so the Python loop is only F long."""
    x = np.asarray(tracks, np.float64)
    r = np.asarray(references, np.float64)
    N, F = x.shape[:2]
    P, R = r.shape[:2]
    if np.isnan(r).any():
        raise ValueError("references must not contain NaN")
    lim = np.asarray(max_shift, np.float64)
    shift = np.clip(_mean_position(x)[:, None] - _mean_position(r)[None], -lim, lim)  # (N,P,2)
    ti = np.linspace(0.0, 1.0, F) if F > 1 else np.zeros(1)
    tj = np.linspace(0.0, 1.0, R) if R > 1 else np.zeros(1)
    width = max(band, 1.0 / max(F - 1, 1), 1.0 / max(R - 1, 1)) + 1e-9
    allowed = np.abs(ti[:, None] - tj[None, :]) <= width
    out = np.empty((N, P))
    chunk = max(1, 2_000_000 // (P * F * R))  # clips per step: temporaries stay ~100 MB
    for lo in range(0, N, chunk):
        xs = x[lo:lo + chunk, None, :, None]  # (n, 1, F, 1, 2, 2)
        rs = r[None, :, None, :] + shift[lo:lo + chunk, :, None, None, None, :]  # (n,P,1,R,2,2)
        d = np.sqrt(((xs - rs) ** 2).sum(-1))  # (n, P, F, R, 2)
        cost = np.where(np.isnan(d), MISSING_PENALTY, d).mean(-1)
        out[lo:lo + chunk] = _dtw(cost, allowed)
    return out


def _dtw(cost: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Banded symmetric DTW over the last two axes of cost (..., F, R): D[i, j] = c[i, j] +
    min(D[i-1, j-1] + c[i, j], D[i-1, j], D[i, j-1]), normalised by F + R."""
    F, R = cost.shape[-2:]
    inf = np.inf
    prev = np.full(cost.shape[:-2] + (R,), inf)
    for i in range(F):
        c = cost[..., i, :]
        if i == 0:
            a = np.full_like(c, inf)
            a[..., 0] = 2.0 * c[..., 0]
        else:
            diag = np.concatenate([np.full(c.shape[:-1] + (1,), inf), prev[..., :-1]], -1)
            a = np.minimum(diag + 2.0 * c, prev + c)
        a = np.where(allowed[i], a, inf)
        # Horizontal moves: D[j] = min_k<=j (a[k] + sum_{k<l<=j} c[l]) = S[j] + min(a[k] - S[k])
        s = np.cumsum(c, -1)
        with np.errstate(invalid="ignore"):
            cur = s + np.minimum.accumulate(a - s, axis=-1)
        prev = np.where(allowed[i], cur, inf)
    return prev[..., -1] / (F + R)


@dataclass(eq=False)
class ToyScore:
    """Text faithfulness of a set of clips. `accuracy` is the fraction of clips whose own
    caption is the closest candidate (chance = 1 / num_prompts); `errors` the banded-DTW
    hand-position error against the own caption, in frame heights."""

    accuracy: float
    chance: float
    num_clips: int
    num_prompts: int
    mean_error: float
    median_error: float
    detection_rate: float  # fraction of (frame, hand) where a hand was found
    candidates: tuple[str, ...]
    errors: np.ndarray = field(repr=False)  # (N,) error against the own caption
    error_matrix: np.ndarray = field(repr=False)  # (N, P) against every candidate
    predictions: tuple[str, ...] = field(repr=False)  # closest candidate per clip ('' if none)
    correct: np.ndarray = field(repr=False)  # (N,) bool

    @property
    def chance_stderr(self) -> float:
        """Standard error of the accuracy of a guesser at chance, for 'is this above chance'."""
        return math.sqrt(self.chance * (1.0 - self.chance) / max(self.num_clips, 1))

    def format(self) -> str:
        z = (self.accuracy - self.chance) / max(self.chance_stderr, 1e-12)
        return (f"Toy-signer faithfulness on {self.num_clips} clips: prompt identification "
                f"{self.accuracy:.1%} among {self.num_prompts} candidate prompts (chance "
                f"{self.chance:.1%}, {z:+.1f} standard errors from it); hand-trajectory error "
                f"against the own caption {self.mean_error:.3f} mean / {self.median_error:.3f} "
                f"median frame heights; hands found in {self.detection_rate:.1%} of frames.")

    __str__ = format

    def summary(self) -> dict[str, float]:
        """The headline numbers, for logs and JSON reports."""
        return {"accuracy": self.accuracy, "chance": self.chance,
                "num_clips": float(self.num_clips), "num_prompts": float(self.num_prompts),
                "mean_error": self.mean_error, "median_error": self.median_error,
                "detection_rate": self.detection_rate}


def score_clips(clips: Sequence[np.ndarray] | np.ndarray | None, captions: Sequence[str],
                candidate_prompts: Sequence[str] | None = None,
                tracks: Sequence[np.ndarray] | None = None) -> ToyScore:
    """Judge how well each clip performs its caption. Candidates default to the distinct
    captions; a clip counts as correct when its own caption has the lowest error of all
    candidates (a clip with no hand found anywhere counts as wrong). Clips may differ in size
    and length; `tracks` (from `track_hands`) skips the tracking."""
    if tracks is None and (clips is None or len(clips) != len(captions)):
        raise ValueError(f"{0 if clips is None else len(clips)} clips but {len(captions)} "
                         "captions")
    own = [caption_text(parse_caption(c)) for c in captions]
    if not own:
        raise ValueError("no clips to score")
    cands = (list(dict.fromkeys(own)) if candidate_prompts is None
             else list(dict.fromkeys(caption_text(parse_caption(c)) for c in candidate_prompts)))
    missing = sorted(set(own) - set(cands))
    if missing:
        raise ValueError(f"captions not among the candidate prompts: {missing}")
    if tracks is None:
        tracks = [track_hands(c) for c in clips]
    if len(tracks) != len(own):
        raise ValueError(f"{len(tracks)} tracks but {len(own)} captions")
    N, P = len(own), len(cands)
    matrix = np.full((N, P), np.inf)
    by_len: dict[int, list[int]] = {}
    for i, t in enumerate(tracks):
        by_len.setdefault(len(t), []).append(i)
    for F, idx in by_len.items():
        refs = np.stack([reference_trajectory(c, F) for c in cands])
        matrix[idx] = trajectory_errors(np.stack([tracks[i] for i in idx]), refs)
    own_idx = np.array([cands.index(c) for c in own])
    errors = matrix[np.arange(N), own_idx]
    none_found = np.array([np.isnan(t).all() for t in tracks])
    best = matrix.argmin(1)
    correct = (best == own_idx) & ~none_found
    found = np.concatenate([(~np.isnan(t[..., 0])).ravel() for t in tracks]) if N else np.zeros(0)
    return ToyScore(
        accuracy=float(correct.mean()) if N else float("nan"),
        chance=1.0 / P if P else float("nan"),
        num_clips=N, num_prompts=P,
        mean_error=float(errors.mean()) if N else float("nan"),
        median_error=float(np.median(errors)) if N else float("nan"),
        detection_rate=float(found.mean()) if found.size else float("nan"),
        candidates=tuple(cands), errors=errors, error_matrix=matrix,
        predictions=tuple("" if none_found[i] else cands[best[i]] for i in range(N)),
        correct=correct,
    )
