"""DDPM training objective in PyTorch; every coefficient comes from `shared.diffusion.schedules`.

The noise schedule is computed once in numpy float64 and copied to the device as float32
tables, so this file holds only the arithmetic: noise a clean video, ask the UNet for its
prediction, and weigh the squared error (optionally by min-SNR, and over positions by motion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from shared.config import DiffusionConfig
from shared.diffusion.schedules import NoiseSchedule


def to_model_input(video: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, F, H, W, C) numpy -> float32 (B, C, F, H, W) in [-1, 1] on the device; cached
    latents (float16, latent mode) are already what the model trains on and are only widened."""
    x = torch.from_numpy(np.ascontiguousarray(video)).to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x.permute(0, 4, 1, 2, 3).float()
    return x.permute(0, 4, 1, 2, 3).float().mul_(1 / 127.5).sub_(1.0)


@dataclass
class TextBatch:
    """What the UNet is conditioned on: token states, their mask, and the pooled embedding."""

    states: torch.Tensor  # (B, L, D)
    mask: torch.Tensor  # (B, L), 1 for real tokens
    pooled: torch.Tensor  # (B, D)

    def to(self, device: torch.device) -> TextBatch:
        return TextBatch(self.states.to(device), self.mask.to(device), self.pooled.to(device))

    def take(self, rows: list[int]) -> TextBatch:
        """These rows, in this order (a caption table's rows for a batch of captions)."""
        index = torch.tensor(rows, device=self.states.device)
        return TextBatch(self.states[index], self.mask[index], self.pooled[index])

    def expand(self, batch: int) -> TextBatch:
        """This one-row batch as `batch` rows, without copying."""
        return TextBatch(self.states.expand(batch, -1, -1), self.mask.expand(batch, -1),
                         self.pooled.expand(batch, -1))

    def select(self, keep: torch.Tensor, other: TextBatch) -> TextBatch:
        """Per sample: this batch's text where `keep` is True, `other`'s elsewhere."""
        k3, k2 = keep[:, None, None], keep[:, None]
        return TextBatch(torch.where(k3, self.states, other.states),
                         torch.where(k2, self.mask, other.mask),
                         torch.where(k2, self.pooled, other.pooled))

    @staticmethod
    def cat(parts: list[TextBatch]) -> TextBatch:
        return TextBatch(torch.cat([p.states for p in parts]), torch.cat([p.mask for p in parts]),
                         torch.cat([p.pooled for p in parts]))

    @property
    def real_length(self) -> int:
        """Columns up to the last one any row has a real token in (at least 1)."""
        real = self.mask.bool().any(dim=0).nonzero()
        return int(real.max()) + 1 if real.numel() else 1

    def fit(self, length: int) -> TextBatch:
        """`length` columns: padding columns dropped or added (masked keys change no output:
        their attention weight is exactly 0)."""
        extra = length - self.states.shape[1]
        if extra <= 0:
            return TextBatch(self.states[:, :length], self.mask[:, :length], self.pooled)
        return TextBatch(F.pad(self.states, (0, 0, 0, extra)), F.pad(self.mask, (0, extra)),
                         self.pooled)


# A clip whose mean distance from its frame average is far below this (pixels in [-1, 1]) counts
# as still: its weights stay ~1 instead of amplifying rounding noise.
MOTION_EPS = 1e-3


def motion_weights(x0: torch.Tensor, strength: float | torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) clean clips -> (B, 1, F, H, W) loss weights with mean 1 per clip:
    `1 + strength * m / mean(m)` renormalised, m = channel mean of |x0 - its mean over frames|;
    `strength` is a number or one per clip, (B, 1, 1, 1, 1).
    The same formula as `t2s_mlx.diffusion.motion_weights` (channels-last there)."""
    m = (x0 - x0.mean(dim=2, keepdim=True)).abs().mean(dim=1, keepdim=True)
    mean = m.mean(dim=(2, 3, 4), keepdim=True)
    return (1.0 + strength * m / (mean + MOTION_EPS)) / (1.0 + strength * mean /
                                                           (mean + MOTION_EPS))


class GaussianDiffusion:
    """The forward process and the training loss of one DiffusionConfig."""

    def __init__(self, config: DiffusionConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.schedule = NoiseSchedule.from_config(config)
        self.num_train_timesteps = self.schedule.num_train_timesteps
        t = np.arange(self.num_train_timesteps)
        a, b = self.schedule.q_sample_coefficients(t)
        tx0, teps = self.schedule.target_coefficients(t, config.prediction_type)
        weights = self.schedule.loss_weights(t, config.prediction_type, config.min_snr_gamma)
        motion = self.schedule.motion_strengths(t, config.motion_weight, config.motion_max_snr)
        table = np.stack([a, b, tx0, teps, weights, motion])
        self._table = torch.as_tensor(table, dtype=torch.float32, device=device)

    def to(self, device: torch.device | str) -> GaussianDiffusion:
        self._table = self._table.to(device)
        return self

    def _gather(self, row: int, t: torch.Tensor) -> torch.Tensor:
        return self._table[row, t].view(-1, 1, 1, 1, 1)

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator,
                             device=device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        return self._gather(0, t) * x0 + self._gather(1, t) * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the model learns to output: eps, v = sqrt(abar) eps - sqrt(1-abar) x0, or x0."""
        return self._gather(2, t) * x0 + self._gather(3, t) * noise

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, text: TextBatch,
             t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of each sample's (min-SNR weighted) mean squared error, each
        position weighted by `motion_weights` when `motion_weight` > 0 (at the timesteps
        `motion_max_snr` allows).

        `t` and `noise` come from the caller so that a training step is reproducible from
        the trainer's generator (and so that tests can pin them).
        """
        x_t = self.q_sample(x0, t, noise)
        prediction = model(x_t, t, text.states, text.mask, text.pooled)
        error = (prediction.float() - self.target(x0, t, noise)).square()
        if self.config.motion_weight > 0:
            error = error * motion_weights(x0.float(), self._gather(5, t))
        per_sample = error.mean(dim=tuple(range(1, error.ndim)))
        return (per_sample * self._table[4, t]).mean()
