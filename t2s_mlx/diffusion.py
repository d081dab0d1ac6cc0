"""DDPM training objective in MLX; every coefficient comes from `shared.diffusion.schedules`.

The twin of `t2s_torch/diffusion.py`: the noise schedule is computed once in numpy float64 and
kept as float32 tables, so this file holds only the arithmetic. Activations are channels-last.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from shared.config import DiffusionConfig
from shared.diffusion.schedules import NoiseSchedule


def to_model_input(video: np.ndarray) -> mx.array:
    """uint8 (B, F, H, W, C) numpy -> float32 (B, F, H, W, C) in [-1, 1] (channels-last); cached
    latents (float16, latent mode) are already what the model trains on and are only widened."""
    if video.dtype != np.uint8:
        return mx.array(video).astype(mx.float32)
    return mx.array(video).astype(mx.float32) * (1 / 127.5) - 1.0


@dataclass
class TextBatch:
    """What the UNet is conditioned on: token states, their mask, and the pooled embedding."""

    states: mx.array  # (B, L, D)
    mask: mx.array  # (B, L), 1 for real tokens
    pooled: mx.array  # (B, D)

    def take(self, rows: list[int]) -> TextBatch:
        """These rows, in this order (a caption table's rows for a batch of captions)."""
        index = mx.array(rows)
        return TextBatch(self.states[index], self.mask[index], self.pooled[index])

    def expand(self, batch: int) -> TextBatch:
        """This one-row batch as `batch` rows, without copying."""
        return TextBatch(*(mx.broadcast_to(a, (batch, *a.shape[1:]))
                           for a in (self.states, self.mask, self.pooled)))

    def select(self, keep: mx.array, other: TextBatch) -> TextBatch:
        """Per sample: this batch's text where `keep` is True, `other`'s elsewhere."""
        k3, k2 = keep[:, None, None], keep[:, None]
        return TextBatch(mx.where(k3, self.states, other.states),
                         mx.where(k2, self.mask, other.mask),
                         mx.where(k2, self.pooled, other.pooled))

    @staticmethod
    def cat(parts: list[TextBatch]) -> TextBatch:
        return TextBatch(mx.concatenate([p.states for p in parts]),
                         mx.concatenate([p.mask for p in parts]),
                         mx.concatenate([p.pooled for p in parts]))

    @property
    def real_length(self) -> int:
        """Columns up to the last one any row has a real token in (at least 1)."""
        real = np.flatnonzero(np.array(self.mask).astype(bool).any(axis=0))
        return int(real[-1]) + 1 if real.size else 1

    def fit(self, length: int) -> TextBatch:
        """`length` columns: padding columns dropped or added (masked keys change no output:
        their attention weight is exactly 0)."""
        extra = length - self.states.shape[1]
        if extra <= 0:
            return TextBatch(self.states[:, :length], self.mask[:, :length], self.pooled)
        return TextBatch(mx.pad(self.states, [(0, 0), (0, extra), (0, 0)]),
                         mx.pad(self.mask, [(0, 0), (0, extra)]), self.pooled)


MOTION_EPS = 1e-3  # the torch constant


def motion_weights(x0: mx.array, strength: float | mx.array) -> mx.array:
    """(B, F, H, W, C) clean clips -> (B, F, H, W, 1) loss weights with mean 1 per clip (the
    torch formula: `1 + strength * m / mean(m)` renormalised, m = channel mean of
    |x0 - its mean over frames|; `strength` a number or one per clip, (B, 1, 1, 1, 1))."""
    m = mx.abs(x0 - x0.mean(axis=1, keepdims=True)).mean(axis=-1, keepdims=True)
    mean = m.mean(axis=(1, 2, 3), keepdims=True)
    return (1.0 + strength * m / (mean + MOTION_EPS)) / (1.0 + strength * mean /
                                                           (mean + MOTION_EPS))


class GaussianDiffusion:
    """The forward process and the training loss of one DiffusionConfig."""

    def __init__(self, config: DiffusionConfig):
        self.config = config
        self.schedule = NoiseSchedule.from_config(config)
        self.num_train_timesteps = self.schedule.num_train_timesteps
        t = np.arange(self.num_train_timesteps)
        a, b = self.schedule.q_sample_coefficients(t)
        tx0, teps = self.schedule.target_coefficients(t, config.prediction_type)
        weights = self.schedule.loss_weights(t, config.prediction_type, config.min_snr_gamma)
        motion = self.schedule.motion_strengths(t, config.motion_weight, config.motion_max_snr)
        self._table = mx.array(np.stack([a, b, tx0, teps, weights, motion]).astype(np.float32))

    def _gather(self, row: int, t: mx.array) -> mx.array:
        return self._table[row][t].reshape(-1, 1, 1, 1, 1)

    def sample_timesteps(self, batch_size: int, key: mx.array | None = None) -> mx.array:
        return mx.random.randint(0, self.num_train_timesteps, (batch_size,), key=key)

    def q_sample(self, x0: mx.array, t: mx.array, noise: mx.array) -> mx.array:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        return self._gather(0, t) * x0 + self._gather(1, t) * noise

    def target(self, x0: mx.array, t: mx.array, noise: mx.array) -> mx.array:
        """What the model learns to output: eps, v = sqrt(abar) eps - sqrt(1-abar) x0, or x0."""
        return self._gather(2, t) * x0 + self._gather(3, t) * noise

    def loss(self, model: nn.Module, x0: mx.array, text: TextBatch, t: mx.array,
             noise: mx.array) -> mx.array:
        """Mean over the batch of each sample's (min-SNR weighted) mean squared error, each
        position weighted by `motion_weights` when `motion_weight` > 0 (at the timesteps
        `motion_max_snr` allows).

        `t` and `noise` come from the caller so that a training step is reproducible from the
        trainer's random state (and so that tests can pin them).
        """
        x_t = self.q_sample(x0, t, noise)
        prediction = model(x_t, t, text.states, text.mask, text.pooled)
        error = mx.square(prediction.astype(mx.float32) - self.target(x0, t, noise))
        if self.config.motion_weight > 0:
            error = error * motion_weights(x0.astype(mx.float32), self._gather(5, t))
        per_sample = error.reshape(error.shape[0], -1).mean(axis=1)
        return (per_sample * self._table[4][t]).mean()
