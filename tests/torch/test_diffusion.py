"""t2s_torch.diffusion: the forward process and the regression targets against diffusers'
DDPMScheduler, and the (min-SNR weighted) loss against a hand-computed MSE for a stub model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from shared.config import DiffusionConfig
from t2s_torch.diffusion import GaussianDiffusion, TextBatch

SHAPE = (3, 2, 2, 4, 5)  # (B, C, F, H, W)
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
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, *SHAPE[1:], generator=g) * 2 - 1
    noise = torch.randn(batch, *SHAPE[1:], generator=g)
    return x0, noise, torch.tensor(TIMESTEPS[:batch])


def _reference(schedule: str, rescale: bool = False) -> DDPMScheduler:
    name, start, end = SCHEDULES[schedule]
    return DDPMScheduler(num_train_timesteps=T, beta_schedule=name, beta_start=start,
                         beta_end=end, rescale_betas_zero_snr=rescale)


def _config(schedule: str = "linear", rescale: bool = False, **kw) -> DiffusionConfig:
    _, start, end = SCHEDULES[schedule]
    return DiffusionConfig(num_train_timesteps=T, beta_schedule=schedule, beta_start=start,
                           beta_end=end, rescale_betas_zero_snr=rescale, **kw)


def _alphas_cumprod() -> np.ndarray:
    """The default linear schedule, written out by hand in float64."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))


class FixedOutput(nn.Module):
    """A stub UNet: returns a known tensor (a parameter, so gradients can be checked) and
    records what it was called with."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = nn.Parameter(output.clone())
        self.calls: list[tuple[torch.Tensor, ...]] = []

    def forward(self, x, t, context, context_mask, pooled):
        self.calls.append((x.detach().clone(), t.clone(), context, context_mask, pooled))
        return self.output


def _text(batch: int, seed: int = 5) -> TextBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 4, dtype=torch.long)
    mask[:, 3] = 0
    states = torch.randn(batch, 4, 8, generator=g)
    return TextBatch(states, mask, torch.randn(batch, 8, generator=g))


# ------------------------------------------------------------------ forward process, targets


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_q_sample_matches_diffusers_add_noise(schedule, rescale):
    x0, noise, t = _data()
    diffusion = GaussianDiffusion(_config(schedule, rescale))
    expected = _reference(schedule, rescale).add_noise(x0, noise, t)
    got = diffusion.q_sample(x0, t, noise)
    assert got.shape == x0.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=_atol(schedule, rescale), rtol=1e-5)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_v_target_matches_diffusers_get_velocity(schedule, rescale):
    x0, noise, t = _data()
    diffusion = GaussianDiffusion(_config(schedule, rescale, prediction_type="v_prediction"))
    expected = _reference(schedule, rescale).get_velocity(x0, noise, t)
    torch.testing.assert_close(diffusion.target(x0, t, noise), expected,
                               atol=_atol(schedule, rescale), rtol=1e-5)


def test_epsilon_and_sample_targets_are_noise_and_x0():
    x0, noise, t = _data()
    eps = GaussianDiffusion(_config(prediction_type="epsilon")).target(x0, t, noise)
    sample = GaussianDiffusion(_config(prediction_type="sample")).target(x0, t, noise)
    torch.testing.assert_close(eps, noise, atol=0, rtol=0)
    torch.testing.assert_close(sample, x0, atol=0, rtol=0)


def test_v_target_at_zero_terminal_snr_is_minus_x0():
    x0, noise, _ = _data(batch=2)
    diffusion = GaussianDiffusion(_config(rescale=True, prediction_type="v_prediction"))
    t = torch.tensor([T - 1, T - 1])
    torch.testing.assert_close(diffusion.target(x0, t, noise), -x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), noise, atol=1e-6, rtol=0)


def test_q_sample_by_hand_formula_per_sample():
    """Each row is noised at its own timestep: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    x0, noise, t = _data()
    ac = _alphas_cumprod()[t.numpy()]
    expected = (np.sqrt(ac)[:, None, None, None, None] * x0.double().numpy()
                + np.sqrt(1 - ac)[:, None, None, None, None] * noise.double().numpy())
    got = GaussianDiffusion(_config()).q_sample(x0, t, noise)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=1e-6)


def test_sample_timesteps_range_and_generator():
    diffusion = GaussianDiffusion(_config())
    a = diffusion.sample_timesteps(4096, torch.Generator().manual_seed(3))
    b = diffusion.sample_timesteps(4096, torch.Generator().manual_seed(3))
    c = diffusion.sample_timesteps(4096, torch.Generator().manual_seed(4))
    assert a.dtype == torch.long and a.shape == (4096,)
    assert int(a.min()) >= 0 and int(a.max()) <= T - 1
    assert int(a.min()) < 10 and int(a.max()) > T - 10  # the whole range is drawn
    assert torch.equal(a, b) and not torch.equal(a, c)


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


def _stub_output(seed: int = 9) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Per-sample scales differ a lot, so per-sample errors differ and weighting the mean
    # instead of each sample would show.
    scale = torch.tensor([0.5, 3.0, 1.0, 6.0, 2.0]).view(-1, 1, 1, 1, 1)
    return torch.randn(len(TIMESTEPS), *SHAPE[1:], generator=g) * scale


@pytest.mark.parametrize("gamma", [None, 5.0, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_equals_hand_computed_weighted_mse(prediction_type, gamma):
    x0, noise, t = _data()
    model = FixedOutput(_stub_output())
    text = _text(len(t))
    diffusion = GaussianDiffusion(_config(prediction_type=prediction_type, min_snr_gamma=gamma))
    loss = diffusion.loss(model, x0, text, t, noise)

    tn = t.numpy()
    weights = _hand_weights(tn, prediction_type, gamma)
    if gamma is not None:  # the chosen timesteps exercise both branches of min(snr, gamma)
        snr = _alphas_cumprod()[tn] / (1 - _alphas_cumprod()[tn])
        assert (snr > gamma).any() and (snr < gamma).any()
    target = _hand_target(x0.double().numpy(), noise.double().numpy(), tn, prediction_type)
    expected = _hand_loss(model.output.detach().double().numpy(), target, weights)
    assert loss.ndim == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    # The model saw x_t (each row at its own t) and the text as given.
    (x_seen, t_seen, states, mask, pooled), = model.calls
    torch.testing.assert_close(x_seen, diffusion.q_sample(x0, t, noise))
    assert torch.equal(t_seen, t)
    assert states is text.states and mask is text.mask and pooled is text.pooled



def _hand_motion_weights(x0: np.ndarray, strength: float) -> np.ndarray:
    """(B, C, F, H, W) -> (B, 1, F, H, W): 1 + strength * m / (mean(m) + eps), scaled to
    mean 1."""
    from t2s_torch.diffusion import MOTION_EPS

    m = np.abs(x0 - x0.mean(axis=2, keepdims=True)).mean(axis=1, keepdims=True)
    w = 1.0 + strength * m / (m.mean(axis=(2, 3, 4), keepdims=True) + MOTION_EPS)
    return w / w.mean(axis=(2, 3, 4), keepdims=True)


@pytest.mark.parametrize("gamma", [None, 5.0])
def test_motion_weighted_loss_equals_hand_computed(gamma):
    x0, noise, t = _data()
    model = FixedOutput(_stub_output())
    diffusion = GaussianDiffusion(_config(min_snr_gamma=gamma, motion_weight=3.0))
    loss = diffusion.loss(model, x0, _text(len(t)), t, noise)
    x = x0.double().numpy()
    error = (model.output.detach().double().numpy() - noise.double().numpy()) ** 2
    per_sample = (error * _hand_motion_weights(x, 3.0)).reshape(len(x), -1).mean(axis=1)
    expected = float((_hand_weights(t.numpy(), "epsilon", gamma) * per_sample).mean())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    plain = GaussianDiffusion(_config(min_snr_gamma=gamma)).loss(model, x0, _text(len(t)), t,
                                                                   noise)
    assert abs(loss.item() - plain.item()) > 1e-3 * plain.item()  # the weights did something


def test_motion_weights_favour_what_moves_and_leave_a_still_clip_alone():
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
def test_min_snr_weights_apply_per_sample(prediction_type):
    """The batch loss is the mean of each sample's own weighted loss, not (mean weight) x MSE."""
    x0, noise, t = _data()
    output = _stub_output()
    text = _text(len(t))
    diffusion = GaussianDiffusion(_config(prediction_type=prediction_type, min_snr_gamma=5.0))
    whole = diffusion.loss(FixedOutput(output), x0, text, t, noise).item()
    singles = [
        diffusion.loss(FixedOutput(output[i:i + 1]), x0[i:i + 1],
                       TextBatch(text.states[i:i + 1], text.mask[i:i + 1], text.pooled[i:i + 1]),
                       t[i:i + 1], noise[i:i + 1]).item()
        for i in range(len(t))
    ]
    assert whole == pytest.approx(float(np.mean(singles)), rel=1e-5)
    unweighted = GaussianDiffusion(_config(prediction_type=prediction_type))
    plain = unweighted.loss(FixedOutput(output), x0, text, t, noise).item()
    mean_weight = float(_hand_weights(t.numpy(), prediction_type, 5.0).mean())
    assert abs(whole - plain * mean_weight) > 1e-3 * plain


def test_loss_gradient_is_the_weighted_mse_gradient():
    x0, noise, t = _data()
    model = FixedOutput(_stub_output())
    diffusion = GaussianDiffusion(_config(prediction_type="v_prediction", min_snr_gamma=5.0))
    diffusion.loss(model, x0, _text(len(t)), t, noise).backward()
    tn = t.numpy()
    target = _hand_target(x0.double().numpy(), noise.double().numpy(), tn, "v_prediction")
    weights = _hand_weights(tn, "v_prediction", 5.0)[:, None, None, None, None]
    per_sample_size = int(np.prod(SHAPE[1:]))
    expected = (2 * weights * (model.output.detach().double().numpy() - target)
                / (per_sample_size * len(tn)))
    np.testing.assert_allclose(model.output.grad.double().numpy(), expected, rtol=1e-4,
                               atol=1e-9)


def test_loss_is_zero_for_a_perfect_prediction_and_upcasts_half_outputs():
    x0, noise, t = _data()
    diffusion = GaussianDiffusion(_config(prediction_type="v_prediction", min_snr_gamma=5.0))
    perfect = FixedOutput(diffusion.target(x0, t, noise))
    zero = diffusion.loss(perfect, x0, _text(len(t)), t, noise).item()
    assert zero == pytest.approx(0, abs=1e-12)

    class HalfOutput(FixedOutput):
        def forward(self, *args):
            return super().forward(*args).to(torch.bfloat16)

    out = _stub_output()
    half = diffusion.loss(HalfOutput(out), x0, _text(len(t)), t, noise)
    assert half.dtype == torch.float32
    full = diffusion.loss(FixedOutput(out.to(torch.bfloat16).float()), x0, _text(len(t)), t,
                          noise)
    assert half.item() == pytest.approx(full.item(), rel=1e-6)


# ------------------------------------------------------------------------------- TextBatch


def test_text_batch_select_and_cat():
    a, b = _text(3, seed=1), _text(3, seed=2)
    b.mask[:] = 0
    keep = torch.tensor([True, False, True])
    mixed = a.select(keep, b)
    for i, k in enumerate(keep.tolist()):
        src = a if k else b
        assert torch.equal(mixed.states[i], src.states[i])
        assert torch.equal(mixed.mask[i], src.mask[i])
        assert torch.equal(mixed.pooled[i], src.pooled[i])
    both = TextBatch.cat([a, b])
    assert both.states.shape == (6, 4, 8) and both.mask.shape == (6, 4)
    assert torch.equal(both.pooled[:3], a.pooled) and torch.equal(both.pooled[3:], b.pooled)
    assert torch.equal(both.mask[3:], b.mask) and torch.equal(both.states[:3], a.states)
    moved = a.to(torch.device("cpu"))
    assert torch.equal(moved.states, a.states) and moved.mask.dtype == a.mask.dtype
