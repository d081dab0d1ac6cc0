"""The sampling driver, written once over the backends' tensor code.

`denoise` is the sampler loop (tables and noise from `shared.diffusion.sampling`),
`sample_checkpoint` the `sample` verb: load a checkpoint, encode the prompts, sample, write the GIFs
and grid. A backend's `sample.py` supplies only tensors: `SamplerHooks` (its model, encoder, VAE,
`generate`) and, to `denoise`, numpy -> tensor, one guided UNet call and the clip. Every random
number is drawn here from the seed, in one order, so both backends follow the same trajectory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from shared.config import Config, DiffusionConfig, SampleConfig
from shared.data.latents import check_vae
from shared.data.video import to_uint8, write_sample_folder
from shared.diffusion.sampling import make_sampler_table, numpy_noise, step

Decode = Callable[[np.ndarray], np.ndarray]


def denoise(model: Any, diffusion: DiffusionConfig, sample: SampleConfig,
            shape: tuple[int, ...], seed: int, *, to_tensor: Callable[[np.ndarray], Any],
            predict: Callable[[Any, int], Any], clip: Callable[..., Any],
            settle: Callable[..., Any] | None = None, progress: bool = False) -> Any:
    """Run the sampler from the seed's noise to the final sample (a backend tensor).

    `to_tensor` moves a channels-last numpy draw onto the device; `predict(x, t)` is the
    (guided) model output in x's dtype; `settle(x, prev_x0)` runs after each step (MLX
    evaluates there so the lazy graph stays one step deep). The model's train/eval mode is
    restored afterwards.
    """
    table = make_sampler_table(diffusion, sample)
    noise = numpy_noise(seed)
    x = to_tensor(noise(shape))
    prev_x0 = None
    was_training = model.training
    model.eval()
    try:
        steps = tqdm(range(len(table)), desc=f"sampling ({sample.sampler})", unit="step",
                     disable=not progress, leave=False)
        for i in steps:
            out = predict(x, int(table.timesteps[i]))
            eps = to_tensor(noise(shape)) if table.draws_noise[i] else None
            x, prev_x0 = step(table, i, x, out, clip=clip, noise=eps, prev_x0=prev_x0)
            if settle is not None:
                settle(x, prev_x0)
    finally:
        model.train(was_training)
    return x


def finish(x: np.ndarray, decode: Decode | None) -> np.ndarray:
    """Frames in [-1, 1] from the final sample: decoded (latent mode, unclipped in) or clipped."""
    if decode is not None:
        return decode(x)
    return np.clip(x, -1.0, 1.0)


def load_decoder(config: Config, vae: str | None, latent_vae: Callable[[str], Any]) -> Decode:
    """Latent mode's decode hook: the checkpoint's VAE (or `vae`), refused unless its weights'
    hash is the one the checkpoint was trained with."""
    loaded = latent_vae(vae or config.data.vae)
    check_vae(config, loaded.hash, loaded.info.path)
    return loaded.decode_video


@dataclass(frozen=True)
class SamplerHooks:
    """What `sample_checkpoint` asks of a backend; each member is tensor code.

    tool: the command-line tool, for messages (`t2s-torch`).
    open_device(device): the device to sample on (None: the best available).
    load_model(checkpoint, device, use_ema): (config, model in eval mode, resolved path).
    text_encoder(text_config, device): an encoder (`check_context_dim`, `encode`,
        `empty_embedding`); looked up on call, so tests may replace the class.
    text_batch(encoded): the encoder's output as the model's text input.
    decoder(config, vae, device): latent mode's decode hook (`load_decoder`).
    generate(model, diffusion, sample, text, uncond, shape, seed, device, progress, decode):
        float32 (B, F, H, W, C) in [-1, 1].
    """

    tool: str
    open_device: Callable[[str | None], Any]
    load_model: Callable[[str | Path, Any, bool], tuple[Config, Any, Path]]
    text_encoder: Callable[[Any, Any], Any]
    text_batch: Callable[[Any], Any]
    decoder: Callable[[Config, str | None, Any], Decode]
    generate: Callable[..., np.ndarray]


def sample_checkpoint(hooks: SamplerHooks, checkpoint: str | Path, prompts: list[str],
                      out_dir: str | Path, sample: SampleConfig | None = None,
                      device: str | None = None, use_ema: bool = True, progress: bool = True,
                      vae: str | None = None) -> list[Path]:
    """Load a checkpoint, sample `sample.num_samples` videos per prompt, write GIFs + a grid.

    Samples are drawn as one batch, prompt-major (all samples of prompt 0 first), from the
    seed's numpy noise stream: the same checkpoint and seed give the same files on any device
    and either backend. A latent-mode checkpoint names its VAE (`data.vae`; `vae` points
    elsewhere, e.g. a local copy) and the hash of its weights: any other VAE is refused.
    """
    if not prompts:
        raise ValueError(f"give at least one prompt, e.g. {hooks.tool} sample --checkpoint RUN "
                         '"hello friend"')
    dev = hooks.open_device(device)
    config, model, _ = hooks.load_model(checkpoint, dev, use_ema)
    sample = sample or config.sample
    captions = [p for p in prompts for _ in range(sample.num_samples)]
    encoder = hooks.text_encoder(config.text, dev)
    encoder.check_context_dim(config.model.context_dim)
    text = hooks.text_batch(encoder.encode(captions))
    uncond = hooks.text_batch(encoder.empty_embedding(len(captions)))
    d = config.data
    decode = hooks.decoder(config, vae, dev) if d.vae else None
    shape = (len(captions), d.num_frames, d.model_size, d.model_size, config.model.out_channels)
    videos = hooks.generate(model, config.diffusion, sample, text, uncond, shape,
                            seed=sample.seed, device=dev, progress=progress, decode=decode)
    return write_sample_folder(out_dir, [to_uint8(v) for v in videos], captions, sample.fps)
