"""Text to video with an inflated Stable Diffusion UNet: DDIM sampling and DDIM inversion.

`TAVPipeline` holds the parts (inflated UNet, VAE, CLIP text encoder and tokenizer, the base
model's scheduler settings) and does what training validation and `t2s-torch sample-tav` need:
encode text, encode / decode video latents (frames through the image VAE as a batch), sample
with classifier-free guidance, and invert a clip to noise (Tune-A-Video's editing mode: sample a
new prompt from the inverted latent of a reference clip).

Latents are (B, 4, F, h, w), scaled by the VAE's `scaling_factor`; scheduler arithmetic is fp32
whatever the weights' dtype. Initial noise is drawn on the CPU from the seed, so a seed gives the
same video on every device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMInverseScheduler, DDIMScheduler
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from shared.data.video import to_uint8
from t2s_torch.tav.data import to_pixels
from t2s_torch.tav.inflate import InflatedUNet

# Frames per VAE call: bounds the VAE's activation memory at 512 px whatever F is.
VAE_CHUNK = 8


@dataclass
class TAVPipeline:
    unet: InflatedUNet
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    _empty: torch.Tensor | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_multiple(self) -> int:
        """Pixels per side must be a multiple of this: the VAE and the UNet's downsamplings."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # ------------------------------------------------------------------------------ text

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP token states (B, L, D) of the prompts, as Stable Diffusion pipelines take them."""
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def empty_text(self, batch: int) -> torch.Tensor:
        """The unconditional ("") states, for guidance; encoded once."""
        if self._empty is None:
            self._empty = self.encode_text([""])
        return self._empty.expand(batch, -1, -1)

    # ------------------------------------------------------------------------------ latents

    @torch.no_grad()
    def encode_video(self, video: np.ndarray, generator: torch.Generator | None = None,
                     sample: bool = False) -> torch.Tensor:
        """uint8 (B, F, H, W, 3) -> scaled latents (B, 4, F, h, w): the posterior mean, or a
        draw from it with `sample` (training's augmentation)."""
        b, f = video.shape[:2]
        pixels = to_pixels(video, self.device, self.vae.dtype)
        parts = []
        for chunk in pixels.split(VAE_CHUNK):
            dist = self.vae.encode(chunk).latent_dist
            parts.append(dist.sample(generator) if sample else dist.mean)
        latents = torch.cat(parts).float() * self.vae.config.scaling_factor
        return latents.reshape(b, f, *latents.shape[1:]).transpose(1, 2)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents (B, 4, F, h, w) -> uint8 video (B, F, H, W, 3)."""
        b, c, f, h, w = latents.shape
        z = latents.transpose(1, 2).reshape(b * f, c, h, w) / self.vae.config.scaling_factor
        frames = torch.cat([self.vae.decode(chunk.to(self.vae.dtype)).sample.float()
                            for chunk in z.split(VAE_CHUNK)])
        frames = frames.reshape(b, f, *frames.shape[1:]).permute(0, 1, 3, 4, 2)
        return to_uint8(frames.cpu().numpy())

    def initial_noise(self, batch: int, num_frames: int, height: int, width: int,
                      seed: int) -> torch.Tensor:
        m = self.vae_scale_factor
        shape = (batch, self.unet.config.in_channels, num_frames, height // m, width // m)
        noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
        return noise.to(self.device)

    # ------------------------------------------------------------------------------ sampling

    def _ddim_config(self) -> dict[str, Any]:
        """The base model's scheduler settings; `clip_sample` off where the config is silent
        (diffusers' DDIM default clips x0 to [-1, 1], which suits pixels, not SD latents)."""
        return {"clip_sample": False, **self.scheduler_config}

    def _predict(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                 guidance: float) -> torch.Tensor:
        dtype = self.unet.dtype
        if guidance == 1.0:
            return self.unet(latents.to(dtype), t, cond).float()
        uncond = self.empty_text(len(cond))
        both = self.unet(torch.cat([latents, latents]).to(dtype), t, torch.cat([uncond, cond]))
        u, c = both.float().chunk(2)
        return u + guidance * (c - u)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], num_frames: int, height: int, width: int,
               steps: int = 50, guidance: float = 7.5, seed: int = 0, eta: float = 0.0,
               latents: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
        """DDIM from noise (or from `latents`, e.g. an inverted clip) to clean latents; guided
        runs put the unconditional and conditional halves in one doubled batch."""
        if height % self.latent_multiple or width % self.latent_multiple:
            raise ValueError(f"height and width must be multiples of {self.latent_multiple} "
                             f"for this model, not {height} x {width}")
        scheduler = DDIMScheduler.from_config(self._ddim_config())
        scheduler.set_timesteps(steps, device=self.device)
        if latents is None:
            latents = self.initial_noise(len(prompts), num_frames, height, width, seed)
            latents = latents * scheduler.init_noise_sigma
        latents = latents.to(self.device, torch.float32)
        if len(latents) == 1 and len(prompts) > 1:  # one start (an inverted clip) for all
            latents = latents.expand(len(prompts), -1, -1, -1, -1)
        cond = self.encode_text(prompts)
        generator = torch.Generator("cpu").manual_seed(seed + 1)
        for t in tqdm(scheduler.timesteps, desc="sampling", unit="step", disable=not progress,
                      leave=False):
            pred = self._predict(scheduler.scale_model_input(latents, t), t, cond, guidance)
            latents = scheduler.step(pred, t, latents, eta=eta, generator=generator).prev_sample
        return latents

    @torch.no_grad()
    def invert(self, latents: torch.Tensor, prompt: str = "", steps: int = 50,
               progress: bool = False) -> torch.Tensor:
        """DDIM inversion: clean latents -> the noise latents DDIM sampling would start from to
        reach them (approximately), conditioned on `prompt` ("" as Tune-A-Video does)."""
        scheduler = DDIMInverseScheduler.from_config(self._ddim_config())
        scheduler.set_timesteps(steps, device=self.device)
        latents = latents.to(self.device, torch.float32)
        cond = self.encode_text([prompt] * len(latents))
        for t in tqdm(scheduler.timesteps, desc="inverting", unit="step", disable=not progress,
                      leave=False):
            pred = self._predict(latents, t, cond, 1.0)
            latents = scheduler.step(pred, t, latents).prev_sample
        return latents

    def generate(self, prompts: Sequence[str], num_frames: int, height: int, width: int,
                 **kwargs) -> np.ndarray:
        """uint8 videos (B, F, H, W, 3) for `prompts`; keyword arguments as in `sample`."""
        return self.decode_latents(self.sample(prompts, num_frames, height, width, **kwargs))
