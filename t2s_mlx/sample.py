"""Sampling in MLX: DDPM, DDIM(eta) and DPM-Solver++ driven by `shared.sampling` tables.

The twin of `t2s_torch/sample.py`. The sampler step itself is `shared.sampling.step` (plain
arithmetic on arrays); this file adds the UNet call with classifier-free guidance as one doubled
batch and the shared numpy noise stream, which is already channels-last like MLX.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from tqdm.auto import tqdm

from shared.config import Config, DiffusionConfig, SampleConfig
from shared.sampling import cfg_combine, make_sampler_table, numpy_noise, step
from shared.video import to_uint8, write_sample_folder
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
             decode: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Sample videos for `text` (one per row); return float32 (B, F, H, W, C) in [-1, 1].

    `uncond` is the empty caption's embedding with the same batch size (None: no guidance).
    Every random number comes from `shared.sampling.numpy_noise(seed)`, so the result matches
    the torch backend's for the same weights and seed. `decode` is latent mode's hook: it maps
    the sampled latents (unclipped) to frames in [-1, 1] (`LatentVAE.decode_video`).
    """
    table = make_sampler_table(diffusion, sample)
    noise = numpy_noise(seed)
    x = mx.array(noise(shape)).astype(dtype)
    prev_x0 = None
    was_training = model.training
    model.eval()
    try:
        steps = tqdm(range(len(table)), desc=f"sampling ({sample.sampler})", unit="step",
                     disable=not progress, leave=False)
        for i in steps:
            out = guided_prediction(model, x, int(table.timesteps[i]), text, uncond,
                                    sample.guidance)
            eps = mx.array(noise(shape)).astype(dtype) if table.draws_noise[i] else None
            x, prev_x0 = step(table, i, x, out.astype(dtype), clip=mx.clip, noise=eps,
                              prev_x0=prev_x0)
            mx.eval(x, prev_x0)  # one step at a time: keeps the lazy graph (and memory) small
    finally:
        model.train(was_training)
    if decode is not None:
        return decode(np.array(x.astype(mx.float32)))
    return np.clip(np.array(x.astype(mx.float32)), -1.0, 1.0)


def sample_checkpoint(checkpoint: str | Path, prompts: list[str], out_dir: str | Path,
                      sample: SampleConfig | None = None, device: str | None = None,
                      use_ema: bool = True, progress: bool = True,
                      vae: str | None = None) -> list[Path]:
    """Load a checkpoint, sample `sample.num_samples` videos per prompt, write GIFs + a grid.

    Samples are drawn as one batch, prompt-major (all samples of prompt 0 first), from the
    seed's numpy noise stream: the same checkpoint and seed give the same files as t2s-torch.
    A latent-mode checkpoint names its VAE (`data.vae`; `vae` points elsewhere, e.g. a local
    copy) and the hash of its weights: any other VAE is refused.
    """
    from t2s_mlx.checkpoint import load_model
    from t2s_mlx.device import select_device
    from t2s_mlx.text_encoder import TextEncoder

    if not prompts:
        raise ValueError("give at least one prompt, e.g. t2s-mlx sample --checkpoint RUN "
                         '"hello friend"')
    select_device(device)
    config, model, _ = load_model(checkpoint, use_ema=use_ema)
    sample = sample or config.sample
    captions = [p for p in prompts for _ in range(sample.num_samples)]
    encoder = TextEncoder(config.text)
    encoder.check_context_dim(config.model.context_dim)
    text = TextBatch(*encoder.encode(captions))
    uncond = TextBatch(*encoder.empty_embedding(len(captions)))
    d = config.data
    decode = load_decoder(config, vae) if d.vae else None
    shape = (len(captions), d.num_frames, d.model_size, d.model_size, config.model.out_channels)
    videos = generate(model, config.diffusion, sample, text, uncond, shape, seed=sample.seed,
                      progress=progress, decode=decode)
    return write_sample_folder(out_dir, [to_uint8(v) for v in videos], captions, sample.fps)


def load_decoder(config: Config, vae: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """Latent mode's decode hook: the checkpoint's VAE (or `vae`), refused unless its weights'
    hash is the one the checkpoint was trained with."""
    from shared.latents import check_vae
    from t2s_mlx.vae import LatentVAE

    latent_vae = LatentVAE.from_pretrained(vae or config.data.vae)
    check_vae(config, latent_vae.hash, latent_vae.info.path)
    return latent_vae.decode_video
