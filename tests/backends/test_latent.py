"""Latent mode end to end on CPU, on both backends: a tiny AutoencoderKL saved to a folder in
diffusers' format, toy clips encoded once into the latent cache, the UNet trained on latents,
samples decoded, and a different VAE refused.

torch builds the VAE with diffusers' AutoencoderKL and save_pretrained, from 16 x 16 frames
(8 x 8 x 4 latents). MLX writes the same folder layout (config.json +
diffusion_pytorch_model.safetensors, torch layout, diffusers' keys: the parity tests check the
port's keys against diffusers') from the MLX port's own randomly initialised weights, with no
torch import; its clips are the tiny preset's at 2 x 8 x 8 (MLX's CPU backend is slow), so
latents are 2 x 4 x 4 x 4.
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
    VAEInfo,
    VAEMismatchError,
    bind_vae,
    latent_cache_root,
    vae_hash,
)
from shared.data.toy import make_toy_dataset
from shared.data.video import read_video
from shared.model.checkpoint import load_checkpoint_config, resolve_checkpoint
from shared.model.layouts import MLX_TO_TORCH_AXES

SMALL = ("data.num_frames=2", "data.image_size=8")
# Per backend: (frames, pixel size) of the clips the model trains on; latents are half the size.
CLIPS = {"torch": (4, 16), "mlx": (2, 8)}


def small(backend) -> tuple[str, ...]:
    return SMALL if backend.name == "mlx" else ()


def _make_tiny_vae_torch(folder: Path, seed: int) -> Path:
    """A two-level AutoencoderKL (8x8x4 latents from 16x16 frames) saved by save_pretrained, with
    its scaling_factor set the way Stable Diffusion's was: 1 / the std of its latents."""
    import torch

    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=16, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2)
    with torch.no_grad():
        x = torch.rand(8, 3, 16, 16) * 2 - 1
        std = float(vae.encode(x).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.save_pretrained(folder)
    return folder


def _make_tiny_vae_mlx(folder: Path, seed: int) -> Path:
    """A two-level AutoencoderKL folder in diffusers' format, scaling_factor = 1 / latent std."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from safetensors.numpy import save_file

    from t2s_mlx import vae as mlx_vae

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


def make_tiny_vae(backend, folder: Path, seed: int = 0) -> Path:
    maker = _make_tiny_vae_torch if backend.name == "torch" else _make_tiny_vae_mlx
    return maker(folder, seed)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread(backend):
    """On a loaded 2-core machine torch's second OpenMP thread makes a tiny step ~100x slower
    (spinning against other processes); one thread keeps these tests in seconds."""
    if backend.name != "torch":
        yield
        return
    torch = backend.xp
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy")
    make_toy_dataset(folder, n=6, num_prompts=2, num_frames=4, height=36, width=64,
                     progress=False)
    return folder


@pytest.fixture(scope="module")
def vae_dir(backend, tmp_path_factory) -> Path:
    return make_tiny_vae(backend, tmp_path_factory.mktemp("vae"))


def latent_config(backend, data: Path, out: Path, vae: Path, *overrides: str) -> Config:
    return apply_overrides(preset("tiny"), [
        f"data.data_dir={data}", f"train.out_dir={out}", f"data.vae={vae}",
        "diffusion.clip_sample=false", "data.val_fraction=0", "train.sample_every=0",
        "train.checkpoint_every=1000", "train.batch_size=3", *small(backend), *overrides])


def quiet(backend, config: Config):
    Trainer = backend.module("train").Trainer
    return Trainer(config, device=backend.device, progress=False, log=lambda _: None)


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
    quiet(backend, latent_config(backend, toy_data, out, vae_dir, "train.steps=3")).train()
    return out


# Per backend: overrides, then the last and first loss windows and the ratio between them
# (single steps are noisy: windows).
OVERFIT = {
    "torch": (("train.steps=80", "train.warmup_steps=10"), 15, 10, 0.5),
    "mlx": (("train.steps=100", "train.warmup_steps=2"), 20, 10, 0.6),
}


def test_latent_training_overfits_from_the_cache(backend, toy_data, vae_dir, tmp_path,
                                                 count_encodes):
    overrides, last, first, ratio = OVERFIT[backend.name]
    frames, size = CLIPS[backend.name]
    config = latent_config(backend, toy_data, tmp_path / "run", vae_dir, *overrides,
                           "train.lr=2e-3", "train.cond_drop_prob=0")
    trainer = quiet(backend, config)
    assert (trainer.config.model.in_channels, trainer.config.data.model_size) == (4, size // 2)
    if backend.name == "mlx":
        assert count_encodes == [2] * 6  # every clip encoded once, before the first step
    assert len(count_encodes) <= 6  # each clip encoded at most once, before training
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
    quiet(backend, latent_config(backend, toy_data, tmp_path / "again", vae_dir))
    assert len(count_encodes) == before


def test_latent_samples_decode_to_frames(backend, latent_run, tmp_path):
    frames, size = CLIPS[backend.name]
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
        quiet(backend, config)


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
    frames, size = CLIPS[backend.name]
    data = tmp_path / "data"
    shutil.copytree(toy_data, data, ignore=shutil.ignore_patterns(".t2s_cache"))
    sets = [x for o in small(backend) for x in ("--set", o)]
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
