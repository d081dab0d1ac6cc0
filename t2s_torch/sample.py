"""Sampling in PyTorch: the tensor half of `shared.app.sampling_driver`.

The loop, the noise stream and the `sample` verb live in the core; this file adds what needs
torch: the UNet call with classifier-free guidance as one doubled batch, and moving the shared
numpy noise stream (channels-last) onto the device (channels-first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.app import sampling_driver
from shared.app.sampling_driver import Decode
from shared.config import Config, DiffusionConfig, SampleConfig
from shared.diffusion.sampling import cfg_combine
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
             progress: bool = False, decode: Decode | None = None,
             on_step: sampling_driver.OnStep | None = None) -> np.ndarray:
    """Sample videos for `text` (one per row); return float32 (B, F, H, W, C) in [-1, 1].

    `shape` is channels-last (B, F, H, W, C). `uncond` is the empty caption's embedding with the
    same batch size (None: no guidance). Every random number comes from
    `shared.diffusion.sampling.numpy_noise(seed)`, so the result is the same on any device and
    backend. `decode` is latent mode's hook: it maps the sampled latents (channels-last, unclipped)
    to frames in [-1, 1] (`LatentVAE.decode_video`). `on_step(i, n)` hears of each finished
    step (`serve`'s progress).
    """
    device = torch.device(device)
    if uncond is not None:
        text, uncond = sampling_driver.fit_text(text, uncond)
    x = sampling_driver.denoise(
        model, diffusion, sample, shape, seed,
        to_tensor=lambda a: to_channels_first(a, device, dtype),
        predict=lambda x, t: guided_prediction(model, x, t, text, uncond,
                                               sample.guidance).to(dtype),
        clip=torch.clamp, progress=progress, on_step=on_step)
    return sampling_driver.finish(to_channels_last(x), decode)


def sample_checkpoint(checkpoint: str | Path, prompts: list[str], out_dir: str | Path,
                      sample: SampleConfig | None = None, device: str | None = None,
                      use_ema: bool = True, progress: bool = True,
                      vae: str | None = None) -> list[Path]:
    """`shared.app.sampling_driver.sample_checkpoint` on torch (see there)."""
    return sampling_driver.sample_checkpoint(HOOKS, checkpoint, prompts, out_dir, sample,
                                             device, use_ema, progress, vae)


def load_sampler(checkpoint: str | Path, device: str | None = None, use_ema: bool = True,
                 vae: str | None = None) -> sampling_driver.LoadedSampler:
    """`shared.app.sampling_driver.load_sampler` on torch: a checkpoint loaded once, sampled
    many times (`serve`)."""
    return sampling_driver.load_sampler(HOOKS, checkpoint, device, use_ema, vae)


def load_decoder(config: Config, vae: str | None, device: torch.device) -> Decode:
    """Latent mode's decode hook (`shared.app.sampling_driver.load_decoder`) with torch's VAE."""
    from t2s_torch.vae import LatentVAE

    return sampling_driver.load_decoder(
        config, vae, lambda path: LatentVAE.from_pretrained(path, device=device))


def _open_device(device: str | None) -> torch.device:
    from t2s_torch.device import select_device

    return select_device(device)


def _load_model(checkpoint: str | Path, device: torch.device, use_ema: bool):
    from t2s_torch.checkpoint import load_model

    return load_model(checkpoint, device, use_ema=use_ema)


def _text_encoder(config, device: torch.device):
    from t2s_torch import text_encoder  # on call: tests replace the class

    return text_encoder.TextEncoder(config, device=device)


HOOKS = sampling_driver.SamplerHooks(
    tool="t2s-torch", open_device=_open_device, load_model=_load_model,
    text_encoder=_text_encoder, text_batch=lambda encoded: TextBatch(*encoded),
    decoder=load_decoder, generate=generate, device_name=str)
