"""Sampling in MLX: the tensor half of `shared.app.sampling_driver`.

The twin of `t2s_torch/sample.py`. The loop, the noise stream and the `sample` verb live in the
core; this file adds the UNet call with classifier-free guidance as one doubled batch and the
shared numpy noise stream, which is already channels-last like MLX.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from shared.app import sampling_driver
from shared.app.sampling_driver import Decode
from shared.config import Config, DiffusionConfig, SampleConfig
from shared.diffusion.sampling import cfg_combine
from t2s_mlx.diffusion import TextBatch


def guided_prediction(model: nn.Module, x: mx.array, t: int, text: TextBatch,
                      uncond: TextBatch | None, guidance: float) -> mx.array:
    """The UNet's prediction at timestep t; with guidance, conditional and unconditional run
    as one doubled batch (conditional half first, as `cfg_combine` expects)."""
    batch = x.shape[0]
    if uncond is None or guidance == 1.0:
        ts = mx.full((batch,), t, dtype=mx.int32)
        return model(x, ts, text.states, text.mask, text.pooled)
    both = TextBatch.cat([text, uncond])
    ts = mx.full((2 * batch,), t, dtype=mx.int32)
    out = model(mx.concatenate([x, x]), ts, both.states, both.mask, both.pooled)
    return cfg_combine(out, guidance)


def generate(model: nn.Module, diffusion: DiffusionConfig, sample: SampleConfig,
             text: TextBatch, uncond: TextBatch | None, shape: tuple[int, int, int, int, int],
             seed: int, dtype: mx.Dtype = mx.float32, progress: bool = False,
             decode: Decode | None = None,
             on_step: sampling_driver.OnStep | None = None) -> np.ndarray:
    """Sample videos for `text` (one per row); return float32 (B, F, H, W, C) in [-1, 1].

    `uncond` is the empty caption's embedding with the same batch size (None: no guidance).
    Every random number comes from `shared.diffusion.sampling.numpy_noise(seed)`, so the result
    matches the torch backend's for the same weights and seed. `decode` is latent mode's hook: it
    maps the sampled latents (unclipped) to frames in [-1, 1] (`LatentVAE.decode_video`).
    `on_step(i, n)` hears of each finished step (`serve`'s progress).
    """
    if uncond is not None:
        text, uncond = sampling_driver.fit_text(text, uncond)
    x = sampling_driver.denoise(
        model, diffusion, sample, shape, seed,
        to_tensor=lambda a: mx.array(a).astype(dtype),
        predict=lambda x, t: guided_prediction(model, x, t, text, uncond,
                                               sample.guidance).astype(dtype),
        clip=mx.clip, settle=mx.eval, progress=progress, on_step=on_step)
    return sampling_driver.finish(np.array(x.astype(mx.float32)), decode)


def sample_checkpoint(checkpoint: str | Path, prompts: list[str], out_dir: str | Path,
                      sample: SampleConfig | None = None, device: str | None = None,
                      use_ema: bool = True, progress: bool = True,
                      vae: str | None = None) -> list[Path]:
    """`shared.app.sampling_driver.sample_checkpoint` on MLX (see there)."""
    return sampling_driver.sample_checkpoint(HOOKS, checkpoint, prompts, out_dir, sample,
                                             device, use_ema, progress, vae)


def load_sampler(checkpoint: str | Path, device: str | None = None, use_ema: bool = True,
                 vae: str | None = None) -> sampling_driver.LoadedSampler:
    """`shared.app.sampling_driver.load_sampler` on MLX: a checkpoint loaded once, sampled
    many times (`serve`)."""
    return sampling_driver.load_sampler(HOOKS, checkpoint, device, use_ema, vae)


def load_decoder(config: Config, vae: str | None) -> Decode:
    """Latent mode's decode hook (`shared.app.sampling_driver.load_decoder`) with MLX's VAE."""
    from t2s_mlx.vae import LatentVAE

    return sampling_driver.load_decoder(config, vae, LatentVAE.from_pretrained)


def _open_device(device: str | None) -> mx.Device:
    from t2s_mlx.device import select_device

    return select_device(device)  # MLX's default device from now on: arrays need no handle


def _load_model(checkpoint: str | Path, device: mx.Device, use_ema: bool):
    from t2s_mlx.checkpoint import load_model

    config, model, path = load_model(checkpoint, use_ema=use_ema)
    # Evaluated here, on the loading thread's stream: a lazy weight evaluated later on another
    # thread (serve's worker) fails with "There is no Stream(cpu, 0) in current thread".
    mx.eval(model.parameters())
    return config, model, path


def _text_encoder(config, device: mx.Device):
    from t2s_mlx import text_encoder  # on call: tests replace the class

    encoder = text_encoder.TextEncoder(config)
    mx.eval(encoder.model.parameters())  # as the UNet's (_load_model)
    return encoder


def _generate(*args, device: mx.Device, **kwargs) -> np.ndarray:
    return generate(*args, **kwargs)


HOOKS = sampling_driver.SamplerHooks(
    tool="t2s-mlx", open_device=_open_device, load_model=_load_model,
    text_encoder=_text_encoder, text_batch=lambda encoded: TextBatch(*encoded),
    decoder=lambda config, vae, device: load_decoder(config, vae), generate=_generate,
    device_name=lambda device: device.type.name)  # "cpu" or "gpu"
