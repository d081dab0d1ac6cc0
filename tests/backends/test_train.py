"""Training on real toy clips, tiny preset, CPU, on both backends: learning, exact resume,
checkpoints, logs.

MLX's CPU backend is much slower than torch's, so on MLX the learning test runs fewer steps on
2 x 8 x 8 clips and the tests of the machinery (resume, checkpoints, logs) shrink the clips to
2 x 8 x 8 (`backend.small_clips`); torch runs the tiny preset's own 4 x 16 x 16 clips. The model
is the tiny preset's throughout. What differs per backend (step counts, thresholds) is the
adapter's `backend.train` (tests/backends/conftest.py), with the reasons beside it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from shared.app.errors import TrainingDiverged
from shared.config import Config, apply_overrides, preset
from shared.model.checkpoint import CheckpointError, list_checkpoints, load_json


def tiny_config(data: Path, out: Path, *overrides: str) -> Config:
    config = preset("tiny")
    return apply_overrides(config, [
        f"data.data_dir={data}", f"train.out_dir={out}", "data.val_fraction=0",
        "train.sample_every=0", "train.checkpoint_every=1000", "train.batch_size=4",
        *overrides])


def load_tensors(backend, path: Path) -> dict[str, np.ndarray]:
    """A safetensors file as float numpy (bf16 widened)."""
    return {k: backend.numpy(v) for k, v in backend.load_safetensors(path).items()}


def assert_identical_files(backend, a: Path, b: Path, name: str) -> None:
    """The same keys (at least one), dtypes and values (torch.equal; MLX: the same bytes)."""
    x, y = backend.load_safetensors(a), backend.load_safetensors(b)
    assert x.keys() == y.keys() and x
    assert all(x[k].dtype == y[k].dtype and backend.equal(x[k], y[k]) for k in x), name


def parameters(backend, model) -> list:
    return list(backend.params(model).values())


@pytest.mark.slow
def test_training_overfits_a_handful_of_clips(backend, toy_data, tmp_path):
    overrides, steps, last, first, ratio = backend.train.overfit
    config = tiny_config(toy_data, tmp_path / "run", *overrides, "train.lr=2e-3",
                         "train.cond_drop_prob=0")
    losses = np.array(backend.trainer(config).train().losses)
    assert len(losses) == steps and np.isfinite(losses).all()
    assert losses[-last:].mean() < ratio * losses[:first].mean()


@pytest.mark.slow
def test_two_halves_with_resume_equal_one_run(backend, toy_data, tmp_path):
    # backend.train.resume: on MLX, batch 2 of 8 clips, so the resume lands mid-epoch.
    extra = (*backend.small_clips, "train.steps=6", "train.checkpoint_every=3",
             "model.dropout=0.1", "train.lr=1e-3", *backend.train.resume)
    whole = backend.trainer(tiny_config(toy_data, tmp_path / "whole", *extra)).train()
    first = backend.trainer(tiny_config(toy_data, tmp_path / "split", *extra)).train(until=3)
    assert first.step == 3 and first.checkpoint.name == "step_0000003"
    second = backend.trainer(tiny_config(toy_data, tmp_path / "split", *extra)).train(resume=True)
    assert len(whole.losses) == 6
    assert first.losses + second.losses == whole.losses
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert_identical_files(backend, tmp_path / "whole" / "checkpoints" / "step_0000006" / name,
                               tmp_path / "split" / "checkpoints" / "step_0000006" / name, name)
    state = load_json(tmp_path / "split" / "checkpoints" / "step_0000006" / "trainer_state.json")
    assert state["step"] == 6 and state["ema_updates"] == 6


@pytest.mark.slow
def test_checkpoint_reloads_to_identical_outputs(backend, toy_data, tmp_path):
    steps = f"train.steps={backend.train.reload_steps}"
    trainer = backend.trainer(tiny_config(toy_data, tmp_path / "run", *backend.small_clips,
                                          steps))
    result = trainer.train()
    load_model = partial(backend.module("checkpoint").load_model, **backend.on_device)
    config, model, path = load_model(tmp_path / "run", use_ema=True)
    assert path == result.checkpoint
    assert config == trainer.config
    assert not model.training
    rng = np.random.default_rng(0)
    frames, size = trainer.config.data.num_frames, trainer.config.data.image_size
    x = backend.to_device(backend.array(rng.standard_normal(
        backend.video_shape(2, 3, frames, size, size), dtype=np.float32)))
    t = backend.to_device(backend.array(np.array([10, 900])))
    ctx = backend.to_device(backend.array(rng.standard_normal((2, 5, 384), dtype=np.float32)))
    pooled = backend.to_device(backend.array(rng.standard_normal((2, 384), dtype=np.float32)))

    def run(m):
        m.eval()
        with backend.no_grad():
            return backend.numpy(m(x, t, ctx, None, pooled))

    expected = run(trainer.ema.model)
    np.testing.assert_array_equal(run(model), expected)
    _, raw, _ = load_model(tmp_path / "run", use_ema=False)
    own = run(trainer.model)
    np.testing.assert_array_equal(run(raw), own)
    assert np.abs(own - expected).max() > 0  # EMA and raw weights really are two models


@pytest.mark.slow
def test_keep_last_prunes_and_latest_points_at_the_newest(backend, toy_data, tmp_path):
    overrides, kept = backend.train.keep_last
    backend.trainer(tiny_config(toy_data, tmp_path / "run", *overrides,
                                "train.keep_last=2")).train()
    steps = [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert steps == kept
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == \
        f"step_{kept[-1]:07d}"
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir()
                if p.name.startswith(".")]  # no temporaries left behind


@pytest.mark.slow
def test_a_new_run_refuses_a_folder_holding_one(backend, toy_data, tmp_path):
    steps = backend.train.refuse_steps
    backend.trainer(tiny_config(toy_data, tmp_path / "run", *backend.small_clips,
                                f"train.steps={steps}")).train()
    with pytest.raises(CheckpointError, match="--resume"):
        backend.trainer(tiny_config(toy_data, tmp_path / "run", *backend.small_clips,
                                    f"train.steps={2 * steps}")).train()


@pytest.mark.slow
def test_divergence_stops_and_keeps_the_last_good_checkpoint(backend, toy_data, tmp_path):
    good = backend.train.good_steps
    backend.trainer(tiny_config(toy_data, tmp_path / "run", *backend.small_clips,
                                f"train.steps={good}", "train.checkpoint_every=2")).train()
    exploding = tiny_config(toy_data, tmp_path / "run", *backend.small_clips, "train.steps=40",
                            "train.lr=1e30", "train.grad_clip=0", "train.checkpoint_every=1")
    with pytest.raises(TrainingDiverged,
                       match=f"step_{good:07d}|step_{good + 1:07d}") as info:
        backend.trainer(exploding).train(resume=True)
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert latest in str(info.value)
    for name in ("model.safetensors", "ema.safetensors"):
        weights = load_tensors(backend, tmp_path / "run" / "checkpoints" / latest / name)
        assert all(np.isfinite(w).all() for w in weights.values()), name


@pytest.mark.slow
def test_tensorboard_has_scalars_config_and_sample_video(backend, toy_data, tmp_path):
    steps, sample_steps = backend.train.tensorboard
    config = tiny_config(toy_data, tmp_path / "run", *backend.small_clips, f"train.steps={steps}",
                         "train.log_every=1", f"train.sample_every={steps}",
                         f"sample.steps={sample_steps}", "train.log_graph=true")
    backend.trainer(config).train()
    events = EventAccumulator(str(tmp_path / "run" / "tb"),
                              size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"):
        scalars = events.Scalars(tag)
        assert [e.step for e in scalars] == list(range(1, steps + 1)), tag
        assert all(np.isfinite(e.value) for e in scalars), tag
    assert "config" in tags["tensors"] and "device" in tags["tensors"]
    # The model graph, from a second event file in the folder, where the backend traces one.
    assert has_graph(events) == backend.traces_graph
    (device,) = events.Tensors("device")
    assert backend.library.encode() in device.tensor_proto.string_val[0]
    (video,) = events.Images("samples")
    assert video.step == steps and video.encoded_image_string[:6] == b"GIF89a"
    assert (tmp_path / "run" / "samples" / f"step_{steps:07d}.gif").exists()


def has_graph(events) -> bool:
    try:
        return bool(events.Graph().node)
    except ValueError:  # no graph in the folder
        return False


@pytest.mark.backends("torch")
def test_the_model_graph_is_traced_only_when_asked(backend, toy_data, tmp_path):
    """Tracing the graph costs seconds at every start, so train.log_graph (off) gates it."""
    backend.trainer(tiny_config(toy_data, tmp_path / "run", "train.steps=1")).train()
    events = EventAccumulator(str(tmp_path / "run" / "tb")).Reload()
    with pytest.raises(ValueError):
        events.Graph()


@pytest.mark.slow
def test_auto_batch_size_reaches_the_effective_batch(backend, toy_data, tmp_path):
    config = tiny_config(toy_data, tmp_path / "run", *backend.small_clips, "train.batch_size=auto",
                         "train.effective_batch=4", "train.steps=1")
    result = backend.trainer(config).train()
    assert result.micro_batch in (1, 2, 4)
    assert result.micro_batch * result.grad_accum >= 4
    find_batch_size = backend.module("device").find_batch_size
    sizes = []
    assert find_batch_size(lambda b: sizes.append(b), 64, *backend.cpu_args, lambda _: None) \
        in (1, 2, 4, 8, 16, 32, 64)
    assert sizes == [1, 2]  # CPU: two probes give the per-clip cost, no trial and error


@pytest.mark.backends("mlx")
def test_gradient_accumulation_logs_one_loss_per_optimizer_step(backend, toy_data, tmp_path):
    config = tiny_config(toy_data, tmp_path / "run", *backend.small_clips, "train.steps=3",
                         "train.batch_size=2", "train.grad_accum=2")
    trainer = backend.trainer(config)
    result = trainer.train()
    assert (result.micro_batch, result.grad_accum) == (2, 2)
    assert len(result.losses) == 3 and np.isfinite(result.losses).all()
    assert trainer.ema.updates == 3
    state = load_json(result.checkpoint / "trainer_state.json")
    assert (state["step"], state["micro_batch"], state["grad_accum"]) == (3, 2, 2)


@pytest.mark.backends("mlx")
def test_fp16_is_refused_with_a_hint(backend, toy_data, tmp_path):
    with pytest.raises(ValueError, match="mixed_precision=bf16"):
        backend.trainer(tiny_config(toy_data, tmp_path / "run", "train.mixed_precision=fp16"))


@pytest.mark.backends("mlx")
def test_bf16_computes_in_bf16_and_returns_float32_gradients(backend):
    from mlx.utils import tree_flatten

    mx, nn = backend.xp, backend.nn
    diffusion_module = backend.module("diffusion")
    mixed_value_and_grad = backend.module("device").mixed_value_and_grad
    config = preset("tiny")
    mx.random.seed(0)
    model = backend.module("unet").UNet3D(config.model)
    # conv_out starts at zero, which would zero most gradients: give it weights.
    model.conv_out.weight = mx.random.normal(model.conv_out.weight.shape) * 0.05
    mx.eval(model.parameters())
    diffusion = diffusion_module.GaussianDiffusion(config.diffusion)
    x0 = mx.random.uniform(-1, 1, (2, 4, 16, 16, 3))
    dim = config.model.context_dim
    text = diffusion_module.TextBatch(mx.random.normal((2, 5, dim)),
                                      mx.ones((2, 5), dtype=mx.bool_), mx.random.normal((2, dim)))
    t, noise = mx.array([100, 700]), mx.random.normal(x0.shape)
    args = (x0, text, t, noise)
    fn = partial(diffusion.loss, model)
    loss32, grads32 = nn.value_and_grad(model, fn)(*args)
    loss16, grads16 = mixed_value_and_grad(model, fn, mx.bfloat16)(*args)
    flat32, flat16 = dict(tree_flatten(grads32)), dict(tree_flatten(grads16))
    assert flat16.keys() == flat32.keys()
    assert all(g.dtype == mx.float32 for g in flat16.values())
    assert all(p.dtype == mx.float32 for _, p in tree_flatten(model.parameters()))
    g32 = np.concatenate([np.array(flat32[k]).ravel() for k in sorted(flat32)])
    g16 = np.concatenate([np.array(flat16[k]).ravel() for k in sorted(flat16)])
    rel = np.linalg.norm(g16 - g32) / np.linalg.norm(g32)
    # bf16 keeps 8 bits of mantissa: the gradients differ (the compute really was bf16) but
    # point the same way.
    assert 1e-4 < rel < 5e-2, rel
    assert abs(float(loss16) - float(loss32)) < 2e-2 * float(loss32)
    assert float(loss16) != float(loss32)


@pytest.mark.slow
def test_bf16_training_learns_and_keeps_float32_weights(backend, toy_data, tmp_path):
    """(On torch this was the train.mixed_precision=bf16 case of test_training_variants_learn:
    the same run; the float32-weight check was MLX's.)"""
    config = tiny_config(toy_data, tmp_path / "run", "train.steps=15", "train.lr=2e-3",
                         "train.cond_drop_prob=0", "train.warmup_steps=3",
                         "train.mixed_precision=bf16")
    trainer = backend.trainer(config)
    losses = np.array(trainer.train().losses)
    assert np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()
    assert all(p.dtype == backend.float32 for p in parameters(backend, trainer.model))


@pytest.mark.backends("torch")
def test_fp16_training_learns_with_a_gradient_scaler_where_it_is_supported(backend, toy_data,
                                                                           tmp_path):
    """CUDA: fp16 autocast with a GradScaler, float32 master weights, a falling loss. The CPU
    has no fast fp16 kernels, so there the trainer refuses it up front, pointing at bf16."""
    from t2s_torch.device import DeviceError

    config = tiny_config(toy_data, tmp_path / "run", "train.steps=15", "train.lr=2e-3",
                         "train.cond_drop_prob=0", "train.warmup_steps=3",
                         "train.mixed_precision=fp16")
    if backend.device == "cpu":
        with pytest.raises(DeviceError, match="use bf16"):
            backend.trainer(config)
        return
    trainer = backend.trainer(config)
    assert (trainer.scaler is not None) == backend.device.startswith("cuda")
    losses = np.array(trainer.train().losses)
    assert len(losses) == 15 and np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()
    assert all(p.dtype == backend.float32 for p in parameters(backend, trainer.model))


@pytest.mark.backends("mlx")
def test_ema_follows_the_warmed_up_decay(backend):
    nn = backend.nn
    model = nn.Linear(3, 2)
    ema = backend.module("train").EMA(model, decay=0.9)
    start = np.array(ema.model.weight)
    model.update({"weight": model.weight + 1.0})
    ema.update(model)  # decay min(0.9, 2 / 11)
    np.testing.assert_allclose(np.array(ema.model.weight), start + (1 - 2 / 11), atol=1e-6)
    assert not ema.model.training and ema.updates == 1
    for _ in range(30):
        ema.update(model)
    np.testing.assert_allclose(np.array(ema.model.weight), np.array(model.weight), atol=1e-3)


# backend.train.variants: the steps and thresholds. v_prediction runs on torch only: on MLX's
# short runs its loss starts near its floor and swings with t, so a dozen steps show no trend
# (its targets are checked against diffusers in test_diffusion.py).
@pytest.mark.parametrize("backend, option", [
    *[(b, o) for b in ("torch", "mlx") for o in (
        "model.gradient_checkpointing=true", "model.conv_mode=full",
        "diffusion.min_snr_gamma=5")],
    ("torch", "diffusion.prediction_type=v_prediction"),
], indirect=["backend"])
@pytest.mark.slow
def test_training_variants_learn(backend, toy_data, tmp_path, option):
    overrides, steps, last, first, ratio = backend.train.variants
    config = tiny_config(toy_data, tmp_path / "run", *overrides, "train.lr=2e-3",
                         "train.cond_drop_prob=0", option)
    losses = np.array(backend.trainer(config).train().losses)
    assert len(losses) == steps and np.isfinite(losses).all()
    assert losses[-last:].mean() < ratio * losses[:first].mean()
