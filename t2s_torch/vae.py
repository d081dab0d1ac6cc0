"""Latent mode's image autoencoder in PyTorch: diffusers' AutoencoderKL behind `LatentVAE`.

The twin of `t2s_mlx/vae.py`: the same class and methods, numpy in and out (channels-last, as the
data cache and the sampler's arrays are), so cached latents and decoded samples do not depend on
which backend made them. The VAE is found by `shared.data.latents.resolve_vae` (a local folder, or a
Hugging Face id already in the local cache) and always loaded from that local folder, so an
offline machine gets one line saying how to point at a folder, not a hub stack trace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.data.latents import VAEInfo, resolve_vae, vae_hash
from t2s_torch.device import select_device


class LatentVAE:
    """Frames <-> scaled latents for latent mode, numpy in and out, in batches of frames.

    `encode` takes uint8 frames (or floats in [-1, 1]), (N, H, W, 3), and returns the latents the
    diffusion model trains on: the posterior mean, `(mean - shift_factor) * scaling_factor`,
    float32 (N, h, w, C). `decode` undoes the scaling and returns float32 frames in [-1, 1]. Both
    run `batch_size` frames at a time (slicing), so a 28-frame clip at 128 px (or several clips)
    fits in memory.
    """

    def __init__(self, model: torch.nn.Module, info: VAEInfo, device: torch.device,
                 dtype: torch.dtype = torch.float32, batch_size: int = 8):
        self.model, self.info, self.device, self.dtype = model, info, device, dtype
        self.batch_size = max(1, int(batch_size))
        self.hash = vae_hash(info.path)
        self.model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32, batch_size: int = 8) -> LatentVAE:
        from diffusers import AutoencoderKL

        info = VAEInfo.read(resolve_vae(name_or_path))
        dev = select_device(device)
        model = AutoencoderKL.from_pretrained(str(info.path), torch_dtype=dtype,
                                              local_files_only=True)
        return cls(model.to(dev), info, dev, dtype, batch_size)

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        out = []
        for start in range(0, len(frames), self.batch_size):
            # a copy: a memory-mapped cache entry is read-only, which torch warns about
            x = torch.from_numpy(np.array(frames[start:start + self.batch_size]))
            x = x.to(self.device).permute(0, 3, 1, 2)
            x = x.float().mul_(1 / 127.5).sub_(1.0) if x.dtype == torch.uint8 else x.float()
            z = self.model.encode(x.to(self.dtype)).latent_dist.mean.float()
            z = (z - self.info.shift_factor) * self.info.scaling_factor
            out.append(z.permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(latents), self.batch_size):
            z = torch.from_numpy(np.asarray(latents[start:start + self.batch_size],
                                            dtype=np.float32)).to(self.device)
            z = z.permute(0, 3, 1, 2) / self.info.scaling_factor + self.info.shift_factor
            x = self.model.decode(z.to(self.dtype)).sample.float()
            out.append(x.permute(0, 2, 3, 1).clamp_(-1.0, 1.0).cpu().numpy())
        return np.concatenate(out)

    def decode_video(self, latents: np.ndarray) -> np.ndarray:
        """The sampler's decode hook: (B, F, h, w, C) latents -> (B, F, H, W, 3) in [-1, 1]."""
        b, f = latents.shape[:2]
        frames = self.decode(latents.reshape(b * f, *latents.shape[2:]))
        return frames.reshape(b, f, *frames.shape[1:])
