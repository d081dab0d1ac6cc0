"""Reference-based video metrics in plain numpy: PSNR, SSIM and dynamic time warping.

These are the pixel and sequence scores that sign-language production papers report. They are
pure functions of arrays so that tests can check them against independent implementations
(scikit-image's `peak_signal_noise_ratio` / `structural_similarity`) and so that both command
line tools compute the same numbers (SSIM runs in float32 through BLAS, so two processes
may differ in its ninth digit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# SSIM as Wang et al. (2004) define it and as scikit-image computes it with
# gaussian_weights=True, use_sample_covariance=False: an 11-tap Gaussian window of sigma 1.5.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(generated: np.ndarray, reference: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over the whole clip (one MSE over every pixel), the
    convention of video-generation papers; identical clips give +inf."""
    _check_same_shape(generated, reference)
    err = np.mean((generated.astype(np.float64) - reference.astype(np.float64)) ** 2)
    if err == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range ** 2 / err))


def _gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def blur_matrix(n: int, taps: np.ndarray) -> np.ndarray:
    """(n, n) matrix that applies the 1-D filter `taps` along an axis of length n with mirror
    padding (scipy.ndimage's 'reflect': d c b a | a b c d). Filtering as a matrix product runs
    through BLAS, ~7x faster than summing shifted copies, and is exact in float64."""
    radius = len(taps) // 2
    rows = np.arange(n)[:, None]
    cols = rows + np.arange(-radius, radius + 1)[None, :]
    cols = np.where(cols < 0, -cols - 1, cols)
    cols = np.where(cols >= n, 2 * n - cols - 1, cols)
    if cols.min() < 0 or cols.max() >= n:
        raise ValueError(f"an axis of {n} is too short for a {len(taps)}-tap filter")
    matrix = np.zeros((n, n))
    np.add.at(matrix, (np.broadcast_to(rows, cols.shape), cols), np.broadcast_to(taps, cols.shape))
    return matrix


def ssim_frames(generated: np.ndarray, reference: np.ndarray,
                data_range: float = 255.0) -> np.ndarray:
    """Mean SSIM of each frame of two (F, H, W, C) clips, averaged over channels.

    The local statistics use the Gaussian window over the spatial axes only; the border where
    the window would leave the image is excluded from the mean, as scikit-image does.
    """
    _check_same_shape(generated, reference)
    if generated.ndim != 4:
        raise ValueError(f"expected clips shaped (F, H, W, C), got {generated.shape}")
    taps = _gaussian_taps()
    pad = len(taps) // 2
    if min(generated.shape[1:3]) <= 2 * pad:
        raise ValueError(f"frames of {generated.shape[1:3]} are too small for SSIM's "
                         f"{len(taps)}x{len(taps)} window")
    # Channels first, so the blur is one batched (H, H) @ image @ (W, W) product, in float32
    # (3.5x faster than float64; SSIM is most of `eval --reference`'s time once keypoints are
    # cached). The pixels are centred on mid-range first: variances come from E[x^2] - E[x]^2,
    # and centring keeps those terms small, so float32 stays within ~1e-5 of scikit-image's
    # float64 SSIM; identical clips still give exactly 1.
    mid = np.float32(data_range / 2)
    x = np.moveaxis(generated, -1, 1).astype(np.float32) - mid
    y = np.moveaxis(reference, -1, 1).astype(np.float32) - mid
    stats = np.stack([x, y, x * x, y * y, x * y])
    rows = blur_matrix(x.shape[2], taps).astype(np.float32)
    cols = blur_matrix(x.shape[3], taps).T.astype(np.float32)
    stats = rows @ stats @ cols
    ux, uy, uxx, uyy, uxy = stats
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    ux, uy = ux + mid, uy + mid  # the luminance term needs the uncentred means
    c1, c2 = np.float32((SSIM_K1 * data_range) ** 2), np.float32((SSIM_K2 * data_range) ** 2)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s[..., pad:-pad, pad:-pad].mean(axis=(1, 2, 3), dtype=np.float64)


def ssim(generated: np.ndarray, reference: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of two clips: the mean of the per-frame SSIM (1 for identical clips)."""
    return float(ssim_frames(generated, reference, data_range).mean())


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"clips differ in shape: {a.shape} vs {b.shape}; resample the "
                         "reference to the generated size first")


# ------------------------------------------------------------------- dynamic time warping


@dataclass(frozen=True)
class Alignment:
    """A DTW result: the mean cost along the optimal path, and the path as (i, j) pairs."""

    mean_cost: float
    total_cost: float
    path: tuple[tuple[int, int], ...]


def dtw(cost: np.ndarray) -> Alignment:
    """Dynamic time warping over a pairwise cost matrix (n, m).

    The path runs from (0, 0) to (n-1, m-1) with steps (1, 0), (0, 1) and (1, 1) and minimises
    the summed cost; `mean_cost` divides that sum by the path's length, so the score stays in
    the cost's own unit (a DTW-MJE in shoulder widths) whatever the clip lengths. A copy of a
    sequence that is delayed, sped up or slowed down aligns at zero cost.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or 0 in cost.shape:
        raise ValueError(f"DTW needs a non-empty (n, m) cost matrix, got {cost.shape}")
    if not np.all(np.isfinite(cost)):
        raise ValueError("DTW cost matrix has non-finite entries")
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        row, prev, c = acc[i], acc[i - 1], cost[i - 1]
        # diagonal and vertical moves vectorised; the horizontal recursion runs left to right
        best = np.minimum(prev[1:], prev[:-1]) + c
        for j in range(1, m + 1):
            row[j] = min(best[j - 1], row[j - 1] + c[j - 1])
    path = [(n - 1, m - 1)]
    i, j = n, m
    while (i, j) != (1, 1):
        moves = ((acc[i - 1, j - 1], i - 1, j - 1), (acc[i - 1, j], i - 1, j),
                 (acc[i, j - 1], i, j - 1))
        _, i, j = min(moves, key=lambda t: t[0])
        path.append((i - 1, j - 1))
    total = float(acc[n, m])
    return Alignment(total / len(path), total, tuple(reversed(path)))


def mean_joint_error(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Pairwise mean joint error between the frames of two keypoint tracks.

    a (n, J, 2) and b (m, J, 2) -> (n, m): the mean over joints of the Euclidean distance,
    divided by `scale` (a shoulder width, so the unit does not depend on the image size).
    Joints missing (NaN) in either frame are left out of that pair's mean.
    """
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"keypoint layouts differ: {a.shape[1:]} vs {b.shape[1:]}")
    d = np.linalg.norm(a[:, None] - b[None, :], axis=-1)  # (n, m, J)
    valid = np.isfinite(d)
    count = valid.sum(axis=-1)
    total = np.where(valid, d, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan) / scale


def dtw_mje(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> float:
    """DTW-MJE: dynamic time warping over the mean joint error (in units of `scale`)."""
    cost = mean_joint_error(a, b, scale)
    if np.isnan(cost).any():
        raise ValueError("keypoint tracks share no joint in some frame pair; fill gaps first")
    return dtw(cost).mean_cost


def path_length(track: np.ndarray) -> float:
    """Total distance a point travels along a (F, 2) track (NaN steps skipped)."""
    steps = np.linalg.norm(np.diff(track, axis=0), axis=-1)
    return float(np.nansum(steps))



def standard_error(values: list[float]) -> float:
    """Standard error of the mean; NaN under 2 values or with an infinite one (identical clips'
    PSNR), where no spread is defined."""
    v = np.asarray(values, np.float64)
    if len(v) < 2 or not np.isfinite(v).all():
        return math.nan
    return float(v.std(ddof=1) / math.sqrt(len(v)))


def noise_level(frames: np.ndarray) -> float:
    """Robust estimate of the Gaussian noise in a (F, H, W, C) clip, in grey levels: the median
    absolute finest-scale diagonal Haar coefficient over 0.6745 (Donoho & Johnstone 1994,
    https://doi.org/10.1093/biomet/81.3.425). Edges touch few coefficients and so barely move
    the median, which is why it tells sampling noise from sharp, clean detail."""
    if frames.ndim != 4 or frames.shape[1] < 2 or frames.shape[2] < 2:
        raise ValueError(f"expected (F, H, W, C) frames of at least 2 x 2, got {frames.shape}")
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    x = frames[:, :h, :w].astype(np.float64)
    diagonal = (x[:, 0::2, 0::2] - x[:, 0::2, 1::2] - x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) / 2
    return float(np.median(np.abs(diagonal)) / 0.6745)


def noise_ratio(generated: list[np.ndarray], references: list[np.ndarray]) -> float:
    """Generated clips' mean `noise_level` over the references': 1 = as clean as real frames,
    above 1 = noise the sampler left."""
    if not generated or not references:
        raise ValueError("noise_ratio needs at least one generated and one reference clip")
    ref = float(np.mean([noise_level(r) for r in references]))
    gen = float(np.mean([noise_level(g) for g in generated]))
    return gen / ref if ref > 0 else float("inf")
