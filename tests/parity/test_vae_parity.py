"""The MLX AutoencoderKL port computes diffusers' function from diffusers' own files.

A tiny AutoencoderKL (two levels, one resnet per level, mid-block attention) with randomised
weights is saved with `save_pretrained` to a temporary folder; diffusers (through
`t2s_torch.vae.LatentVAE`) and the MLX port (`t2s_mlx.vae.LatentVAE`) both load that folder by
path, exactly as a real VAE is loaded. Encoder means, decodes and the scaled round trip must agree
within fp32 noise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
diffusers = pytest.importorskip("diffusers")

from shared.data.latents import VAE_WEIGHTS, VAEInfo, VAENotFoundError, resolve_vae, vae_hash  # noqa: E402
from t2s_mlx.vae import LatentVAE as MLXLatentVAE  # noqa: E402
from t2s_torch.vae import LatentVAE as TorchLatentVAE  # noqa: E402

# torch on one thread: its OpenMP workers and MLX's threads fight over the cores in one
# process (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-4


def make_tiny_vae(folder, seed: int = 0, **changes):
    """A tiny AutoencoderKL with non-trivial weights, saved where a real one would be."""
    config = dict(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                  latent_channels=4, norm_num_groups=8, sample_size=32,
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2)
    config.update(changes)
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(**config)
    with torch.no_grad():  # norms away from 1 / 0 and biases nonzero, so every key matters
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae.save_pretrained(folder)
    return vae


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    make_tiny_vae(folder)
    return folder


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)


def test_encoder_mean_matches_diffusers(vae_dir, frames):
    t = TorchLatentVAE.from_pretrained(vae_dir, device="cpu")
    m = MLXLatentVAE.from_pretrained(vae_dir, batch_size=2)  # batching must not matter
    want = t.encode(frames)
    got = m.encode(frames)
    assert want.shape == got.shape == (3, 16, 16, 4)
    assert np.abs(want).max() > 0.01  # a real signal, not zeros matching zeros
    assert np.abs(got - want).max() <= ATOL

    # the posterior mean itself, straight from diffusers, scaled as documented
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        mean = t.model.encode(x).latent_dist.mean.permute(0, 2, 3, 1).numpy()
    assert np.abs(want - mean * t.info.scaling_factor).max() <= 1e-6


def test_decoder_matches_diffusers(vae_dir):
    t = TorchLatentVAE.from_pretrained(vae_dir, device="cpu")
    m = MLXLatentVAE.from_pretrained(vae_dir)
    z = np.random.default_rng(1).standard_normal((2, 8, 8, 4)).astype(np.float32)
    unscaled = mx.array(z / t.info.scaling_factor)
    raw_mlx = np.array(m.model.decode(unscaled))
    with torch.no_grad():
        raw_torch = t.model.decode(torch.from_numpy(z / t.info.scaling_factor)
                                   .permute(0, 3, 1, 2)).sample.permute(0, 2, 3, 1).numpy()
    assert raw_mlx.shape == (2, 16, 16, 3)
    assert np.abs(raw_mlx - raw_torch).max() <= ATOL
    # the decode hook: (B, F, h, w, C) -> clipped frames, the same on both backends
    video = z.reshape(1, 2, 8, 8, 4)
    a, b = t.decode_video(video), m.decode_video(video)
    assert a.shape == (1, 2, 16, 16, 3) and a.min() >= -1 and a.max() <= 1
    assert np.abs(a - b).max() <= ATOL


def test_no_attention_no_quant_conv_variant(tmp_path, frames):
    make_tiny_vae(tmp_path, seed=3, mid_block_add_attention=False, use_quant_conv=False,
                  use_post_quant_conv=False, layers_per_block=2)
    t = TorchLatentVAE.from_pretrained(tmp_path, device="cpu")
    m = MLXLatentVAE.from_pretrained(tmp_path)
    assert np.abs(t.encode(frames[:1]) - m.encode(frames[:1])).max() <= ATOL


def test_deprecated_attention_names_load(tmp_path, vae_dir, frames):
    """Older diffusers files (the hub's SD VAEs) name attention query / key / value /
    proj_attn; the port renames them as diffusers does."""
    from safetensors.numpy import load_file, save_file

    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.",
               ".to_out.0.": ".proj_attn."}
    old = {}
    for key, value in load_file(vae_dir / VAE_WEIGHTS).items():
        for new_name, old_name in renames.items():
            key = key.replace(new_name, old_name)
        old[key] = value
    assert any(".proj_attn." in k for k in old)
    save_file(old, tmp_path / VAE_WEIGHTS)
    (tmp_path / "config.json").write_text((vae_dir / "config.json").read_text())
    want = MLXLatentVAE.from_pretrained(vae_dir).encode(frames[:1])
    assert np.array_equal(MLXLatentVAE.from_pretrained(tmp_path).encode(frames[:1]), want)


def test_finding_the_vae(tmp_path, vae_dir, monkeypatch):
    pipeline = tmp_path / "pipeline"
    (pipeline / "vae").mkdir(parents=True)
    for name in ("config.json", VAE_WEIGHTS):
        (pipeline / "vae" / name).write_bytes((vae_dir / name).read_bytes())
    assert resolve_vae(pipeline) == pipeline / "vae"  # a pipeline folder: its VAE
    assert vae_hash(pipeline / "vae") == vae_hash(vae_dir)  # content, not path
    info = VAEInfo.read(vae_dir)
    assert (info.downsample, info.latent_channels) == (2, 4)
    assert json.loads((vae_dir / "config.json").read_text())["scaling_factor"] == \
        info.scaling_factor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(VAENotFoundError, match="local folder") as e:
        TorchLatentVAE.from_pretrained("nobody/no-such-vae")
    assert "\n" not in str(e.value)
    with pytest.raises(VAENotFoundError, match="no such folder"):
        MLXLatentVAE.from_pretrained(str(tmp_path / "missing"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_a_latent_checkpoint_converts_and_samples_the_same_frames(tmp_path, vae_dir):
    """Trained in torch on latents, converted with the numpy converter, sampled by both
    backends with their own VAE (diffusers / the port): the same GIFs. The VAE is referenced by
    the checkpoint's config, never copied into it."""
    from shared.config import apply_overrides, preset
    from shared.data.toy import make_toy_dataset
    from shared.data.video import read_video
    from shared.model.convert import torch_to_mlx
    from t2s_mlx.sample import sample_checkpoint as mlx_sample
    from t2s_torch.sample import sample_checkpoint as torch_sample
    from t2s_torch.train import Trainer

    data = tmp_path / "toy"
    make_toy_dataset(data, n=4, num_prompts=2, num_frames=4, height=36, width=64,
                     progress=False)
    config = apply_overrides(preset("tiny"), [
        f"data.data_dir={data}", f"train.out_dir={tmp_path / 'run'}", f"data.vae={vae_dir}",
        "data.image_size=32", "diffusion.clip_sample=false", "data.val_fraction=0",
        "train.sample_every=0", "train.steps=3", "train.batch_size=2"])
    Trainer(config, device="cpu", progress=False, log=lambda _: None).train()
    converted = tmp_path / "converted"
    torch_to_mlx(tmp_path / "run", converted)
    files = sorted(p.name for p in converted.iterdir())
    assert not any("vae" in name or "diffusion_pytorch" in name for name in files)
    assert sum(p.stat().st_size for p in converted.iterdir()) < \
        (vae_dir / VAE_WEIGHTS).stat().st_size + 10 * 2**20  # UNet + EMA + Adam only

    sample = preset("tiny").sample
    sample.steps, sample.guidance = 6, 2.0
    a = torch_sample(tmp_path / "run", ["hello"], tmp_path / "a", sample, device="cpu",
                     progress=False)
    b = mlx_sample(converted, ["hello"], tmp_path / "b", sample, device="cpu", progress=False)
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b):
        fa, _ = read_video(pa)
        fb, _ = read_video(pb)
        assert fa.shape == fb.shape
        assert psnr(fa, fb) >= 40.0
    fa, _ = read_video(a[0])
    assert fa.shape == (4, 32, 32, 3) and fa.std() > 1  # 16x16 latents decoded, not blank
