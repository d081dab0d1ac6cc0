"""t2s_torch.sample and t2s_mlx.sample, one suite over both backends: the sampling loop against
the numpy reference loop.

The reference is `shared.diffusion.sampling.sample_loop` run in numpy, channels-last, on the same
`numpy_noise(seed)` stream, with a numpy twin of a small deterministic "model" (a torch or an
mlx.nn Module); guidance is combined by hand there. The real tiny UNet then checks determinism,
guidance at scale 1, the output range and shape, and that the model's train / eval mode survives
sampling. `generate` takes and returns channels-last videos on both backends; the models run in
their backend's layout (channels-first on torch). The stub's two bodies are in
tests/support/stubs.py; what else differs per backend is the adapter's
(tests/backends/conftest.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import unet_cases
from stubs import CHANNEL_OFFSET, TOKENS

from shared.config import DiffusionConfig, SampleConfig, apply_overrides, preset
from shared.data.video import to_uint8, write_sample_folder
from shared.diffusion.sampling import cfg_combine, make_sampler_table, numpy_noise, sample_loop

SHAPE = (2, 3, 4, 6, 3)  # (B, F, H, W, C), channels-last; H != W so a swapped axis shows
DIM = 8


def _sample(backend):
    return backend.module("sample")


def _text_batch_class(backend):
    return backend.module("diffusion").TextBatch


# ------------------------------------------------------------ a model with a numpy twin


def _text_np(backend, batch: int, seed: int, empty: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, TOKENS), dtype=backend.np_index_dtype)
    mask[:, 3 if not empty else 1:] = 0
    return {"states": rng.standard_normal((batch, TOKENS, DIM), dtype=np.float32),
            "mask": mask, "pooled": rng.standard_normal((batch, DIM), dtype=np.float32)}


def _to_batch(backend, text: dict[str, np.ndarray]):
    return _text_batch_class(backend)(backend.array(text["states"]), backend.array(text["mask"]),
                                      backend.array(text["pooled"]))


def _constant_np(text: dict[str, np.ndarray]) -> np.ndarray:
    """One number per sample from all three parts of the text."""
    m = text["mask"].astype(np.float64)
    states = (text["states"] * m[..., None]).sum(axis=(1, 2)) / (m.sum(axis=1) * DIM)
    return (0.3 * np.tanh(text["pooled"].astype(np.float64).sum(axis=1)) + 0.5 * states
            + 0.05 * m.sum(axis=1) / TOKENS)


def twin(x: np.ndarray, t: int, text: dict[str, np.ndarray]) -> np.ndarray:
    """The stub's output in numpy, channels-last (B, F, H, W, C)."""
    c = _constant_np(text)[:, None, None, None, None]
    return (0.1 * x + c + CHANNEL_OFFSET + 2e-4 * t).astype(x.dtype)


def _stub(backend):
    """Stub: out = 0.1 x + (a per-sample constant from the text) + (a per-channel offset)
    + 2e-4 t, in the backend's layout; records each call's batch size, timesteps (numpy), pooled
    text (numpy), train/eval mode and whether grad was enabled (tests/support/stubs.py)."""
    stub_class, _ = backend.stubs("sample")
    return stub_class()


def _broken(backend):
    """A Stub whose forward raises RuntimeError("boom")."""
    _, broken_class = backend.stubs("sample")
    return broken_class()


def _to_model(backend, x: np.ndarray):
    """A channels-last numpy video as the model's input (channels-first on torch)."""
    return backend.to_model_layout(x)


def _from_model(backend, out) -> np.ndarray:
    """The model's output as a channels-last numpy video."""
    return backend.from_model_layout(out)


def _timesteps(backend, batch: int, t: int):
    return backend.array(np.full((batch,), t, dtype=backend.np_index_dtype))


def reference(diffusion: DiffusionConfig, sample: SampleConfig, text, uncond, shape, seed,
              dtype=np.float32) -> np.ndarray:
    """The numpy loop, channels-last, with guidance combined by hand."""
    table = make_sampler_table(diffusion, sample)
    draw = numpy_noise(seed)

    def model(x, t):
        cond = twin(x, t, text)
        if uncond is None or sample.guidance == 1.0:
            return cond
        free = twin(x, t, uncond)
        return (free + sample.guidance * (cond - free)).astype(x.dtype)

    def noise(s):
        return draw(s).astype(dtype)

    x = sample_loop(model, table, noise(shape), noise=noise, clip=np.clip)
    return np.clip(x, -1.0, 1.0)


CASES = {
    "ddim-eta0": (DiffusionConfig(), SampleConfig(sampler="ddim", steps=6, eta=0.0)),
    "ddim-eta1": (DiffusionConfig(), SampleConfig(sampler="ddim", steps=6, eta=1.0)),
    "ddpm": (DiffusionConfig(), SampleConfig(sampler="ddpm", steps=6)),
    "dpm++": (DiffusionConfig(), SampleConfig(sampler="dpm++", steps=6,
                                              timestep_spacing="linspace")),
    "ddim-trailing-v": (DiffusionConfig(prediction_type="v_prediction", beta_schedule="cosine"),
                        SampleConfig(sampler="ddim", steps=5, eta=0.5,
                                     timestep_spacing="trailing")),
    "ddpm-noclip-x0": (DiffusionConfig(clip_sample=False, prediction_type="sample"),
                       SampleConfig(sampler="ddpm", steps=4)),
}


# ---------------------------------------------------------------------- layout helpers


@pytest.mark.backends("torch")
def test_channels_first_and_last_round_trip(backend):
    import torch

    sample = _sample(backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    first = sample.to_channels_first(x, torch.device("cpu"), torch.float32)
    assert first.shape == (2, 3, 3, 4, 6) and first.dtype == torch.float32
    b, f, h, w, c = 1, 2, 3, 5, 2
    assert first[b, c, f, h, w].item() == x[b, f, h, w, c]
    back = sample.to_channels_last(first)
    assert back.dtype == np.float32 and back.shape == SHAPE
    np.testing.assert_array_equal(back, x)
    # Non-contiguous input, another dtype, and a tensor that requires grad.
    view = np.transpose(rng.standard_normal((3, 6, 4, 3, 2)), (4, 3, 2, 1, 0))
    wide = sample.to_channels_first(view, torch.device("cpu"), torch.float64).requires_grad_()
    assert wide.dtype == torch.float64
    np.testing.assert_array_equal(sample.to_channels_last(wide), view.astype(np.float32))


@pytest.mark.backends("torch")
def test_to_channels_last_matches_permute(backend):
    import torch

    t = torch.arange(2 * 3 * 4 * 5 * 6, dtype=torch.bfloat16).reshape(2, 3, 4, 5, 6)
    out = _sample(backend).to_channels_last(t)
    assert out.dtype == np.float32 and out.shape == (2, 4, 5, 6, 3)
    np.testing.assert_array_equal(out, np.moveaxis(t.float().numpy(), 1, -1))


# --------------------------------------------------------- generate vs the numpy loop


def test_stub_twin_agree(backend):
    """The two bodies of the test model are the same function (so the loops are comparable)."""
    text = _text_np(backend, 2, seed=1)
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    batch = _to_batch(backend, text)
    out = _stub(backend)(_to_model(backend, x), _timesteps(backend, 2, 731), batch.states,
                         batch.mask, batch.pooled)
    np.testing.assert_allclose(_from_model(backend, out), twin(x, 731, text), atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_generate_matches_numpy_sample_loop(backend, case):
    generate = _sample(backend).generate
    diffusion, sample = CASES[case]
    sample = replace(sample, guidance=1.0)
    text = _text_np(backend, SHAPE[0], seed=1)
    stub = _stub(backend)
    got = generate(stub, diffusion, sample, _to_batch(backend, text), None, SHAPE, seed=7)
    expected = reference(diffusion, sample, text, None, SHAPE, seed=7)
    assert got.shape == SHAPE and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
    assert got.min() >= -1.0 and got.max() <= 1.0
    # The sampler visited its table's timesteps, one unguided model call per step.
    table = make_sampler_table(diffusion, sample)
    assert [call["batch"] for call in stub.calls] == [SHAPE[0]] * len(table)
    assert [int(call["t"][0]) for call in stub.calls] == table.timesteps.tolist()
    assert all(np.issubdtype(call["t"].dtype, np.integer) and call["t"].shape == (SHAPE[0],)
               for call in stub.calls)
    # The backend's integer timesteps (torch.long, MLX int32), sampled without autograd.
    assert all(call["t"].dtype == backend.np_index_dtype for call in stub.calls)
    assert not any(call["grad"] for call in stub.calls)
    # Results are not trivially saturated: something inside (-1, 1) was compared.
    assert np.mean(np.abs(got) < 0.999) > 0.05


def test_generate_clips_the_final_video_to_unit_range(backend):
    """Without clip_sample an epsilon stub drives x far outside [-1, 1]; the returned video is
    the numpy loop's final x clipped."""
    diffusion = DiffusionConfig(clip_sample=False)
    sample = SampleConfig(sampler="ddim", steps=4, guidance=1.0)
    text = _text_np(backend, SHAPE[0], seed=1)
    draw = numpy_noise(7)
    raw = sample_loop(lambda x, t: twin(x, t, text), make_sampler_table(diffusion, sample),
                      draw(SHAPE), noise=draw, clip=None)
    assert np.abs(raw).max() > 1.5 and (np.abs(raw) < 1).any()
    got = _sample(backend).generate(_stub(backend), diffusion, sample, _to_batch(backend, text),
                                    None, SHAPE, seed=7)
    np.testing.assert_allclose(got, np.clip(raw, -1, 1), atol=2e-5, rtol=0)


def test_step_noise_matters_and_is_the_seeds_stream(backend):
    """eta 1 draws a fresh normal per step from the same stream as x_T: a different seed, or
    eta 0, gives another video; the same seed gives the same one."""
    generate = _sample(backend).generate
    diffusion, sample = CASES["ddim-eta1"]
    sample = replace(sample, guidance=1.0)
    text = _to_batch(backend, _text_np(backend, SHAPE[0], seed=1))
    a = generate(_stub(backend), diffusion, sample, text, None, SHAPE, seed=3)
    b = generate(_stub(backend), diffusion, sample, text, None, SHAPE, seed=3)
    c = generate(_stub(backend), diffusion, sample, text, None, SHAPE, seed=4)
    d = generate(_stub(backend), diffusion, replace(sample, eta=0.0), text, None, SHAPE, seed=3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2 and np.abs(a - d).max() > 1e-2


@pytest.mark.parametrize("case", ["ddim-eta0", "ddim-eta1", "ddpm", "dpm++"])
def test_guided_generate_matches_hand_combined_numpy_loop(backend, case):
    diffusion, sample = CASES[case]
    sample = replace(sample, guidance=3.5)
    text = _text_np(backend, SHAPE[0], seed=1)
    uncond = _text_np(backend, SHAPE[0], seed=2, empty=True)
    stub = _stub(backend)
    got = _sample(backend).generate(stub, diffusion, sample, _to_batch(backend, text),
                                    _to_batch(backend, uncond), SHAPE, seed=11)
    expected = reference(diffusion, sample, text, uncond, SHAPE, seed=11)
    np.testing.assert_allclose(got, expected, atol=5e-5, rtol=0)
    # One doubled batch per step, conditional half first.
    b = SHAPE[0]
    assert [call["batch"] for call in stub.calls] == [2 * b] * sample.steps
    for call in stub.calls:
        np.testing.assert_array_equal(call["pooled"][:b], text["pooled"])
        np.testing.assert_array_equal(call["pooled"][b:], uncond["pooled"])
    # Guidance changed the result (the comparison above is not the unguided loop in disguise).
    unguided = reference(diffusion, replace(sample, guidance=1.0), text, None, SHAPE, seed=11)
    assert np.abs(expected - unguided).max() > 1e-2


@pytest.mark.backends("torch")
def test_generate_in_float64_follows_the_float64_loop(backend):
    diffusion, sample = CASES["dpm++"]
    sample = replace(sample, guidance=2.0)
    text = _text_np(backend, SHAPE[0], seed=1)
    uncond = _text_np(backend, SHAPE[0], seed=2, empty=True)
    got = _sample(backend).generate(_stub(backend), diffusion, sample, _to_batch(backend, text),
                                    _to_batch(backend, uncond), SHAPE, seed=5,
                                    dtype=backend.xp.float64)
    expected = reference(diffusion, sample, text, uncond, SHAPE, seed=5, dtype=np.float64)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected.astype(np.float32), atol=1e-6, rtol=0)


@pytest.mark.backends("mlx")
def test_generate_in_bfloat16_stays_near_the_float32_loop(backend):
    """dtype=bf16 runs the loop in bf16 (what a bf16 model samples in) and still returns
    float32 in [-1, 1], close to the float32 reference."""
    diffusion, sample = CASES["ddim-eta0"]
    # "leading": a first step from t = 999 ("trailing") magnifies bf16's rounding of x ~150x
    # (1 / sqrt(abar)) before clipping; this test is about the dtype plumbing, not that.
    sample = replace(sample, guidance=1.0, timestep_spacing="leading")
    text = _text_np(backend, SHAPE[0], seed=1)
    got = _sample(backend).generate(_stub(backend), diffusion, sample, _to_batch(backend, text),
                                    None, SHAPE, seed=5, dtype=backend.bfloat16)
    expected = reference(diffusion, sample, text, None, SHAPE, seed=5)
    assert got.dtype == np.float32 and got.min() >= -1.0 and got.max() <= 1.0
    assert np.abs(got - expected).max() < 0.15 and np.abs(got - expected).mean() < 1e-2


@pytest.mark.parametrize("start_training", [True, False])
def test_generate_samples_in_eval_mode_and_restores_the_mode(backend, start_training):
    stub = _stub(backend)
    stub.train(start_training)
    _, sample = CASES["ddim-eta0"]
    _sample(backend).generate(stub, DiffusionConfig(), replace(sample, steps=2),
                              _to_batch(backend, _text_np(backend, 2, 1)), None, SHAPE, seed=0)
    assert stub.calls and not any(call["training"] for call in stub.calls)
    assert stub.training is start_training


def test_generate_restores_the_mode_when_the_model_fails(backend):
    model = _broken(backend)
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        _sample(backend).generate(model, DiffusionConfig(), SampleConfig(steps=2),
                                  _to_batch(backend, _text_np(backend, 2, 1)), None, SHAPE,
                                  seed=0)
    assert model.training


# ------------------------------------------------------------------- the real tiny UNet


def _config(backend):
    """The tiny preset; on MLX with a smaller video than its data (2 frames of 8 x 8,
    `backend.small_clips`): MLX runs on the CPU here, and the UNet does not care."""
    return apply_overrides(preset("tiny"), backend.small_clips)


def _video(backend) -> tuple[int, ...]:
    config = _config(backend)
    return (2, config.data.num_frames, config.data.image_size, config.data.image_size,
            config.model.out_channels)


def _model_input(backend, seed: int):
    """A random (2, 3, F, H, W) video batch in the backend's layout, for the UNet itself."""
    _, f, h, w, _ = _video(backend)
    return backend.randn(backend.video_shape(2, 3, f, h, w), seed)


@pytest.fixture(scope="module")
def unet(backend):
    """The tiny UNet with every parameter nudged, so zero-initialised layers (conv_out, conv2,
    proj_out) no longer hide the network and it predicts something non-zero."""
    model = unet_cases.build(backend, _config(backend).model, seed=0)
    backend.eval(model.parameters())
    return model


def _unet_text(backend, batch: int, seed: int, empty: bool = False):
    text_batch = _text_batch_class(backend)
    d = _config(backend).model.context_dim
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, 6), dtype=backend.np_index_dtype)
    mask[:, 2 if empty else 4:] = 0
    return text_batch(backend.array(rng.standard_normal((batch, 6, d), dtype=np.float32)),
                      backend.array(mask),
                      backend.array(rng.standard_normal((batch, d), dtype=np.float32)))


def test_unet_predicts_something(backend, unet):
    x = _model_input(backend, 0)
    with backend.no_grad():
        out = _sample(backend).guided_prediction(unet, x, 500, _unet_text(backend, 2, 0), None,
                                                 1.0)
    assert out.shape == x.shape and np.abs(backend.numpy(out)).mean() > 1e-2


@pytest.mark.slow
def test_unet_ddim_eta0_is_deterministic_per_seed(backend, unet):
    generate, config, video = _sample(backend).generate, _config(backend), _video(backend)
    sample = SampleConfig(sampler="ddim", steps=3, eta=0.0, guidance=1.0)
    text = _unet_text(backend, 2, 0)
    a = generate(unet, config.diffusion, sample, text, None, video, seed=1)
    b = generate(unet, config.diffusion, sample, text, None, video, seed=1)
    c = generate(unet, config.diffusion, sample, text, None, video, seed=2)
    assert a.shape == video and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-2
    assert a.min() >= -1.0 and a.max() <= 1.0 and np.isfinite(a).all()


def test_unet_cfg_at_scale_one_is_the_conditional_output(backend, unet):
    """Over the doubled batch, cfg_combine at 1 gives the conditional-only prediction; at 4 it
    gives uncond + 4 (cond - uncond) of two separate calls."""
    guided_prediction = _sample(backend).guided_prediction
    x = _model_input(backend, 3)
    text, uncond = _unet_text(backend, 2, 4), _unet_text(backend, 2, 5, empty=True)
    t = 617
    ts = _timesteps(backend, 2, t)
    with backend.no_grad():
        cond = backend.numpy(unet(x, ts, text.states, text.mask, text.pooled))
        free = backend.numpy(unet(x, ts, uncond.states, uncond.mask, uncond.pooled))
        both = _text_batch_class(backend).cat([text, uncond])
        doubled = unet(backend.concat([x, x]), backend.concat([ts, ts]), both.states,
                       both.mask, both.pooled)
        np.testing.assert_allclose(backend.numpy(cfg_combine(doubled, 1.0)), cond, atol=1e-5,
                                   rtol=0)
        assert np.abs(cond - free).max() > 1e-3  # the text matters, so the check has teeth
        np.testing.assert_allclose(
            backend.numpy(guided_prediction(unet, x, t, text, uncond, 1.0)), cond, atol=1e-5,
            rtol=0)
        np.testing.assert_allclose(
            backend.numpy(guided_prediction(unet, x, t, text, uncond, 4.0)),
            free + 4.0 * (cond - free), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(
            backend.numpy(guided_prediction(unet, x, t, text, uncond, 0.0)), free, atol=1e-5,
            rtol=0)


def test_unet_guidance_one_samples_like_no_guidance(backend, unet):
    generate, config, video = _sample(backend).generate, _config(backend), _video(backend)
    sample = SampleConfig(sampler="ddim", steps=3, eta=0.0, guidance=1.0)
    text, uncond = _unet_text(backend, 2, 0), _unet_text(backend, 2, 1, empty=True)
    a = generate(unet, config.diffusion, sample, text, uncond, video, seed=1)
    b = generate(unet, config.diffusion, sample, text, None, video, seed=1)
    c = generate(unet, config.diffusion, replace(sample, guidance=3.0), text, uncond, video,
                 seed=1)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("start_training", [True, False])
def test_unet_generate_keeps_train_or_eval_mode(backend, unet, start_training):
    unet.train(start_training)
    try:
        _sample(backend).generate(unet, _config(backend).diffusion,
                                  SampleConfig(steps=1, guidance=1.0),
                                  _unet_text(backend, 2, 0), None, _video(backend), seed=0)
        assert all(m.training is start_training for m in unet.modules())
    finally:
        unet.eval()


# ------------------------------------------------------------------------ sample_checkpoint


def test_sample_checkpoint_needs_a_prompt(backend, tmp_path):
    with pytest.raises(ValueError, match="at least one prompt"):
        _sample(backend).sample_checkpoint(tmp_path / "nowhere", [], tmp_path / "out")


def test_sample_checkpoint_writes_prompt_major_samples_from_the_ema_weights(backend, tmp_path,
                                                                           unet, monkeypatch):
    text_encoder_module = backend.module("text_encoder")
    save_checkpoint = backend.module("checkpoint").save_checkpoint
    unet3d = backend.module("unet").UNet3D
    text_batch = _text_batch_class(backend)

    encoders = []

    class Recording(text_encoder_module.TextEncoder):
        """The real encoder, kept so the expected videos need not load it a second time."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            encoders.append(self)

    monkeypatch.setattr(text_encoder_module, "TextEncoder", Recording)
    config = _config(backend)
    backend.seed(1)
    raw = unet3d(config.model)  # zero conv_out: it would predict 0 everywhere
    save_checkpoint(tmp_path / "run", 1, config, raw, ema=unet)
    sample = SampleConfig(sampler="ddim", steps=2, num_samples=2, guidance=2.0, seed=3)
    prompts = ["hello friend", "thank you"]
    paths = _sample(backend).sample_checkpoint(tmp_path / "run", prompts, tmp_path / "out",
                                               sample=sample, device=backend.device,
                                               progress=False)

    captions = ["hello friend", "hello friend", "thank you", "thank you"]
    assert len(paths) == 4 and (tmp_path / "out" / "grid.gif").exists()
    assert [p.with_suffix(".txt").read_text().strip() for p in paths] == captions

    (encoder,) = encoders
    text = text_batch(*encoder.encode(captions))
    uncond = text_batch(*encoder.empty_embedding(4))
    shape = (4, config.data.num_frames, config.data.image_size, config.data.image_size, 3)
    # The loaded model runs on the device in its layout (torch: channels-last on the CPU); the
    # same here, because from t = 999 the first step magnifies float rounding ~150x
    # (1 / sqrt(abar)).
    loaded = backend.as_loaded(unet)
    videos = _sample(backend).generate(loaded, config.diffusion, sample, text, uncond, shape,
                                       seed=3, **backend.on_device)
    assert np.abs(videos[0] - videos[1]).mean() > 1e-2  # one prompt, two different samples
    expected = write_sample_folder(tmp_path / "expected", [to_uint8(v) for v in videos],
                                   captions, sample.fps)
    for got, want in zip(paths, expected, strict=True):
        assert Path(got).name == Path(want).name
        assert Path(got).read_bytes() == Path(want).read_bytes()
