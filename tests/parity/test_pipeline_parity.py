"""Both backends are one model: the loss and its gradients, whole sampler trajectories, and a
checkpoint trained on one side and sampled on the other through the real command lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from shared.config import SampleConfig, apply_overrides, preset
from shared.data.video import read_video
from shared.model.layouts import TORCH_TO_MLX_AXES
from t2s_mlx import diffusion as mdiff
from t2s_mlx import sample as msample
from t2s_mlx.unet import UNet3D as MLXUNet
from t2s_mlx.unet import load_torch_layout_weights
from t2s_torch import diffusion as tdiff
from t2s_torch import sample as tsample
from t2s_torch.unet import UNet3D as TorchUNet

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """torch and MLX in one process on two cores: one torch thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def twin_models(*overrides: str, seed: int = 0):
    """A torch UNet with every weight random (zero-init layers included) and its MLX twin."""
    config = apply_overrides(preset("tiny"), list(overrides)).validate()
    torch.manual_seed(seed)
    model = TorchUNet(config.model)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    twin = MLXUNet(config.model)
    load_torch_layout_weights(twin, {k: v.numpy() for k, v in model.state_dict().items()})
    return config, model.eval(), twin


def text_inputs(batch: int, length: int = 6, seed: int = 1):
    rng = np.random.default_rng(seed)
    states = rng.standard_normal((batch, length, 384)).astype(np.float32)
    mask = np.ones((batch, length), np.int64)
    mask[-1, length // 2:] = 0
    pooled = rng.standard_normal((batch, 384)).astype(np.float32)
    return (tdiff.TextBatch(torch.from_numpy(states), torch.from_numpy(mask),
                            torch.from_numpy(pooled)),
            mdiff.TextBatch(mx.array(states), mx.array(mask), mx.array(pooled)))


@pytest.mark.parametrize("overrides", [(), ("model.conv_mode=full",
                                            "diffusion.prediction_type=v_prediction",
                                            "diffusion.min_snr_gamma=5",
                                            "diffusion.motion_weight=4")])
def test_training_loss_and_every_gradient_match(overrides):
    config, model, twin = twin_models(*overrides)
    model.train()
    twin.train()
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-1, 1, (2, 4, 16, 16, 3)).astype(np.float32)  # channels-last
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([17, 830])
    ttext, mtext = text_inputs(2)

    tdiffusion = tdiff.GaussianDiffusion(config.diffusion)
    loss_t = tdiffusion.loss(model, torch.from_numpy(x0).permute(0, 4, 1, 2, 3), ttext,
                             torch.from_numpy(t), torch.from_numpy(noise).permute(0, 4, 1, 2, 3))
    loss_t.backward()

    mdiffusion = mdiff.GaussianDiffusion(config.diffusion)
    loss_fn = mnn.value_and_grad(twin, lambda: mdiffusion.loss(
        twin, mx.array(x0), mtext, mx.array(t), mx.array(noise)))
    loss_m, grads = loss_fn()
    assert float(loss_m) == pytest.approx(loss_t.item(), rel=1e-4)
    torch_grads = {k: p.grad.numpy() for k, p in model.named_parameters()}
    mlx_grads = dict(tree_flatten(grads))
    assert mlx_grads.keys() == torch_grads.keys()
    for key, g in torch_grads.items():
        ours = np.array(mlx_grads[key])
        if g.ndim == 5:
            g = g.transpose(TORCH_TO_MLX_AXES[5])
        rel = np.linalg.norm(ours - g) / max(np.linalg.norm(g), 1e-12)
        assert rel <= 1e-3, f"{key}: relative gradient error {rel:.2e}"


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("dpm++", 0.0)])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_twenty_step_trajectories_end_in_the_same_video(sampler, eta, guidance):
    config, model, twin = twin_models()
    sample = SampleConfig(sampler=sampler, steps=20, eta=eta, guidance=guidance)
    ttext, mtext = text_inputs(2)
    tuncond, muncond = text_inputs(2, seed=9)
    shape = (2, 4, 16, 16, 3)
    ours_t = tsample.generate(model, config.diffusion, sample, ttext, tuncond, shape, seed=5)
    ours_m = msample.generate(twin, config.diffusion, sample, mtext, muncond, shape, seed=5)
    assert np.abs(ours_t).max() > 0.1  # a real video, not zeros
    assert np.abs(ours_t - ours_m).max() <= 1e-3


# ------------------------------------------------------------------ through the command lines


@pytest.fixture(scope="module")
def toy_data(make_toy_data) -> Path:
    """Six clips of 8 frames (tests/conftest.py writes them)."""
    return make_toy_data(n=6)


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*args], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.slow
@pytest.mark.parametrize("source, target", [("torch", "mlx"), ("mlx", "torch")])
def test_trained_on_one_side_sampled_on_the_other(toy_data, tmp_path, source, target):
    run_dir = tmp_path / "run"
    run(str(BIN / f"t2s-{source}"), "train", "--data", str(toy_data), "--preset", "tiny",
        "--out", str(run_dir), "--steps", "3", "--set", "train.sample_every=0", "--quiet")
    converted = tmp_path / "converted"
    run(sys.executable, str(REPO / "convert" / f"{source}_to_{target}.py"), str(run_dir),
        str(converted))
    args = ("--steps", "8", "--eta", "0", "--seed", "3", "--guidance", "2", "--quiet",
            "hello", "thanks friend")
    run(str(BIN / f"t2s-{source}"), "sample", "--checkpoint", str(run_dir), "--out",
        str(tmp_path / "a"), *args)
    run(str(BIN / f"t2s-{target}"), "sample", "--checkpoint", str(converted), "--out",
        str(tmp_path / "b"), *args)
    names = sorted(p.name for p in (tmp_path / "a").glob("0*.gif"))
    assert names == sorted(p.name for p in (tmp_path / "b").glob("0*.gif")) and len(names) == 2
    for name in names:
        a, _ = read_video(tmp_path / "a" / name)
        b, _ = read_video(tmp_path / "b" / name)
        assert a.shape == b.shape == (4, 16, 16, 3)
        assert psnr(a, b) >= 40.0
