"""Sampling in PyTorch: DDPM, DDIM(eta) and DPM-Solver++ driven by `shared.sampling` tables.

The sampler step itself is `shared.sampling.step` (plain arithmetic on tensors); this file adds
what needs torch: the UNet call with classifier-free guidance as one doubled batch, and moving
the shared numpy noise stream (channels-last) onto the device (channels-first).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from shared.config import Config, DiffusionConfig, SampleConfig
from shared.sampling import cfg_combine, make_sampler_table, numpy_noise, step
from shared.video import to_uint8, write_sample_folder
from t2s_torch.diffusion import TextBatch


def to_channels_first(x: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """numpy (B, F, H, W, C) -> torch (B, C, F, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype).permute(
        0, 4, 1, 2, 3)


def to_channels_last(x: torch.Tensor) -> np.ndarray:
    """torch (B, C, F, H, W) -> numpy float32 (B, F, H, W, C)."""
    return x.detach().float().permute(0, 2, 3, 4, 1).cpu().numpy()


def guided_prediction(model: torch.nn.Module, x: torch.Tensor, t: int, text: TextBatch,
                      uncond: TextBatch | None, guidance: float) -> torch.Tensor:
    """The UNet's prediction at timestep t; with guidance, conditional and unconditional run
    as one doubled batch (conditional half first, as `cfg_combine` expects)."""
    batch = x.shape[0]
    if uncond is None or guidance == 1.0:
        ts = torch.full((batch,), t, device=x.device, dtype=torch.long)
        return model(x, ts, text.states, text.mask, text.pooled)
    both = TextBatch.cat([text, uncond])
    ts = torch.full((2 * batch,), t, device=x.device, dtype=torch.long)
    out = model(torch.cat([x, x]), ts, both.states, both.mask, both.pooled)
    return cfg_combine(out, guidance)


@torch.no_grad()
def generate(model: torch.nn.Module, diffusion: DiffusionConfig, sample: SampleConfig,
             text: TextBatch, uncond: TextBatch | None, shape: tuple[int, int, int, int, int],
             seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             progress: bool = False,
             decode: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Sample videos for `text` (one per row); return float32 (B, F, H, W, C) in [-1, 1].

    `shape` is channels-last (B, F, H, W, C). `uncond` is the empty caption's embedding with the
    same batch size (None: no guidance). Every random number comes from
    `shared.sampling.numpy_noise(seed)`, so the result is the same on any device and backend.
    `decode` is latent mode's hook: it maps the sampled latents (channels-last, unclipped) to
    frames in [-1, 1] (`LatentVAE.decode_video`).
    """
    device = torch.device(device)
    table = make_sampler_table(diffusion, sample)
    noise = numpy_noise(seed)
    x = to_channels_first(noise(shape), device, dtype)
    prev_x0 = None
    was_training = model.training
    model.eval()
    try:
        steps = tqdm(range(len(table)), desc=f"sampling ({sample.sampler})", unit="step",
                     disable=not progress, leave=False)
        for i in steps:
            out = guided_prediction(model, x, int(table.timesteps[i]), text, uncond,
                                    sample.guidance)
            eps = to_channels_first(noise(shape), device, dtype) if table.draws_noise[i] else None
            x, prev_x0 = step(table, i, x, out.to(dtype), clip=torch.clamp, noise=eps,
                              prev_x0=prev_x0)
    finally:
        model.train(was_training)
    if decode is not None:
        return decode(to_channels_last(x))
    return np.clip(to_channels_last(x), -1.0, 1.0)


def sample_checkpoint(checkpoint: str | Path, prompts: list[str], out_dir: str | Path,
                      sample: SampleConfig | None = None, device: str | None = None,
                      use_ema: bool = True, progress: bool = True,
                      vae: str | None = None) -> list[Path]:
    """Load a checkpoint, sample `sample.num_samples` videos per prompt, write GIFs + a grid.

    Samples are drawn as one batch, prompt-major (all samples of prompt 0 first), from the
    seed's numpy noise stream: the same checkpoint and seed give the same files on any device.
    A latent-mode checkpoint names its VAE (`data.vae`; `vae` points elsewhere, e.g. a local
    copy) and the hash of its weights: any other VAE is refused.
    """
    from t2s_torch.checkpoint import load_model
    from t2s_torch.device import select_device
    from t2s_torch.text_encoder import TextEncoder

    if not prompts:
        raise ValueError("give at least one prompt, e.g. t2s-torch sample --checkpoint RUN "
                         '"hello friend"')
    dev = select_device(device)
    config, model, _ = load_model(checkpoint, dev, use_ema=use_ema)
    sample = sample or config.sample
    captions = [p for p in prompts for _ in range(sample.num_samples)]
    encoder = TextEncoder(config.text, device=dev)
    encoder.check_context_dim(config.model.context_dim)
    text = TextBatch(*encoder.encode(captions))
    uncond = TextBatch(*encoder.empty_embedding(len(captions)))
    d = config.data
    decode = load_decoder(config, vae, dev) if d.vae else None
    shape = (len(captions), d.num_frames, d.model_size, d.model_size, config.model.out_channels)
    videos = generate(model, config.diffusion, sample, text, uncond, shape, seed=sample.seed,
                      device=dev, progress=progress, decode=decode)
    return write_sample_folder(out_dir, [to_uint8(v) for v in videos], captions, sample.fps)


def load_decoder(config: Config, vae: str | None, device: torch.device
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """Latent mode's decode hook: the checkpoint's VAE (or `vae`), refused unless its weights'
    hash is the one the checkpoint was trained with."""
    from shared.latents import check_vae
    from t2s_torch.vae import LatentVAE

    latent_vae = LatentVAE.from_pretrained(vae or config.data.vae, device=device)
    check_vae(config, latent_vae.hash, latent_vae.info.path)
    return latent_vae.decode_video
