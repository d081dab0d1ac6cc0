"""t2s_torch.diffusion and t2s_mlx.diffusion, one suite over both backends: the forward process
and the regression targets against diffusers' DDPMScheduler, and the (min-SNR weighted) loss
against a hand-computed MSE for a stub model. Videos are (B, C, F, H, W) on torch and
channels-last (B, F, H, W, C) on MLX; the data is drawn in numpy and handed to each backend."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the diffusers reference runs on torch for both backends
diffusers = pytest.importorskip("diffusers")

from shared.config import DiffusionConfig  # noqa: E402

B, C, F, H, W = 3, 2, 2, 4, 5
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


def _shape(backend) -> tuple[int, ...]:
    return backend.video_shape(B, C, F, H, W)


def _data(backend, batch: int = len(TIMESTEPS), seed: int = 0):
    """x0 in [-1, 1], noise, timesteps: numpy float32 / int64, in the backend's layout."""
    rng = np.random.default_rng(seed)
    shape = (batch, *_shape(backend)[1:])
    x0 = (rng.random(shape) * 2 - 1).astype(np.float32)
    noise = rng.standard_normal(shape).astype(np.float32)
    return x0, noise, np.array(TIMESTEPS[:batch], dtype=np.int64)


def _arrays(backend, *arrays: np.ndarray):
    return tuple(backend.array(a) for a in arrays)


def _reference(schedule: str, rescale: bool = False):
    name, start, end = SCHEDULES[schedule]
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=name, beta_start=start,
                                   beta_end=end, rescale_betas_zero_snr=rescale)


def _config(schedule: str = "linear", rescale: bool = False, **kw) -> DiffusionConfig:
    _, start, end = SCHEDULES[schedule]
    return DiffusionConfig(num_train_timesteps=T, beta_schedule=schedule, beta_start=start,
                           beta_end=end, rescale_betas_zero_snr=rescale, **kw)


def _diffusion(backend, *args, **kw):
    return backend.module("diffusion").GaussianDiffusion(_config(*args, **kw))


def _alphas_cumprod() -> np.ndarray:
    """The default linear schedule, written out by hand in float64."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))


def _stubs(backend):
    """FixedOutput, a stub UNet that returns a known array (a parameter, so gradients can be
    checked) and records what it was called with, and HalfOutput, the same in bfloat16
    (tests/support/stubs.py)."""
    return backend.stubs("diffusion")


def _fixed(backend, output):
    return _stubs(backend)[0](output)


def _output_grad(backend, diffusion, model, x0, text, t, noise):
    """d loss / d model.output."""

    def loss_fn(x0_, t_, noise_):
        return diffusion.loss(model, x0_, text, t_, noise_)

    return backend.grads(model, loss_fn, x0, t, noise)["output"]


def _text(backend, batch: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, 4), dtype=backend.np_index_dtype)
    mask[:, 3] = 0
    states = rng.standard_normal((batch, 4, 8)).astype(np.float32)
    pooled = rng.standard_normal((batch, 8)).astype(np.float32)
    return backend.module("diffusion").TextBatch(*_arrays(backend, states, mask, pooled))


# ------------------------------------------------------------------ forward process, targets


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_q_sample_matches_diffusers_add_noise(backend, schedule, rescale):
    x0, noise, t = _data(backend)
    diffusion = _diffusion(backend, schedule, rescale)
    expected = _reference(schedule, rescale).add_noise(
        torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    got = diffusion.q_sample(*_arrays(backend, x0, t, noise))
    assert got.shape == x0.shape and got.dtype == backend.float32
    np.testing.assert_allclose(backend.numpy(got), expected, atol=_atol(schedule, rescale),
                               rtol=1e-5)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_v_target_matches_diffusers_get_velocity(backend, schedule, rescale):
    x0, noise, t = _data(backend)
    diffusion = _diffusion(backend, schedule, rescale, prediction_type="v_prediction")
    expected = _reference(schedule, rescale).get_velocity(
        torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    got = diffusion.target(*_arrays(backend, x0, t, noise))
    assert got.dtype == backend.float32
    np.testing.assert_allclose(backend.numpy(got), expected, atol=_atol(schedule, rescale),
                               rtol=1e-5)


def test_epsilon_and_sample_targets_are_noise_and_x0(backend):
    x0, noise, t = _data(backend)
    args = _arrays(backend, x0, t, noise)
    eps = _diffusion(backend, prediction_type="epsilon").target(*args)
    sample = _diffusion(backend, prediction_type="sample").target(*args)
    np.testing.assert_array_equal(backend.numpy(eps), noise)
    np.testing.assert_array_equal(backend.numpy(sample), x0)


def test_v_target_at_zero_terminal_snr_is_minus_x0(backend):
    x0, noise, _ = _data(backend, batch=2)
    diffusion = _diffusion(backend, rescale=True, prediction_type="v_prediction")
    args = _arrays(backend, x0, np.array([T - 1, T - 1]), noise)
    np.testing.assert_allclose(backend.numpy(diffusion.target(*args)), -x0, atol=1e-6, rtol=0)
    np.testing.assert_allclose(backend.numpy(diffusion.q_sample(*args)), noise, atol=1e-6,
                               rtol=0)


def test_q_sample_by_hand_formula_per_sample(backend):
    """Each row is noised at its own timestep: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    x0, noise, t = _data(backend)
    ac = _alphas_cumprod()[t][:, None, None, None, None]
    expected = np.sqrt(ac) * x0.astype(np.float64) + np.sqrt(1 - ac) * noise.astype(np.float64)
    got = _diffusion(backend).q_sample(*_arrays(backend, x0, t, noise))
    np.testing.assert_allclose(backend.numpy(got), expected, atol=1e-6, rtol=1e-6)


def test_sample_timesteps_range_and_generator(backend):
    """A torch.Generator on torch, an mx.random key on MLX."""
    diffusion = _diffusion(backend)
    a = diffusion.sample_timesteps(4096, backend.generator(3))
    b = backend.numpy(diffusion.sample_timesteps(4096, backend.generator(3)))
    c = backend.numpy(diffusion.sample_timesteps(4096, backend.generator(4)))
    assert a.dtype == backend.index_dtype and a.shape == (4096,)
    a = backend.numpy(a)
    assert np.issubdtype(a.dtype, np.integer)
    assert a.min() >= 0 and a.max() <= T - 1
    assert a.min() < 10 and a.max() > T - 10  # the whole range is drawn
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.backends("mlx")
def test_sample_timesteps_without_a_key_follow_the_global_seed(backend):
    """Without a key: MLX's global generator, reproducible from its seed (what the trainer
    uses)."""
    mx = backend.xp
    diffusion = _diffusion(backend)
    mx.random.seed(11)
    d = backend.numpy(diffusion.sample_timesteps(64))
    mx.random.seed(11)
    np.testing.assert_array_equal(d, backend.numpy(diffusion.sample_timesteps(64)))


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


def _stub_output(backend, seed: int = 9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Per-sample scales differ a lot, so per-sample errors differ and weighting the mean
    # instead of each sample would show.
    scale = np.array([0.5, 3.0, 1.0, 6.0, 2.0], dtype=np.float32).reshape(-1, 1, 1, 1, 1)
    return (rng.standard_normal((len(TIMESTEPS), *_shape(backend)[1:])) * scale).astype(
        np.float32)


@pytest.mark.parametrize("gamma", [None, 5.0, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_equals_hand_computed_weighted_mse(backend, prediction_type, gamma):
    x0, noise, t = _data(backend)
    output = _stub_output(backend)
    model = _fixed(backend, backend.array(output))
    text = _text(backend, len(t))
    diffusion = _diffusion(backend, prediction_type=prediction_type, min_snr_gamma=gamma)
    b_x0, b_t, b_noise = _arrays(backend, x0, t, noise)
    loss = diffusion.loss(model, b_x0, text, b_t, b_noise)

    weights = _hand_weights(t, prediction_type, gamma)
    if gamma is not None:  # the chosen timesteps exercise both branches of min(snr, gamma)
        snr = _alphas_cumprod()[t] / (1 - _alphas_cumprod()[t])
        assert (snr > gamma).any() and (snr < gamma).any()
    target = _hand_target(x0.astype(np.float64), noise.astype(np.float64), t, prediction_type)
    expected = _hand_loss(output.astype(np.float64), target, weights)
    assert loss.ndim == 0 and loss.dtype == backend.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    # The model saw x_t (each row at its own t) and the text as given.
    (x_seen, t_seen, states, mask, pooled), = model.calls
    assert x_seen.dtype == backend.float32
    np.testing.assert_allclose(backend.numpy(x_seen),
                               backend.numpy(diffusion.q_sample(b_x0, b_t, b_noise)),
                               atol=1e-6, rtol=0)
    np.testing.assert_array_equal(backend.numpy(t_seen), t)
    assert states is text.states and mask is text.mask and pooled is text.pooled


def _channels_first(backend, a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 4, 1, 2, 3) if backend.channels_last else a


def _hand_motion_weights(x0: np.ndarray, strength: float, eps: float) -> np.ndarray:
    """(B, C, F, H, W) -> (B, 1, F, H, W): 1 + strength * m / (mean(m) + eps), scaled to
    mean 1."""
    m = np.abs(x0 - x0.mean(axis=2, keepdims=True)).mean(axis=1, keepdims=True)
    w = 1.0 + strength * m / (m.mean(axis=(2, 3, 4), keepdims=True) + eps)
    return w / w.mean(axis=(2, 3, 4), keepdims=True)


@pytest.mark.parametrize("gamma, max_snr", [(None, None), (5.0, None), (5.0, 0.5)])
def test_motion_weighted_loss_equals_hand_computed(backend, gamma, max_snr):
    x0, noise, t = _data(backend)
    output = _stub_output(backend)
    model = _fixed(backend, backend.array(output))
    diffusion = _diffusion(backend, min_snr_gamma=gamma, motion_weight=3.0,
                           motion_max_snr=max_snr)
    args = _arrays(backend, x0, t, noise)
    loss = diffusion.loss(model, args[0], _text(backend, len(t)), *args[1:])
    x = _channels_first(backend, x0.astype(np.float64))
    error = _channels_first(backend, (output.astype(np.float64) - noise.astype(np.float64)) ** 2)
    ac = _alphas_cumprod()[t]
    gated = np.ones(len(t), bool) if max_snr is None else ac / (1 - ac) <= max_snr
    assert gated.sum() > 0 and (max_snr is None or gated.sum() < len(t))  # both kinds of step
    eps = backend.module("diffusion").MOTION_EPS
    motion = np.stack([_hand_motion_weights(x[i:i + 1], 3.0 if gated[i] else 0.0, eps)[0]
                       for i in range(len(t))])
    per_sample = (error * motion).reshape(len(x), -1).mean(axis=1)
    expected = float((_hand_weights(t, "epsilon", gamma) * per_sample).mean())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    plain = _diffusion(backend, min_snr_gamma=gamma).loss(model, args[0], _text(backend, len(t)),
                                                          *args[1:])
    assert abs(loss.item() - plain.item()) > 1e-3 * plain.item()  # the weights did something


@pytest.mark.backends("torch")
def test_motion_weights_favour_what_moves_and_leave_a_still_clip_alone(backend):
    from t2s_torch.diffusion import motion_weights

    still = torch.rand(2, 3, 1, 6, 6).expand(2, 3, 5, 6, 6)  # the same picture in every frame
    # (float rounding of the frame mean is all that "moves": far below MOTION_EPS)
    torch.testing.assert_close(motion_weights(still, 4.0), torch.ones(2, 1, 5, 6, 6),
                               atol=1e-3, rtol=0)
    moving = still.clone()
    moving[0, :, 2, 3, 3] += 1.0  # one pixel of one frame of clip 0 lights up
    w = motion_weights(moving, 4.0)
    assert w[0, 0, 2, 3, 3] > 5 * w[0, 0, 0, 0, 0]
    torch.testing.assert_close(w.mean(dim=(2, 3, 4)), torch.ones(2, 1))
    torch.testing.assert_close(w[1], torch.ones(1, 5, 6, 6), atol=1e-3, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_apply_per_sample(backend, prediction_type):
    """The batch loss is the mean of each sample's own weighted loss, not (mean weight) x MSE."""
    x0, noise, t = _data(backend)
    output = _stub_output(backend)
    text = _text(backend, len(t))
    TextBatch = backend.module("diffusion").TextBatch
    diffusion = _diffusion(backend, prediction_type=prediction_type, min_snr_gamma=5.0)
    b_x0, b_t, b_noise = _arrays(backend, x0, t, noise)
    whole = diffusion.loss(_fixed(backend, backend.array(output)), b_x0, text, b_t,
                           b_noise).item()
    singles = [
        diffusion.loss(_fixed(backend, backend.array(output[i:i + 1])),
                       backend.array(x0[i:i + 1]),
                       TextBatch(text.states[i:i + 1], text.mask[i:i + 1], text.pooled[i:i + 1]),
                       backend.array(t[i:i + 1]), backend.array(noise[i:i + 1])).item()
        for i in range(len(t))
    ]
    assert whole == pytest.approx(float(np.mean(singles)), rel=1e-5)
    unweighted = _diffusion(backend, prediction_type=prediction_type)
    plain = unweighted.loss(_fixed(backend, backend.array(output)), b_x0, text, b_t,
                            b_noise).item()
    mean_weight = float(_hand_weights(t, prediction_type, 5.0).mean())
    assert abs(whole - plain * mean_weight) > 1e-3 * plain


def test_loss_gradient_is_the_weighted_mse_gradient(backend):
    x0, noise, t = _data(backend)
    output = _stub_output(backend)
    model = _fixed(backend, backend.array(output))
    diffusion = _diffusion(backend, prediction_type="v_prediction", min_snr_gamma=5.0)
    b_x0, b_t, b_noise = _arrays(backend, x0, t, noise)
    grad = _output_grad(backend, diffusion, model, b_x0, _text(backend, len(t)), b_t, b_noise)
    target = _hand_target(x0.astype(np.float64), noise.astype(np.float64), t, "v_prediction")
    weights = _hand_weights(t, "v_prediction", 5.0)[:, None, None, None, None]
    per_sample_size = int(np.prod(_shape(backend)[1:]))
    expected = (2 * weights * (output.astype(np.float64) - target)
                / (per_sample_size * len(t)))
    np.testing.assert_allclose(backend.numpy(grad), expected, rtol=1e-4, atol=1e-9)


def test_loss_is_zero_for_a_perfect_prediction_and_upcasts_half_outputs(backend):
    x0, noise, t = _data(backend)
    FixedOutput, HalfOutput = _stubs(backend)
    diffusion = _diffusion(backend, prediction_type="v_prediction", min_snr_gamma=5.0)
    b_x0, b_t, b_noise = _arrays(backend, x0, t, noise)
    perfect = FixedOutput(diffusion.target(b_x0, b_t, b_noise))
    zero = diffusion.loss(perfect, b_x0, _text(backend, len(t)), b_t, b_noise).item()
    assert zero == pytest.approx(0, abs=1e-12)

    out = backend.array(_stub_output(backend))
    half = diffusion.loss(HalfOutput(out), b_x0, _text(backend, len(t)), b_t, b_noise)
    assert half.dtype == backend.float32
    rounded = backend.astype(backend.astype(out, backend.bfloat16), backend.float32)
    full = diffusion.loss(FixedOutput(rounded), b_x0, _text(backend, len(t)), b_t, b_noise)
    assert half.item() == pytest.approx(full.item(), rel=1e-6)


def test_bf16_inputs_give_a_float32_loss_close_to_float32(backend):
    """What bf16 training feeds the loss: x0 and noise in bf16 (the tables stay float32)."""
    x0, noise, t = _data(backend)
    diffusion = _diffusion(backend, min_snr_gamma=5.0)
    model = _fixed(backend, backend.array(_stub_output(backend)))
    b_x0, b_t, b_noise = _arrays(backend, x0, t, noise)
    full = diffusion.loss(model, b_x0, _text(backend, len(t)), b_t, b_noise)
    half = diffusion.loss(model, backend.astype(b_x0, backend.bfloat16), _text(backend, len(t)),
                          b_t, backend.astype(b_noise, backend.bfloat16))
    assert half.dtype == backend.float32
    assert half.item() == pytest.approx(full.item(), rel=2e-2)


# ------------------------------------------------------------------------------- TextBatch


def test_text_batch_select_and_cat(backend):
    TextBatch = backend.module("diffusion").TextBatch
    a, b = _text(backend, 3, seed=1), _text(backend, 3, seed=2)
    b = TextBatch(b.states, backend.xp.zeros_like(b.mask), b.pooled)
    keep = backend.array(np.array([True, False, True]))
    mixed = a.select(keep, b)
    for i, k in enumerate([True, False, True]):
        src = a if k else b
        assert np.array_equal(backend.numpy(mixed.states[i]), backend.numpy(src.states[i]))
        assert np.array_equal(backend.numpy(mixed.mask[i]), backend.numpy(src.mask[i]))
        assert np.array_equal(backend.numpy(mixed.pooled[i]), backend.numpy(src.pooled[i]))
    assert mixed.mask.dtype == a.mask.dtype
    both = TextBatch.cat([a, b])
    assert both.states.shape == (6, 4, 8) and both.mask.shape == (6, 4)
    assert np.array_equal(backend.numpy(both.pooled[:3]), backend.numpy(a.pooled))
    assert np.array_equal(backend.numpy(both.pooled[3:]), backend.numpy(b.pooled))
    assert np.array_equal(backend.numpy(both.mask[3:]), backend.numpy(b.mask))
    assert np.array_equal(backend.numpy(both.states[:3]), backend.numpy(a.states))


def test_text_batch_take_and_expand(backend):
    """`take` is the trainer's caption lookup (rows in the asked order, repeats allowed) and
    `expand` its unconditional batch: compared with numpy indexing and tiling."""
    table = _text(backend, 3, seed=1)
    rows = [2, 0, 2, 1]
    taken = table.take(rows)
    for name in ("states", "mask", "pooled"):
        whole = backend.numpy(getattr(table, name))
        assert np.array_equal(backend.numpy(getattr(taken, name)), whole[rows])
    one = table.take([1])
    wide = one.expand(5)
    for name in ("states", "mask", "pooled"):
        single = backend.numpy(getattr(one, name))
        got = backend.numpy(getattr(wide, name))
        assert got.shape == (5, *single.shape[1:])
        assert np.array_equal(got, np.repeat(single, 5, axis=0))
    assert wide.mask.dtype == table.mask.dtype


@pytest.mark.backends("torch")
def test_text_batch_to_a_device(backend):
    a = _text(backend, 3, seed=1)
    moved = a.to(torch.device("cpu"))
    assert torch.equal(moved.states, a.states) and moved.mask.dtype == a.mask.dtype
