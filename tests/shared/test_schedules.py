"""Noise schedules against diffusers (the reference) and against the maths they encode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from shared.config import DiffusionConfig
from shared.diffusion.schedules import NoiseSchedule, make_betas, rescale_zero_terminal_snr

DIFFUSERS_NAME = {"linear": "linear", "scaled_linear": "scaled_linear",
                  "cosine": "squaredcos_cap_v2"}

# diffusers builds betas and their cumulative product in float32; we use float64. A float32
# cumprod over 1000 factors drifts by up to ~1e-6 absolute, and 1 - alpha loses ~1e-7.
BETA_TOL = dict(rtol=1e-5, atol=1e-6)
# After the zero-SNR rescale, late betas are ratios of float32 alphas_cumprod values near 1e-5,
# so diffusers' own betas carry ~1e-5 relative error there.
ZERO_SNR_BETA_TOL = dict(rtol=1e-4, atol=1e-5)
ALPHA_CUMPROD_TOL = dict(rtol=1e-5, atol=2e-6)


def _reference(schedule: str, start: float, end: float, zero_snr: bool,
               steps: int = 1000) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=steps, beta_schedule=DIFFUSERS_NAME[schedule],
                         beta_start=start, beta_end=end, rescale_betas_zero_snr=zero_snr)


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize(("schedule", "start", "end", "steps"), [
    ("linear", 1e-4, 0.02, 1000),
    ("linear", 1e-3, 0.03, 250),
    ("scaled_linear", 8.5e-4, 0.012, 1000),
    ("cosine", 1e-4, 0.02, 1000),
])
def test_betas_and_alphas_cumprod_match_diffusers(schedule, start, end, steps, zero_snr):
    ours = NoiseSchedule.from_betas(make_betas(schedule, steps, start, end, zero_snr))
    ref = _reference(schedule, start, end, zero_snr, steps)
    np.testing.assert_allclose(ours.betas, ref.betas.double().numpy(),
                               **(ZERO_SNR_BETA_TOL if zero_snr else BETA_TOL))
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.double().numpy(),
                               **ALPHA_CUMPROD_TOL)


def test_from_config_reads_every_schedule_field():
    cfg = DiffusionConfig(num_train_timesteps=500, beta_schedule="scaled_linear",
                          beta_start=5e-4, beta_end=0.015, rescale_betas_zero_snr=True)
    ours = NoiseSchedule.from_config(cfg)
    ref = _reference("scaled_linear", 5e-4, 0.015, True, steps=500)
    assert ours.num_train_timesteps == 500
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.double().numpy(),
                               **ALPHA_CUMPROD_TOL)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_zero_terminal_snr_keeps_first_and_zeroes_last(schedule):
    # Lin et al. 2023, Alg. 1: the rescale pins sqrt(alphas_cumprod) at t = 0 and sends it to 0
    # at t = T - 1, and stays monotone in between.
    plain = np.cumprod(1 - make_betas(schedule, 1000, 8.5e-4, 0.012))
    rescaled = np.cumprod(1 - rescale_zero_terminal_snr(make_betas(schedule, 1000, 8.5e-4, 0.012)))
    assert rescaled[0] == pytest.approx(plain[0], rel=1e-12)
    assert rescaled[-1] == 0.0
    assert np.all(np.diff(rescaled) < 0)


def test_cosine_caps_beta_at_0_999():
    betas = make_betas("cosine", 1000)
    assert betas.max() == 0.999 and betas[-1] == 0.999
    assert np.all(betas[:-1] < 0.999)


def test_schedule_arrays_are_read_only():
    s = NoiseSchedule.from_config(DiffusionConfig())
    with pytest.raises(ValueError):
        s.alphas_cumprod[0] = 0.5


@pytest.mark.parametrize("bad", [dict(beta_schedule="sigmoid"), dict(beta_start=0.0),
                                 dict(beta_start=0.5, beta_end=2.0)])
def test_bad_schedule_is_refused(bad):
    with pytest.raises(ValueError):
        NoiseSchedule.from_config(DiffusionConfig(**bad))


def test_timesteps_are_checked():
    s = NoiseSchedule.from_config(DiffusionConfig())
    with pytest.raises(ValueError):
        s.q_sample_coefficients(np.array([0, 1000]))
    with pytest.raises(TypeError):
        s.q_sample_coefficients(np.array([0.5]))
    with pytest.raises(ValueError):
        s.target_coefficients(np.array([3]), "x0")


@pytest.fixture(scope="module")
def linear() -> NoiseSchedule:
    return NoiseSchedule.from_config(DiffusionConfig())


@pytest.fixture(scope="module")
def diffusers_linear() -> DDPMScheduler:
    return DDPMScheduler()


def test_q_sample_matches_diffusers_add_noise(linear, diffusers_linear):
    rng = np.random.default_rng(0)
    t = np.array([0, 1, 17, 500, 998, 999])
    x0 = rng.standard_normal((6, 3, 2, 4, 4)).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    a, b = linear.q_sample_coefficients(t)
    ours = a[:, None, None, None, None] * x0 + b[:, None, None, None, None] * eps
    ref = diffusers_linear.add_noise(torch.from_numpy(x0), torch.from_numpy(eps),
                                     torch.from_numpy(t))
    np.testing.assert_allclose(ours, ref.double().numpy(), rtol=1e-5, atol=1e-5)


def test_v_target_matches_diffusers_get_velocity(linear, diffusers_linear):
    rng = np.random.default_rng(1)
    t = np.array([0, 250, 999])
    x0 = rng.standard_normal((3, 8)).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    c_x0, c_eps = linear.target_coefficients(t, "v_prediction")
    ours = c_x0[:, None] * x0 + c_eps[:, None] * eps
    ref = diffusers_linear.get_velocity(torch.from_numpy(x0), torch.from_numpy(eps),
                                        torch.from_numpy(t))
    np.testing.assert_allclose(ours, ref.double().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_v_identities(schedule):
    # With v = sqrt(ac) eps - sqrt(1 - ac) x0 and x_t = sqrt(ac) x0 + sqrt(1 - ac) eps, a rotation
    # by the angle atan(sqrt(1 - ac) / sqrt(ac)) gives x0 = sqrt(ac) x_t - sqrt(1 - ac) v and
    # eps = sqrt(ac) v + sqrt(1 - ac) x_t.
    s = NoiseSchedule.from_betas(make_betas(schedule, 1000))
    rng = np.random.default_rng(2)
    t = np.arange(0, 1000, 37)
    x0, eps = rng.standard_normal((2, len(t), 5))
    a, b = s.q_sample_coefficients(t)
    c_x0, c_eps = s.target_coefficients(t, "v_prediction")
    x_t = a[:, None] * x0 + b[:, None] * eps
    v = c_x0[:, None] * x0 + c_eps[:, None] * eps
    ac = s.alphas_cumprod[t][:, None]
    np.testing.assert_allclose(np.sqrt(ac) * x_t - np.sqrt(1 - ac) * v, x0, atol=1e-12)
    np.testing.assert_allclose(np.sqrt(ac) * v + np.sqrt(1 - ac) * x_t, eps, atol=1e-12)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_coefficients_invert_the_training_target(linear, prediction_type):
    # A perfect model outputs the training target; turning it back into x0 must give x0.
    rng = np.random.default_rng(3)
    t = np.arange(0, 1000, 41)
    x0, eps = rng.standard_normal((2, len(t), 5))
    a, b = linear.q_sample_coefficients(t)
    c_x0, c_eps = linear.target_coefficients(t, prediction_type)
    x_t = a[:, None] * x0 + b[:, None] * eps
    target = c_x0[:, None] * x0 + c_eps[:, None] * eps
    k_x, k_m = linear.x0_coefficients(t, prediction_type)
    np.testing.assert_allclose(k_x[:, None] * x_t + k_m[:, None] * target, x0, atol=1e-9)


def test_snr_is_alpha_over_sigma_squared_and_decreasing(linear):
    a, b = linear.q_sample_coefficients(np.arange(1000))
    np.testing.assert_allclose(linear.snr(np.arange(1000)), a**2 / b**2, rtol=1e-12)
    assert np.all(np.diff(linear.snr()) < 0)


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_follow_hang_et_al(linear, gamma):
    t = np.arange(1000)
    snr = linear.snr(t)
    w_eps = linear.min_snr_weights(t, gamma, "epsilon")
    w_v = linear.min_snr_weights(t, gamma, "v_prediction")
    w_x0 = linear.min_snr_weights(t, gamma, "sample")
    low, high = snr < gamma, snr >= gamma
    assert low.any() and high.any()
    # epsilon: no down-weighting where the SNR is already below gamma, gamma / snr above it.
    np.testing.assert_array_equal(w_eps[low], 1.0)
    np.testing.assert_allclose(w_eps[high], gamma / snr[high], rtol=1e-12)
    # The x0-space weight min(snr, gamma) equals the epsilon weight times snr, and the v weight
    # times (snr + 1): the factors relating each target's MSE to the x0 MSE.
    np.testing.assert_allclose(w_x0, w_eps * snr, rtol=1e-12)
    np.testing.assert_allclose(w_x0, w_v * (snr + 1), rtol=1e-12)
    assert w_x0.max() == gamma


def test_min_snr_weights_stay_finite_at_zero_snr():
    s = NoiseSchedule.from_config(DiffusionConfig(rescale_betas_zero_snr=True))
    assert s.snr(999) == 0.0
    assert s.min_snr_weights(np.array([999]), 5.0, "epsilon")[0] == 1.0
    assert s.min_snr_weights(np.array([999]), 5.0, "v_prediction")[0] == 0.0


def test_loss_weights_without_gamma_are_ones(linear):
    w = linear.loss_weights(np.array([[0, 500], [999, 3]]), "epsilon", None)
    assert w.shape == (2, 2) and np.all(w == 1.0)
    np.testing.assert_array_equal(linear.loss_weights(np.array([7]), "epsilon", 5.0),
                                  linear.min_snr_weights(np.array([7]), 5.0, "epsilon"))


def test_posterior_is_gaussian_conditioning(linear):
    # q(x_{t-1} | x_t, x0) by Bayes' rule from q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t)
    # and q(x_{t-1} | x0) = N(sqrt(ac_prev) x0, 1 - ac_prev): precisions add, means are
    # precision-weighted.
    t = np.arange(1, 1000)
    beta, alpha = linear.betas[t], linear.alphas[t]
    ac_prev = linear.alphas_cumprod[t - 1]
    variance = 1.0 / (alpha / beta + 1.0 / (1.0 - ac_prev))
    c_xt = variance * np.sqrt(alpha) / beta
    c_x0 = variance * np.sqrt(ac_prev) / (1.0 - ac_prev)
    ours = linear.posterior(t)
    np.testing.assert_allclose(ours[0], c_x0, rtol=1e-9)
    np.testing.assert_allclose(ours[1], c_xt, rtol=1e-9)
    np.testing.assert_allclose(ours[2], variance, rtol=1e-9)
    np.testing.assert_allclose(ours[3], np.log(variance), rtol=1e-9)


def test_posterior_at_t0_is_x0_with_clipped_log_variance(linear):
    c_x0, c_xt, variance, log_variance = linear.posterior(np.array([0, 1]))
    assert c_x0[0] == pytest.approx(1.0) and c_xt[0] == 0.0 and variance[0] == 0.0
    assert log_variance[0] == log_variance[1] == pytest.approx(np.log(variance[1]))
