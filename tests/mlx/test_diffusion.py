"""t2s_mlx.diffusion: the forward process and the regression targets against diffusers'
DDPMScheduler, and the (min-SNR weighted) loss against a hand-computed MSE for a stub model.

The mirror of tests/torch/test_diffusion.py, channels-last (B, F, H, W, C)."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from shared.config import DiffusionConfig  # noqa: E402
from t2s_mlx.diffusion import GaussianDiffusion, TextBatch  # noqa: E402

SHAPE = (3, 2, 4, 5, 2)  # (B, F, H, W, C)
T = 1000
# Our schedule name -> diffusers' name, and the beta range each is used with.
SCHEDULES = {
    "linear": ("linear", 1e-4, 0.02),
    "scaled_linear": ("scaled_linear", 8.5e-4, 0.012),
    "cosine": ("squaredcos_cap_v2", 1e-4, 0.02),
}
# Spans both ends of the schedule and both sides of snr = gamma for the gammas used below.
TIMESTEPS = [0, 37, 250, 611, 999]


def _atol(schedule: str, rescale: bool) -> float:
    # diffusers keeps alphas_cumprod in float32; for rescaled cosine, 1 - abar at t = 0 is ~4e-5
    # and loses ~3 digits to cancellation there, so its reference is only good to a few 1e-5.
    return 6e-5 if (schedule, rescale) == ("cosine", True) else 2e-5


def _data(batch: int = len(TIMESTEPS), seed: int = 0):
    """x0 in [-1, 1], noise, timesteps: numpy float32 / int64."""
    rng = np.random.default_rng(seed)
    x0 = (rng.random((batch, *SHAPE[1:])) * 2 - 1).astype(np.float32)
    noise = rng.standard_normal((batch, *SHAPE[1:])).astype(np.float32)
    return x0, noise, np.array(TIMESTEPS[:batch], dtype=np.int64)


def _mx(*arrays: np.ndarray):
    return tuple(mx.array(a) for a in arrays)


def _reference(schedule: str, rescale: bool = False):
    name, start, end = SCHEDULES[schedule]
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=name, beta_start=start,
                                   beta_end=end, rescale_betas_zero_snr=rescale)


def _config(schedule: str = "linear", rescale: bool = False, **kw) -> DiffusionConfig:
    _, start, end = SCHEDULES[schedule]
    return DiffusionConfig(num_train_timesteps=T, beta_schedule=schedule, beta_start=start,
                           beta_end=end, rescale_betas_zero_snr=rescale, **kw)


def _alphas_cumprod() -> np.ndarray:
    """The default linear schedule, written out by hand in float64."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))


class FixedOutput(nn.Module):
    """A stub UNet: returns a known array (a parameter, so gradients can be checked) and records
    what it was called with."""

    def __init__(self, output: mx.array):
        super().__init__()
        self.output = mx.array(output)
        object.__setattr__(self, "calls", [])  # not a child: kept out of parameters()

    def __call__(self, x, t, context, context_mask, pooled):
        self.calls.append((x, t, context, context_mask, pooled))
        return self.output


def _text(batch: int, seed: int = 5) -> TextBatch:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, 4), dtype=np.int32)
    mask[:, 3] = 0
    states = rng.standard_normal((batch, 4, 8)).astype(np.float32)
    pooled = rng.standard_normal((batch, 8)).astype(np.float32)
    return TextBatch(mx.array(states), mx.array(mask), mx.array(pooled))


def _np(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)


# ------------------------------------------------------------------ forward process, targets


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_q_sample_matches_diffusers_add_noise(schedule, rescale):
    x0, noise, t = _data()
    diffusion = GaussianDiffusion(_config(schedule, rescale))
    expected = _reference(schedule, rescale).add_noise(
        torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    got = diffusion.q_sample(*_mx(x0, t, noise))
    assert got.shape == x0.shape and got.dtype == mx.float32
    np.testing.assert_allclose(_np(got), expected, atol=_atol(schedule, rescale), rtol=1e-5)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_v_target_matches_diffusers_get_velocity(schedule, rescale):
    x0, noise, t = _data()
    diffusion = GaussianDiffusion(_config(schedule, rescale, prediction_type="v_prediction"))
    expected = _reference(schedule, rescale).get_velocity(
        torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    got = diffusion.target(*_mx(x0, t, noise))
    np.testing.assert_allclose(_np(got), expected, atol=_atol(schedule, rescale), rtol=1e-5)


def test_epsilon_and_sample_targets_are_noise_and_x0():
    x0, noise, t = _data()
    eps = GaussianDiffusion(_config(prediction_type="epsilon")).target(*_mx(x0, t, noise))
    sample = GaussianDiffusion(_config(prediction_type="sample")).target(*_mx(x0, t, noise))
    np.testing.assert_array_equal(_np(eps), noise)
    np.testing.assert_array_equal(_np(sample), x0)


def test_v_target_at_zero_terminal_snr_is_minus_x0():
    x0, noise, _ = _data(batch=2)
    diffusion = GaussianDiffusion(_config(rescale=True, prediction_type="v_prediction"))
    t = np.array([T - 1, T - 1])
    np.testing.assert_allclose(_np(diffusion.target(*_mx(x0, t, noise))), -x0, atol=1e-6,
                               rtol=0)
    np.testing.assert_allclose(_np(diffusion.q_sample(*_mx(x0, t, noise))), noise, atol=1e-6,
                               rtol=0)


def test_q_sample_by_hand_formula_per_sample():
    """Each row is noised at its own timestep: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    x0, noise, t = _data()
    ac = _alphas_cumprod()[t][:, None, None, None, None]
    expected = np.sqrt(ac) * x0.astype(np.float64) + np.sqrt(1 - ac) * noise.astype(np.float64)
    got = GaussianDiffusion(_config()).q_sample(*_mx(x0, t, noise))
    np.testing.assert_allclose(_np(got), expected, atol=1e-6, rtol=1e-6)


def test_sample_timesteps_range_and_key():
    diffusion = GaussianDiffusion(_config())
    a = _np(diffusion.sample_timesteps(4096, mx.random.key(3)))
    b = _np(diffusion.sample_timesteps(4096, mx.random.key(3)))
    c = _np(diffusion.sample_timesteps(4096, mx.random.key(4)))
    assert np.issubdtype(a.dtype, np.integer) and a.shape == (4096,)
    assert a.min() >= 0 and a.max() <= T - 1
    assert a.min() < 10 and a.max() > T - 10  # the whole range is drawn
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # Without a key: MLX's global generator, reproducible from its seed (what the trainer uses).
    mx.random.seed(11)
    d = _np(diffusion.sample_timesteps(64))
    mx.random.seed(11)
    np.testing.assert_array_equal(d, _np(diffusion.sample_timesteps(64)))


# ------------------------------------------------------------------------------------ loss


def _hand_loss(prediction: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    per_sample = ((prediction - target) ** 2).reshape(len(prediction), -1).mean(axis=1)
    return float((weights * per_sample).mean())


def _hand_target(x0: np.ndarray, noise: np.ndarray, t: np.ndarray, prediction_type: str):
    ac = _alphas_cumprod()[t][:, None, None, None, None]
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return np.sqrt(ac) * noise - np.sqrt(1 - ac) * x0


def _hand_weights(t: np.ndarray, prediction_type: str, gamma: float | None) -> np.ndarray:
    if gamma is None:
        return np.ones(len(t))
    ac = _alphas_cumprod()[t]
    snr = ac / (1 - ac)
    clipped = np.minimum(snr, gamma)
    return {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1),
            "sample": clipped}[prediction_type]


def _stub_output(seed: int = 9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Per-sample scales differ a lot, so per-sample errors differ and weighting the mean
    # instead of each sample would show.
    scale = np.array([0.5, 3.0, 1.0, 6.0, 2.0], dtype=np.float32).reshape(-1, 1, 1, 1, 1)
    return (rng.standard_normal((len(TIMESTEPS), *SHAPE[1:])) * scale).astype(np.float32)


@pytest.mark.parametrize("gamma", [None, 5.0, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_equals_hand_computed_weighted_mse(prediction_type, gamma):
    x0, noise, t = _data()
    output = _stub_output()
    model = FixedOutput(mx.array(output))
    text = _text(len(t))
    diffusion = GaussianDiffusion(_config(prediction_type=prediction_type, min_snr_gamma=gamma))
    mx_x0, mx_t, mx_noise = _mx(x0, t, noise)
    loss = diffusion.loss(model, mx_x0, text, mx_t, mx_noise)

    weights = _hand_weights(t, prediction_type, gamma)
    if gamma is not None:  # the chosen timesteps exercise both branches of min(snr, gamma)
        snr = _alphas_cumprod()[t] / (1 - _alphas_cumprod()[t])
        assert (snr > gamma).any() and (snr < gamma).any()
    target = _hand_target(x0.astype(np.float64), noise.astype(np.float64), t, prediction_type)
    expected = _hand_loss(output.astype(np.float64), target, weights)
    assert loss.ndim == 0 and loss.dtype == mx.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    # The model saw x_t (each row at its own t) and the text as given.
    (x_seen, t_seen, states, mask, pooled), = model.calls
    np.testing.assert_allclose(_np(x_seen), _np(diffusion.q_sample(mx_x0, mx_t, mx_noise)),
                               atol=1e-6, rtol=0)
    np.testing.assert_array_equal(_np(t_seen), t)
    assert states is text.states and mask is text.mask and pooled is text.pooled


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_apply_per_sample(prediction_type):
    """The batch loss is the mean of each sample's own weighted loss, not (mean weight) x MSE."""
    x0, noise, t = _data()
    output = _stub_output()
    text = _text(len(t))
    diffusion = GaussianDiffusion(_config(prediction_type=prediction_type, min_snr_gamma=5.0))
    whole = diffusion.loss(FixedOutput(mx.array(output)), *_mx(x0), text, *_mx(t, noise)).item()
    singles = [
        diffusion.loss(FixedOutput(mx.array(output[i:i + 1])), mx.array(x0[i:i + 1]),
                       TextBatch(text.states[i:i + 1], text.mask[i:i + 1], text.pooled[i:i + 1]),
                       mx.array(t[i:i + 1]), mx.array(noise[i:i + 1])).item()
        for i in range(len(t))
    ]
    assert whole == pytest.approx(float(np.mean(singles)), rel=1e-5)
    unweighted = GaussianDiffusion(_config(prediction_type=prediction_type))
    plain = unweighted.loss(FixedOutput(mx.array(output)), *_mx(x0), text, *_mx(t, noise)).item()
    mean_weight = float(_hand_weights(t, prediction_type, 5.0).mean())
    assert abs(whole - plain * mean_weight) > 1e-3 * plain


def test_loss_gradient_is_the_weighted_mse_gradient():
    x0, noise, t = _data()
    output = _stub_output()
    model = FixedOutput(mx.array(output))
    text = _text(len(t))
    diffusion = GaussianDiffusion(_config(prediction_type="v_prediction", min_snr_gamma=5.0))
    args = _mx(x0, t, noise)

    def loss_fn(x0_, t_, noise_):
        return diffusion.loss(model, x0_, text, t_, noise_)

    _, grads = nn.value_and_grad(model, loss_fn)(*args)
    target = _hand_target(x0.astype(np.float64), noise.astype(np.float64), t, "v_prediction")
    weights = _hand_weights(t, "v_prediction", 5.0)[:, None, None, None, None]
    per_sample_size = int(np.prod(SHAPE[1:]))
    expected = (2 * weights * (output.astype(np.float64) - target)
                / (per_sample_size * len(t)))
    np.testing.assert_allclose(_np(grads["output"]), expected, rtol=1e-4, atol=1e-9)


def test_loss_is_zero_for_a_perfect_prediction_and_upcasts_half_outputs():
    x0, noise, t = _data()
    args = mx.array(x0), _text(len(t)), *_mx(t, noise)
    diffusion = GaussianDiffusion(_config(prediction_type="v_prediction", min_snr_gamma=5.0))
    perfect = FixedOutput(diffusion.target(*_mx(x0, t, noise)))
    zero = diffusion.loss(perfect, *args).item()
    assert zero == pytest.approx(0, abs=1e-12)

    class HalfOutput(FixedOutput):
        def __call__(self, *inputs):
            return super().__call__(*inputs).astype(mx.bfloat16)

    out = mx.array(_stub_output())
    half = diffusion.loss(HalfOutput(out), *args)
    assert half.dtype == mx.float32
    full = diffusion.loss(FixedOutput(out.astype(mx.bfloat16).astype(mx.float32)), *args)
    assert half.item() == pytest.approx(full.item(), rel=1e-6)


def test_bf16_inputs_give_a_float32_loss_close_to_float32():
    """What bf16 training feeds the loss: x0 and noise in bf16 (the tables stay float32)."""
    x0, noise, t = _data()
    diffusion = GaussianDiffusion(_config(min_snr_gamma=5.0))
    model = FixedOutput(mx.array(_stub_output()))
    full = diffusion.loss(model, mx.array(x0), _text(len(t)), mx.array(t), mx.array(noise))
    half = diffusion.loss(model, mx.array(x0).astype(mx.bfloat16), _text(len(t)), mx.array(t),
                          mx.array(noise).astype(mx.bfloat16))
    assert half.dtype == mx.float32
    assert half.item() == pytest.approx(full.item(), rel=2e-2)


# ------------------------------------------------------------------------------- TextBatch


def test_text_batch_select_and_cat():
    a, b = _text(3, seed=1), _text(3, seed=2)
    b = TextBatch(b.states, mx.zeros_like(b.mask), b.pooled)
    keep = mx.array([True, False, True])
    mixed = a.select(keep, b)
    for i, k in enumerate(keep.tolist()):
        src = a if k else b
        assert np.array_equal(_np(mixed.states[i]), _np(src.states[i]))
        assert np.array_equal(_np(mixed.mask[i]), _np(src.mask[i]))
        assert np.array_equal(_np(mixed.pooled[i]), _np(src.pooled[i]))
    assert mixed.mask.dtype == a.mask.dtype
    both = TextBatch.cat([a, b])
    assert both.states.shape == (6, 4, 8) and both.mask.shape == (6, 4)
    assert np.array_equal(_np(both.pooled[:3]), _np(a.pooled))
    assert np.array_equal(_np(both.pooled[3:]), _np(b.pooled))
    assert np.array_equal(_np(both.mask[3:]), _np(b.mask))
    assert np.array_equal(_np(both.states[:3]), _np(a.states))
