"""The sampling driver, written once over the backends' tensor code.

`denoise` is the sampler loop (tables and noise from `shared.diffusion.sampling`),
`sample_checkpoint` the `sample` verb: load a checkpoint, encode the prompts, sample, write the GIFs
and grid. `load_sampler` is its first half kept for many requests (the `serve` verb loads the
model once and samples per request with `LoadedSampler.videos`). A backend's `sample.py`
supplies only tensors: `SamplerHooks` (its model, encoder, VAE, `generate`) and, to `denoise`,
numpy -> tensor, one guided UNet call and the clip. Every random number is drawn here from the
seed, in one order, so both backends follow the same trajectory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from shared.config import Config, DiffusionConfig, SampleConfig
from shared.data.latents import check_vae
from shared.data.video import to_uint8, write_sample_folder
from shared.diffusion.sampling import make_sampler_table, numpy_noise, step

Decode = Callable[[np.ndarray], np.ndarray]
OnStep = Callable[[int, int], None]  # (steps done, steps in all), after each sampler step


def fit_text(*batches: Any) -> list[Any]:
    """Backend TextBatches cut (or padded) to the longest real caption among them: padding
    columns change no output, but every attention layer pays for them (captions of a few words
    in `text.max_length`=32 columns)."""
    length = max(b.real_length for b in batches)
    return [b.fit(length) for b in batches]


def denoise(model: Any, diffusion: DiffusionConfig, sample: SampleConfig,
            shape: tuple[int, ...], seed: int, *, to_tensor: Callable[[np.ndarray], Any],
            predict: Callable[[Any, int], Any], clip: Callable[..., Any],
            settle: Callable[..., Any] | None = None, progress: bool = False,
            on_step: OnStep | None = None) -> Any:
    """Run the sampler from the seed's noise to the final sample (a backend tensor).

    `to_tensor` moves a channels-last numpy draw onto the device; `predict(x, t)` is the
    (guided) model output in x's dtype; `settle(x, prev_x0)` runs after each step (MLX
    evaluates there so the lazy graph stays one step deep). `on_step(i, n)` is told after
    each step, once it is settled (the `serve` page's progress). The model's train/eval mode is
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
            if on_step is not None:
                on_step(i + 1, len(table))
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
    generate(model, diffusion, sample, text, uncond, shape, seed, device, progress, decode,
        on_step): float32 (B, F, H, W, C) in [-1, 1].
    device_name(device): what the device is called in messages ("cpu", "cuda:0", "gpu");
        "cpu" tells `serve` that generations would share the same cores.
    """

    tool: str
    open_device: Callable[[str | None], Any]
    load_model: Callable[[str | Path, Any, bool], tuple[Config, Any, Path]]
    text_encoder: Callable[[Any, Any], Any]
    text_batch: Callable[[Any], Any]
    decoder: Callable[[Config, str | None, Any], Decode]
    generate: Callable[..., np.ndarray]
    device_name: Callable[[Any], str]


@dataclass
class LoadedSampler:
    """A checkpoint loaded once for many sampling calls: its config, model (eval mode), text
    encoder and, in latent mode, decoder, all on `device`.

    `sample_checkpoint` loads one, samples once and drops it; `serve` keeps one for the life of
    the process, so a request pays only for encoding its prompt and the sampler steps, and
    deleting or overwriting the checkpoint on disk no longer matters. Text encoding takes a
    lock: a Hugging Face tokenizer must not be entered from two threads at once (`serve
    --concurrency N`); the sampling itself runs unlocked.
    """

    hooks: SamplerHooks
    config: Config
    model: Any
    encoder: Any
    decode: Decode | None
    device: Any
    checkpoint: Path
    _encode_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def device_name(self) -> str:
        return self.hooks.device_name(self.device)

    def token_count(self, text: str) -> int:
        """The tokens the text encoder makes of `text` (special ones included); past
        `config.text.max_length`, the rest of the text is cut off before the model sees it."""
        tokenizer = self.encoder.tokenizer
        with self._encode_lock:
            _, mask = tokenizer.tokenize([text], tokenizer.model_max_length or 512)
        return int(mask.sum())

    def videos(self, prompts: list[str], sample: SampleConfig | None = None, *,
               progress: bool = False, on_step: OnStep | None = None
               ) -> tuple[list[np.ndarray], list[str]]:
        """`sample.num_samples` uint8 videos (F, H, W, 3) per prompt and their captions.

        Drawn as one batch, prompt-major (all samples of prompt 0 first), from the seed's numpy
        noise stream: the same checkpoint and seed give the same videos on any device and
        either backend.
        """
        sample = sample or self.config.sample
        captions = [p for p in prompts for _ in range(sample.num_samples)]
        with self._encode_lock:
            text = self.hooks.text_batch(self.encoder.encode(captions))
            uncond = self.hooks.text_batch(self.encoder.empty_embedding(len(captions)))
        d = self.config.data
        shape = (len(captions), d.num_frames, d.model_size, d.model_size,
                 self.config.model.out_channels)
        videos = self.hooks.generate(self.model, self.config.diffusion, sample, text, uncond,
                                     shape, seed=sample.seed, device=self.device,
                                     progress=progress, decode=self.decode, on_step=on_step)
        return [to_uint8(v) for v in videos], captions

    def write(self, prompts: list[str], out_dir: str | Path, sample: SampleConfig | None = None,
              *, progress: bool = False, on_step: OnStep | None = None) -> list[Path]:
        """`videos`, written as GIFs with .txt captions and grid.gif into `out_dir`."""
        sample = sample or self.config.sample
        clips, captions = self.videos(prompts, sample, progress=progress, on_step=on_step)
        return write_sample_folder(out_dir, clips, captions, sample.fps)


def load_sampler(hooks: SamplerHooks, checkpoint: str | Path, device: str | None = None,
                 use_ema: bool = True, vae: str | None = None) -> LoadedSampler:
    """Open the device and load the checkpoint's model, text encoder and (latent mode) VAE.

    A latent-mode checkpoint names its VAE (`data.vae`; `vae` points elsewhere, e.g. a local
    copy) and the hash of its weights: any other VAE is refused.
    """
    dev = hooks.open_device(device)
    config, model, path = hooks.load_model(checkpoint, dev, use_ema)
    encoder = hooks.text_encoder(config.text, dev)
    encoder.check_context_dim(config.model.context_dim)
    decode = hooks.decoder(config, vae, dev) if config.data.vae else None
    return LoadedSampler(hooks, config, model, encoder, decode, dev, Path(path))


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
    loaded = load_sampler(hooks, checkpoint, device, use_ema, vae)
    return loaded.write(prompts, out_dir, sample, progress=progress)
