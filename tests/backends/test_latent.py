"""Latent mode end to end on CPU, on both backends: a tiny AutoencoderKL saved to a folder in
diffusers' format (`backend.stubs("latent")`, tests/support/stubs.py), toy clips encoded once
into the latent cache, the UNet trained on latents, samples decoded, and a different VAE
refused.

torch trains on the tiny preset's 4 x 16 x 16 clips (8 x 8 x 4 latents); MLX on 2 x 8 x 8
(`backend.small_clips`: MLX's CPU backend is slow), so its latents are 2 x 4 x 4 x 4. The
overfitting test's steps and thresholds are the adapter's `backend.latent`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from shared.config import Config, ConfigError, apply_overrides, preset
from shared.data.dataset import BatchIterator
from shared.data.latents import (
    VAE_WEIGHTS,
    VAEMismatchError,
    bind_vae,
    latent_cache_root,
    vae_hash,
)
from shared.data.video import read_video
from shared.model.checkpoint import load_checkpoint_config, resolve_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def make_tiny_vae(backend, folder: Path, seed: int = 0) -> Path:
    (make,) = backend.stubs("latent")
    return make(folder, seed)


def clip_size(backend) -> tuple[int, int]:
    """(frames, pixel size) of the clips the model trains on; latents are half the size."""
    data = apply_overrides(preset("tiny"), backend.small_clips).data
    return data.num_frames, data.image_size


@pytest.fixture(scope="module")
def toy_data(make_toy_data) -> Path:
    """Six clips of 4 frames."""
    return make_toy_data(n=6, num_frames=4)


@pytest.fixture(scope="module")
def vae_dir(backend, tmp_path_factory) -> Path:
    return make_tiny_vae(backend, tmp_path_factory.mktemp("vae"))


def latent_config(backend, data: Path, out: Path, vae: Path, *overrides: str) -> Config:
    return apply_overrides(preset("tiny"), [
        f"data.data_dir={data}", f"train.out_dir={out}", f"data.vae={vae}",
        "diffusion.clip_sample=false", "data.val_fraction=0", "train.sample_every=0",
        "train.checkpoint_every=1000", "train.batch_size=3", *backend.small_clips, *overrides])


def main(backend):
    return backend.module("cli").main


@pytest.fixture
def count_encodes(backend, monkeypatch):
    """How many frames went through the VAE encoder (the real one runs)."""
    calls = []
    LatentVAE = backend.module("vae").LatentVAE
    original = LatentVAE.encode

    def counting(self, frames):
        calls.append(len(frames))
        return original(self, frames)

    monkeypatch.setattr(LatentVAE, "encode", counting)
    return calls


@pytest.fixture(scope="module")
def latent_run(backend, toy_data, vae_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latent-run")
    backend.trainer(latent_config(backend, toy_data, out, vae_dir, "train.steps=3")).train()
    return out


def test_latent_training_overfits_from_the_cache(backend, toy_data, vae_dir, tmp_path,
                                                 count_encodes):
    overrides, last, first, ratio = backend.latent.overfit
    frames, size = clip_size(backend)
    config = latent_config(backend, toy_data, tmp_path / "run", vae_dir, *overrides,
                           "train.lr=2e-3", "train.cond_drop_prob=0")
    trainer = backend.trainer(config)
    assert (trainer.config.model.in_channels, trainer.config.data.model_size) == (4, size // 2)
    assert count_encodes == [frames] * 6  # every clip encoded once, before the first step
    before = len(count_encodes)
    batch = next(iter(BatchIterator(trainer.dataset, 3, shuffle=False)))
    assert batch.video.dtype == np.float16
    assert batch.video.shape == (3, frames, size // 2, size // 2, 4)
    losses = np.array(trainer.train().losses)
    assert len(count_encodes) == before  # never the encoder per step
    assert losses[-last:].mean() < ratio * losses[:first].mean()

    saved = load_checkpoint_config(resolve_checkpoint(tmp_path / "run"))
    assert saved.data.vae == str(vae_dir) and saved.data.vae_hash == vae_hash(vae_dir)
    assert saved.model.in_channels == saved.model.out_channels == 4

    # a second run on the same data reads every latent from the cache
    backend.trainer(latent_config(backend, toy_data, tmp_path / "again", vae_dir))
    assert len(count_encodes) == before


def test_latent_samples_decode_to_frames(backend, latent_run, tmp_path):
    frames, size = clip_size(backend)
    paths = backend.module("sample").sample_checkpoint(
        latent_run, ["hello"], tmp_path / "s", preset("tiny").sample, device=backend.device,
        progress=False)
    video, _ = read_video(next(p for p in paths if p.name != "grid.gif"))
    assert video.shape == (frames, size, size, 3)  # latents decoded to twice their size
    assert video.std() > 0


def test_a_different_vae_is_refused(backend, latent_run, toy_data, vae_dir, tmp_path):
    other = make_tiny_vae(backend, tmp_path / "other", seed=1)
    with pytest.raises(VAEMismatchError, match="not the one this model was trained with"):
        backend.module("sample").sample_checkpoint(latent_run, ["hello"], tmp_path / "s",
                                                   device=backend.device, progress=False,
                                                   vae=str(other))
    # resuming the run with another VAE is refused too
    config = latent_config(backend, toy_data, latent_run, other, "train.steps=4")
    config.data.vae_hash = vae_hash(vae_dir)
    with pytest.raises(VAEMismatchError):
        backend.trainer(config)


@pytest.mark.backends("torch")
def test_the_cli_refuses_a_replaced_vae_in_one_line(backend, toy_data, vae_dir, tmp_path):
    copy = tmp_path / "vae"
    shutil.copytree(vae_dir, copy)
    run = tmp_path / "run"
    result = CliRunner().invoke(main(backend), [
        "train", "--data", str(toy_data), "--preset", "tiny", "--vae", str(copy), "--out",
        str(run), "--steps", "1", "--batch-size", "2", "--set", "train.sample_every=0",
        "--device", backend.device, "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint_config(resolve_checkpoint(run)).diffusion.clip_sample is False
    shutil.copy(make_tiny_vae(backend, tmp_path / "other", seed=2) / VAE_WEIGHTS,
                copy / VAE_WEIGHTS)
    result = CliRunner().invoke(main(backend), ["sample", "--checkpoint", str(run), "--out",
                                                str(tmp_path / "s"), "--steps", "2", "--quiet",
                                                "--device", backend.device, "hello"])
    assert result.exit_code == 1
    error = result.output.splitlines()[-1]  # (above it: the text encoder's loading bar)
    assert error.startswith("Error: the VAE at") and "Traceback" not in result.output
    assert "not the one this model was trained with" in error
    # --vae points at the same weights elsewhere (a moved VAE): accepted
    result = CliRunner().invoke(main(backend), ["sample", "--checkpoint", str(run), "--out",
                                                str(tmp_path / "s2"), "--steps", "2", "--quiet",
                                                "--device", backend.device, "--vae", str(vae_dir),
                                                "hello"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s2" / "grid.gif").exists()


def test_data_encode_is_resumable_and_invalidates_what_changed(backend, toy_data, vae_dir,
                                                                tmp_path):
    frames, size = clip_size(backend)
    data = tmp_path / "data"
    shutil.copytree(toy_data, data, ignore=shutil.ignore_patterns(".t2s_cache"))
    sets = [x for o in backend.small_clips for x in ("--set", o)]
    args = ["data", "encode", str(data), "--vae", str(vae_dir), "--preset", "tiny", "--quiet",
            "--device", backend.device, *sets]
    first = CliRunner().invoke(main(backend), args)
    assert first.exit_code == 0, first.output
    assert "6 clips: 6 encoded, 0 already cached" in first.output
    config = latent_config(backend, data, tmp_path / "unused", vae_dir)
    root = latent_cache_root(config.data, vae_hash(vae_dir))
    assert root.name == f"latents-v1-{vae_hash(vae_dir)}-f{frames}-s{size}"
    entries = sorted(root.glob("*.npy"))
    latents = np.load(entries[0])
    assert latents.dtype == np.float16 and latents.shape == (frames, size // 2, size // 2, 4)
    assert 0.2 < float(np.abs(latents).mean()) < 5  # scaled to about unit size

    assert "0 encoded, 6 already cached" in CliRunner().invoke(main(backend), args).output
    clip = sorted(data.glob("*.gif"))[0]
    clip.write_bytes(sorted(data.glob("*.gif"))[1].read_bytes())  # an edited clip
    again = CliRunner().invoke(main(backend), args)
    assert "1 encoded, 5 already cached" in again.output
    assert len(list(root.glob("*.npy"))) == 6  # the stale entry was pruned
    # another size is another cache folder
    bigger = CliRunner().invoke(main(backend), [*args, "--set", f"data.image_size={2 * size}"])
    assert "6 encoded" in bigger.output
    assert (root.parent / f"latents-v1-{vae_hash(vae_dir)}-f{frames}-s{2 * size}").is_dir()


@pytest.mark.backends("torch")
def test_latent_mode_needs_unclipped_sampling(backend, vae_dir, toy_data, tmp_path):
    config = latent_config(backend, toy_data, tmp_path, vae_dir, "diffusion.clip_sample=true")
    with pytest.raises(ConfigError, match="clip_sample=false"):
        config.validate()
    odd = latent_config(backend, toy_data, tmp_path, vae_dir, "data.image_size=18")
    odd.validate()  # before the VAE is read, its downsampling is unknown
    with pytest.raises(ConfigError, match="latent size 9"):
        bind_vae(odd)  # 18 px / 2 = 9 latents: the two-level UNet cannot halve that
    pixels = preset("tiny")  # pixel mode is untouched: no VAE, the UNet sees image_size
    assert pixels.data.vae == "" and pixels.data.model_size == pixels.data.image_size == 16
    saved = tmp_path / "config.json"
    config.diffusion.clip_sample = False
    config.save(saved)
    assert json.loads(saved.read_text())["data"]["vae"] == str(vae_dir)
    assert Config.load(saved).data.vae == str(vae_dir)


def test_data_parallel_ranks_share_the_encoding(backend, toy_data, vae_dir, tmp_path):
    from shared.data.dataset import ClipDataset
    from shared.data.latents import prepare_latents

    data = tmp_path / "data"
    shutil.copytree(toy_data, data, ignore=shutil.ignore_patterns(".t2s_cache"))
    config = latent_config(backend, data, tmp_path / "unused", vae_dir)
    bind_vae(config)
    dataset = ClipDataset(config.data, split="all", progress=False)
    vae = backend.module("vae").LatentVAE.from_pretrained(vae_dir, device=backend.device)
    seen: list[int] = []

    def encode(clip):
        seen.append(len(clip))
        return vae.encode(clip)

    prepare_latents(dataset, config.data.vae_hash, encode, progress=False, rank=1, world_size=2)
    assert len(seen) == 3  # every second clip
    paths = prepare_latents(dataset, config.data.vae_hash, encode, progress=False, rank=0,
                            world_size=2)
    assert len(seen) == 6 and all(p.exists() for p in paths)  # the other half, nothing twice
