"""Training the 3D UNet in MLX: the tensor half of `shared.app.trainer.BaseTrainer`, which owns the
loop, the run directory and every piece of bookkeeping (the same as t2s_torch's).

The MLX way underneath: the micro-step (noise, caption dropout, forward, backward) is one
`mx.compile`d function with the model and the random state as compile state; the optimizer
update is another, with the model and optimizer state; lazy evaluation is forced once per
optimizer step.

Randomness: MLX's global generator is reseeded from (seed, step, micro-step) before each
micro-step, so a step's draws depend on nothing but its number, and `--resume` continues the
exact run without saving generator state.

Under `mlx.launch` the same trainer runs data-parallel (see `t2s_mlx.distributed`): every rank
draws the step's randomness for the whole global batch and keeps its own rows, so N ranks at
micro-batch B train exactly as one process at N x B; rank 0 alone writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from shared.app.distributed import Distributed, shard
from shared.app.errors import diverged
from shared.app.trainer import BaseTrainer, TrainResult
from shared.config import SampleConfig
from shared.data.dataset import Batch
from t2s_mlx import checkpoint as ckpt
from t2s_mlx import device as dev
from t2s_mlx import distributed as dist
from t2s_mlx.diffusion import GaussianDiffusion, TextBatch, to_model_input
from t2s_mlx.ema import EMA
from t2s_mlx.sample import generate
from t2s_mlx.text_encoder import TextEncoder
from t2s_mlx.unet import UNet3D
from t2s_mlx.vae import LatentVAE

__all__ = ["TrainResult", "Trainer"]


class Trainer(BaseTrainer):
    """Train `config` on its data with MLX; `train()` runs to `config.train.steps` (or
    resumes there). The loop and bookkeeping are `BaseTrainer`'s; these are its tensor hooks."""

    text_batch = TextBatch

    def _open(self, device: str | None) -> tuple[Distributed, str]:
        if self.config.train.mixed_precision == "fp16":
            # fp16 needs loss scaling against gradient underflow, which bf16 (same exponent
            # range as float32) does not; Apple Silicon runs bf16, so that is the one offered.
            raise ValueError("train.mixed_precision=fp16 is not supported by t2s-mlx: use "
                             "--set train.mixed_precision=bf16 (or no)")
        return dist.init_distributed(), dev.select_device(device)

    def _text_encoder(self, cache_dir: Path) -> TextEncoder:
        return TextEncoder(self.config.text, cache_dir=cache_dir)

    def _build(self) -> None:
        tc = self.config.train
        mx.random.seed(tc.seed)
        self.model = UNet3D(self.config.model)
        self.ema = EMA(self.model, tc.ema_decay)
        # Bias correction on, as torch's AdamW: the two backends take the same update.
        self.optimizer = optim.AdamW(learning_rate=tc.lr, betas=[tc.adam_beta1, tc.adam_beta2],
                                     weight_decay=tc.weight_decay, bias_correction=True)
        self.optimizer.init(self.model.trainable_parameters())
        self.diffusion = GaussianDiffusion(self.config.diffusion)
        self._grads: Any = None  # the step in progress's gradients, summed over micro-steps
        self._build_steps()

    def _load_vae(self) -> LatentVAE:
        return LatentVAE.from_pretrained(self.config.data.vae)

    # ----------------------------------------------------------------------------- steps

    def _build_steps(self) -> None:
        """The compiled micro-step (loss + gradients) and optimizer update."""
        tc = self.config.train
        model, diffusion = self.model, self.diffusion
        loss_fn = partial(diffusion.loss, model)
        if tc.mixed_precision == "bf16":
            value_and_grad = dev.mixed_value_and_grad(model, loss_fn, mx.bfloat16)
        else:
            value_and_grad = nn.value_and_grad(model, loss_fn)
        micro_state = [model.state, mx.random.state]
        world = self.world

        @partial(mx.compile, inputs=micro_state, outputs=micro_state)
        def micro(x0, states, mask, pooled, u_states, u_mask, u_pooled):
            b, n = x0.shape[0], world.world_size
            # Drawn for the global batch, then this rank's rows: the same numbers everywhere.
            keep = shard(mx.random.uniform(shape=(b * n,)), world) >= tc.cond_drop_prob
            text = TextBatch(states, mask, pooled).select(keep, TextBatch(u_states, u_mask,
                                                                          u_pooled))
            t = shard(diffusion.sample_timesteps(b * n), world)
            noise = shard(mx.random.normal((b * n, *x0.shape[1:])), world)
            return value_and_grad(x0, text, t, noise)

        update_state = [model.state, self.optimizer.state]

        @partial(mx.compile, inputs=update_state, outputs=update_state)
        def update(grads):
            max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
            grads, norm = optim.clip_grad_norm(grads, max_norm)
            self.optimizer.update(model, grads)
            return norm

        self._micro, self._update = micro, update

    def _fit_batch(self, per_rank: int) -> int:
        return dev.find_batch_size(self._probe_step, per_rank, self.log)

    def _probe_step(self, batch: int) -> None:
        """One forward + backward at micro-batch `batch` on random data (weights untouched)."""
        d, s = self.config.data, self.config.data.model_size
        x0 = mx.random.normal((batch, d.num_frames, s, s, self.config.model.in_channels))
        u = self._uncond(batch)
        loss, grads = self._micro(x0, u.states, u.mask, u.pooled, u.states, u.mask, u.pooled)
        mx.eval(loss, grads)

    def _micro_step(self, batch: Batch, index: int) -> mx.array:
        mx.random.seed(_step_seed(self.config.train.seed, self.step, index))
        x0 = to_model_input(batch.video)
        text = self.text_for(batch.captions)
        u = self._uncond(x0.shape[0])
        loss, g = self._micro(x0, text.states, text.mask, text.pooled, u.states, u.mask,
                              u.pooled)
        self._grads = g if index == 0 else tree_map(mx.add, self._grads, g)
        return loss

    def _mean_loss(self, losses: list[mx.array]) -> float:
        return float(dist.all_mean(mx.stack(losses).mean(), self.world))

    def _apply_lr(self, lr: float) -> None:
        self.optimizer.learning_rate = mx.array(lr, dtype=mx.float32)

    def _optimizer_step(self) -> float:
        grads, self._grads = self._grads, None
        if self.grad_accum > 1:
            grads = tree_map(lambda g: g / self.grad_accum, grads)
        norm = self._update(dist.average_gradients(grads, self.world))
        mx.eval(self.model.parameters(), self.optimizer.state, norm)
        if not math.isfinite(float(norm)):
            raise diverged(self.out_dir, self.step + 1, float(norm), "gradient norm")
        self.ema.update(self.model)
        mx.eval(self.ema.model.parameters())
        return float(norm)

    # ----------------------------------------------------------------------------- state

    def _save(self, state: dict[str, Any]) -> Path:
        return ckpt.save_checkpoint(self.out_dir, self.step, self.config, self.model,
                                    self.ema.model, self.optimizer, state,
                                    self.config.train.keep_last)

    def _check_checkpoint(self, checkpoint: Path) -> None:
        ckpt.check_checkpoint(checkpoint, self.model)

    def _load_tensors(self, checkpoint: Path) -> None:
        ckpt.load_checkpoint(checkpoint, self.model, self.ema.model, self.optimizer)

    def _load_backend_state(self, state: dict[str, Any]) -> None:
        self._build_steps()  # the compiled steps captured the optimizer state it replaced

    # ----------------------------------------------------------------------------- device

    def _generate(self, text: TextBatch, sample: SampleConfig, shape: tuple[int, ...],
                  decode: Callable[..., Any] | None) -> np.ndarray:
        return generate(self.ema.model, self.config.diffusion, sample, text,
                        self._uncond(shape[0]), shape, seed=sample.seed, decode=decode)

    def _describe_device(self) -> dict[str, Any]:
        return dev.describe_device()

    def _barrier(self) -> None:
        dist.barrier(self.world)

    def _all_min(self, value: int) -> int:
        return dist.all_min(value, self.world)

    def _any_rank(self, flag: bool) -> bool:
        return dist.any_rank(flag, self.world)


def _step_seed(seed: int, step: int, micro: int) -> int:
    """A distinct 32-bit seed per (run seed, optimizer step, micro-step)."""
    return (seed * 1_000_003 + step * 8_191 + micro) % (2**32)
