"""Latent mode on MLX (CPU), the mirror of tests/torch/test_latent.py, with no torch import.

The VAE folder is written the way diffusers' save_pretrained writes one (config.json +
diffusion_pytorch_model.safetensors, torch layout, diffusers' keys: the parity tests check the
port's keys against diffusers'), here from the MLX port's own randomly initialised weights. Clips
are the tiny preset's at 2 x 8 x 8 (MLX's CPU backend is slow), so latents are 2 x 4 x 4 x 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
from mlx.utils import tree_flatten  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from shared.checkpoint import MLX_TO_TORCH_AXES, load_checkpoint_config, resolve_checkpoint  # noqa: E402
from shared.config import Config, apply_overrides, preset  # noqa: E402
from shared.data import BatchIterator  # noqa: E402
from shared.latents import VAE_WEIGHTS, VAEInfo, VAEMismatchError, vae_hash  # noqa: E402
from shared.toy import make_toy_dataset  # noqa: E402
from shared.video import read_video  # noqa: E402
from t2s_mlx import vae as mlx_vae  # noqa: E402
from t2s_mlx.sample import sample_checkpoint  # noqa: E402
from t2s_mlx.train import Trainer  # noqa: E402

SMALL = ("data.num_frames=2", "data.image_size=8")


def make_tiny_vae(folder: Path, seed: int = 0) -> Path:
    """A two-level AutoencoderKL folder in diffusers' format, scaling_factor = 1 / latent std."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
              "down_block_types": ["DownEncoderBlock2D"] * 2,
              "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [32, 64],
              "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
              "sample_size": 16, "scaling_factor": 1.0}
    (folder / "config.json").write_text(json.dumps(config))
    mx.random.seed(seed)
    model = mlx_vae.AutoencoderKL(VAEInfo.read(folder))
    save_file({k: np.ascontiguousarray(np.array(v).transpose(MLX_TO_TORCH_AXES[v.ndim]))
               if v.ndim in MLX_TO_TORCH_AXES else np.array(v)
               for k, v in tree_flatten(model.parameters())}, folder / VAE_WEIGHTS)
    frames = np.random.default_rng(seed).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    config["scaling_factor"] = 1.0 / float(
        mlx_vae.LatentVAE.from_pretrained(folder).encode(frames).std())
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy")
    make_toy_dataset(folder, n=6, num_prompts=2, num_frames=4, height=36, width=64,
                     progress=False)
    return folder


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    return make_tiny_vae(tmp_path_factory.mktemp("vae"))


def latent_config(data: Path, out: Path, vae: Path, *overrides: str) -> Config:
    return apply_overrides(preset("tiny"), [
        f"data.data_dir={data}", f"train.out_dir={out}", f"data.vae={vae}",
        "diffusion.clip_sample=false", "data.val_fraction=0", "train.sample_every=0",
        "train.checkpoint_every=1000", "train.batch_size=3", *SMALL, *overrides])


def quiet(config: Config) -> Trainer:
    return Trainer(config, device="cpu", progress=False, log=lambda _: None)


def test_latent_training_overfits_from_the_cache(toy_data, vae_dir, tmp_path, monkeypatch):
    calls = []
    original = mlx_vae.LatentVAE.encode
    monkeypatch.setattr(mlx_vae.LatentVAE, "encode",
                        lambda self, frames: calls.append(len(frames)) or original(self, frames))
    config = latent_config(toy_data, tmp_path / "run", vae_dir, "train.steps=100",
                           "train.lr=2e-3", "train.cond_drop_prob=0", "train.warmup_steps=2")
    trainer = quiet(config)
    assert calls == [2] * 6  # every clip encoded once, before the first step
    assert (trainer.config.model.in_channels, trainer.config.data.model_size) == (4, 4)
    batch = next(iter(BatchIterator(trainer.dataset, 3, shuffle=False)))
    assert batch.video.dtype == np.float16 and batch.video.shape == (3, 2, 4, 4, 4)
    losses = np.array(trainer.train().losses)
    assert len(calls) == 6  # never the encoder per step
    assert losses[-20:].mean() < 0.6 * losses[:10].mean()  # (single steps are noisy: windows)
    saved = load_checkpoint_config(resolve_checkpoint(tmp_path / "run"))
    assert saved.data.vae == str(vae_dir) and saved.data.vae_hash == vae_hash(vae_dir)
    assert saved.model.in_channels == saved.model.out_channels == 4

    quiet(latent_config(toy_data, tmp_path / "again", vae_dir))  # all from the cache
    assert len(calls) == 6

    paths = sample_checkpoint(tmp_path / "run", ["hello"], tmp_path / "s", preset("tiny").sample,
                              device="cpu", progress=False)
    frames, _ = read_video(next(p for p in paths if p.name != "grid.gif"))
    assert frames.shape == (2, 8, 8, 3)  # 4x4 latents decoded to 8x8 pixels

    other = make_tiny_vae(tmp_path / "other", seed=1)
    with pytest.raises(VAEMismatchError, match="not the one this model was trained with"):
        sample_checkpoint(tmp_path / "run", ["hello"], tmp_path / "s2", device="cpu",
                          progress=False, vae=str(other))


def test_data_encode_on_mlx(toy_data, tmp_path):
    from click.testing import CliRunner

    from t2s_mlx.cli import main as mlx_main

    vae = make_tiny_vae(tmp_path / "vae", seed=2)
    args = ["data", "encode", str(toy_data), "--vae", str(vae), "--preset", "tiny", "--quiet",
            "--device", "cpu", "--set", "data.num_frames=2", "--set", "data.image_size=8"]
    first = CliRunner().invoke(mlx_main, args)
    assert first.exit_code == 0, first.output
    assert "6 clips: 6 encoded, 0 already cached" in first.output
    assert "0 encoded, 6 already cached" in CliRunner().invoke(mlx_main, args).output
