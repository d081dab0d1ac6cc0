"""shared.evaluation.metrics and shared.evaluation.fvd against independent implementations:
scikit-image's PSNR and SSIM, a plain recursive DTW, scipy's matrix square root for the Fréchet
distance."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from shared.evaluation.fvd import frechet_distance, fvd, gaussian_stats, i3d_input
from shared.evaluation.metrics import (
    _gaussian_taps,
    blur_matrix,
    dtw,
    dtw_mje,
    mean_joint_error,
    noise_level,
    noise_ratio,
    path_length,
    psnr,
    ssim,
    ssim_frames,
)
from shared.evaluation.pose import (
    LEFT_SHOULDER,
    NUM_JOINTS,
    RIGHT_SHOULDER,
    PoseTrack,
    body_normalised,
)

skm = pytest.importorskip("skimage.metrics", reason='scikit-image comes with ".[pose]"')


def clips(seed: int = 0, shape=(3, 32, 40, 3)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    noise = rng.normal(0, 25, shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    return a, b


def test_psnr_matches_skimage_over_the_whole_clip():
    a, b = clips()
    assert psnr(b, a) == pytest.approx(skm.peak_signal_noise_ratio(a, b, data_range=255),
                                       rel=1e-12)
    assert psnr(a, a) == float("inf")


def skimage_ssim(generated: np.ndarray, reference: np.ndarray) -> list[float]:
    return [skm.structural_similarity(x, y, data_range=255, channel_axis=-1,
                                      gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False)
            for x, y in zip(reference, generated)]


def test_ssim_matches_skimage_gaussian_window_per_frame():
    a, b = clips(1)
    # float32 arithmetic, centred on mid-range: within 1e-6 of scikit-image's float64
    np.testing.assert_allclose(ssim_frames(b, a), skimage_ssim(b, a), rtol=1e-6)
    assert ssim(a, a) == 1.0
    assert ssim(a, 255 - a) < 0


def test_float32_ssim_holds_on_bright_low_contrast_frames():
    """float32's hardest case: means near 255 and variances of a few grey levels, where
    E[x^2] - E[x]^2 cancels most digits; still within 2e-6 of scikit-image's float64."""
    rng = np.random.default_rng(7)
    a = rng.integers(240, 256, (2, 48, 48, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-2, 3, a.shape), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(ssim_frames(b, a), skimage_ssim(b, a), rtol=2e-6)


def test_pixel_metrics_refuse_mismatched_shapes():
    a, _ = clips()
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, a[:, :-1])


def reference_dtw(cost: np.ndarray) -> float:
    """Textbook recursion D(i, j) = c(i, j) + min(D(i-1, j), D(i, j-1), D(i-1, j-1))."""

    @functools.cache
    def d(i: int, j: int) -> float:
        if i == 0 and j == 0:
            return cost[0, 0]
        best = min(d(i - 1, j) if i else np.inf, d(i, j - 1) if j else np.inf,
                   d(i - 1, j - 1) if i and j else np.inf)
        return cost[i, j] + best

    return d(cost.shape[0] - 1, cost.shape[1] - 1)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (6, 1), (7, 9), (12, 4)])
def test_dtw_total_matches_the_recursion_and_the_path_is_valid(shape):
    cost = np.random.default_rng(shape[0] * 10 + shape[1]).random(shape)
    result = dtw(cost)
    assert result.total_cost == pytest.approx(reference_dtw(cost))
    path = np.array(result.path)
    assert tuple(path[0]) == (0, 0) and tuple(path[-1]) == (shape[0] - 1, shape[1] - 1)
    steps = np.diff(path, axis=0)
    assert set(map(tuple, steps)) <= {(1, 0), (0, 1), (1, 1)}
    assert cost[path[:, 0], path[:, 1]].sum() == pytest.approx(result.total_cost)
    assert result.mean_cost == pytest.approx(result.total_cost / len(path))


def test_dtw_mje_is_zero_for_a_resampled_copy_and_positive_for_another_motion():
    rng = np.random.default_rng(3)
    track = np.cumsum(rng.normal(size=(10, 5, 2)), axis=0)
    slowed = np.repeat(track, 3, axis=0)  # each frame held three times
    delayed = np.concatenate([track[:1].repeat(4, axis=0), track])
    assert dtw_mje(track, slowed) == 0.0
    assert dtw_mje(track, delayed) == 0.0
    assert dtw_mje(track, track[::-1]) > 0.5
    # the unit: moving every joint by 2 pixels with scale 4 costs half a unit
    assert dtw_mje(track, track + [2.0, 0.0], scale=4.0) == pytest.approx(0.5)


def test_dtw_mje_in_each_clips_body_frame_ignores_where_and_how_large_the_signer_is():
    rng = np.random.default_rng(4)
    points = np.cumsum(rng.normal(size=(12, NUM_JOINTS, 2)), axis=0) + 100.0
    points[:, LEFT_SHOULDER] = [120.0, 100.0]  # shoulders 40 px apart, centred on (100, 100)
    points[:, RIGHT_SHOULDER] = [80.0, 100.0]
    found = np.ones(12, bool)

    def track(k: np.ndarray) -> PoseTrack:
        return PoseTrack(k.astype(np.float32), found, np.ones((12, 2), bool))

    base = body_normalised(track(points))
    assert np.allclose(base[:, LEFT_SHOULDER], [0.5, 0.0])  # origin: shoulders; unit: width
    # the same motion by a signer 0.6 times as large, standing elsewhere in the frame
    elsewhere = body_normalised(track(0.6 * points + [37.0, -12.0]))
    assert dtw_mje(base, elsewhere) == pytest.approx(0.0, abs=1e-5)
    # the hands move relative to the body: that is the sign, and it still counts
    moved = points.copy()
    moved[:, 11:] += [20.0, 0.0]
    assert dtw_mje(base, body_normalised(track(moved))) == pytest.approx(0.5 * 42 / 53, rel=1e-5)


def test_mean_joint_error_skips_joints_missing_in_either_frame():
    a = np.zeros((1, 3, 2))
    b = np.array([[[3.0, 4.0], [np.nan, np.nan], [0.0, 1.0]]])
    assert mean_joint_error(a, b)[0, 0] == pytest.approx((5.0 + 1.0) / 2)
    assert path_length(np.array([[0, 0], [3, 4], [np.nan, np.nan], [3, 4]], float)) == 5.0


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 6))
    y = rng.normal(0.5, 2.0, size=(30, 6)) @ rng.normal(size=(6, 6))
    mu1, c1 = gaussian_stats(x)
    mu2, c2 = gaussian_stats(y)
    expected = (np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2)
                - 2 * np.trace(linalg.sqrtm(c1 @ c2).real))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-6)
    assert fvd(x, x) == pytest.approx(0.0, abs=1e-8)
    # rank-deficient covariances (fewer clips than feature dimensions) stay finite and >= 0
    few = rng.normal(size=(5, 20))
    assert 0 <= fvd(few, few + 1.0) < np.inf


def test_i3d_input_is_224_square_in_model_range():
    clip = np.zeros((4, 16, 16, 3), np.uint8)
    clip[..., 0] = 255
    x = i3d_input(clip)
    assert x.shape == (4, 224, 224, 3) and x.dtype == np.float32
    assert x[..., 0].min() == 1.0 and x[..., 1].max() == -1.0


@pytest.mark.parametrize("n", [11, 12, 40])
def test_blur_matrix_is_scipy_reflect_filtering(n):
    ndimage = pytest.importorskip("scipy.ndimage")
    taps = _gaussian_taps()
    x = np.random.default_rng(n).random((3, n))
    expected = ndimage.correlate1d(x, taps, axis=1, mode="reflect")
    np.testing.assert_allclose(x @ blur_matrix(n, taps).T, expected, rtol=1e-12)
    # each row keeps the filter's total weight: a flat image stays flat at the borders too
    np.testing.assert_allclose(blur_matrix(n, taps).sum(axis=1), 1.0)


def test_blur_matrix_refuses_an_axis_shorter_than_the_filter_radius():
    with pytest.raises(ValueError, match="too short"):
        blur_matrix(3, _gaussian_taps())



def test_noise_level_recovers_added_noise_and_ignores_sharp_edges():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    edges = np.where((yy - 30) ** 2 + (xx - 25) ** 2 < 300, 200.0, 50.0)  # a disc, flat ground
    clip = np.repeat(np.stack([edges] * 3, -1)[None], 6, axis=0)
    assert noise_level(clip.astype(np.uint8)) < 0.5  # clean, however sharp its edges
    assert np.std(np.diff(clip, axis=2)) > 10  # where a plain high-pass sees detail
    for sigma in (3.0, 12.0):
        noisy = clip + rng.normal(0, sigma, clip.shape)
        assert noise_level(noisy) == pytest.approx(sigma, rel=0.1)


def test_noise_ratio_is_one_for_clean_frames_and_grows_with_noise():
    rng = np.random.default_rng(1)
    base = rng.normal(128, 2, (4, 32, 32, 3))  # real frames carry a little noise of their own
    noisier = base + rng.normal(0, 8, base.shape)
    assert noise_ratio([base], [base]) == pytest.approx(1.0)
    assert noise_ratio([noisier], [base]) == pytest.approx(np.hypot(2, 8) / 2, rel=0.15)
    with pytest.raises(ValueError, match="at least one"):
        noise_ratio([], [base])
    with pytest.raises(ValueError, match="at least 2 x 2"):
        noise_level(base[:, :1])
