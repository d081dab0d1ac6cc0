"""Training the 3D UNet in PyTorch: the tensor half of `shared.app.trainer.BaseTrainer`, which owns
the loop, the run directory and every piece of bookkeeping.

Everything random in a step (timesteps, noise, caption dropout) is drawn from the trainer's own
generator, dropout from torch's global one, and the data order from (seed, epoch); all of these
are checkpointed, so `resume` continues the exact run: 2N steps equal N + resume + N (on the
CPU with `T2S_CPU_THREADS` pinned: the thread search of `shared.app.threads` changes the order
of floating-point sums when the machine's load changes).

Under `torchrun` / `accelerate launch` the same trainer runs data-parallel (see
`t2s_torch.distributed`): every rank draws the step's randomness for the whole global batch and
keeps its own rows, so N ranks at micro-batch B train exactly as one process at N x B; rank 0
alone writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.app.distributed import Distributed, shard
from shared.app.errors import diverged
from shared.app.threads import ThreadTuner, pinned_threads, thread_options
from shared.app.trainer import BaseTrainer, TrainResult
from shared.config import SampleConfig
from shared.data.dataset import Batch
from t2s_torch import checkpoint as ckpt
from t2s_torch import device as dev
from t2s_torch import distributed as dist
from t2s_torch.diffusion import GaussianDiffusion, TextBatch, to_model_input
from t2s_torch.ema import EMA
from t2s_torch.sample import generate
from t2s_torch.text_encoder import TextEncoder
from t2s_torch.unet import UNet3D, log_model_graph
from t2s_torch.vae import LatentVAE

__all__ = ["TrainResult", "Trainer"]

OPTIMIZER_IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")


class Trainer(BaseTrainer):
    """Train `config` on its data with PyTorch; `train()` runs to `config.train.steps` (or
    resumes there). The loop and bookkeeping are `BaseTrainer`'s; these are its tensor hooks."""

    text_batch = TextBatch

    def _open(self, device: str | None) -> tuple[Distributed, torch.device]:
        requested = dev.select_device(device)
        world = dist.init_distributed(requested)
        device = dist.rank_device(requested, world)
        tc = self.config.train
        self.autocast = dev.autocast_context(device, tc.mixed_precision)
        self.scaler = torch.amp.GradScaler(device.type) if dev.needs_grad_scaler(
            device, tc.mixed_precision) else None
        return world, device

    def _text_encoder(self, cache_dir: Path) -> TextEncoder:
        return TextEncoder(self.config.text, device=self.device, cache_dir=cache_dir)

    def _build(self) -> None:
        tc = self.config.train
        torch.manual_seed(tc.seed)
        self.model = UNet3D(self.config.model).to(self.device)
        self.model.use_channels_last(dev.prefers_channels_last(self.device))
        self.ema = EMA(self.model, tc.ema_decay)
        self.step_model = dist.wrap(self.model, self.world, self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
            weight_decay=tc.weight_decay, **dev.optimizer_options(self.device))
        self.diffusion = GaussianDiffusion(self.config.diffusion, self.device)
        self.generator = torch.Generator(self.device).manual_seed(tc.seed)

    def _thread_tuner(self) -> ThreadTuner | None:
        # One process on the CPU only: ranks sharing a machine split its cores themselves.
        if self.device.type != "cpu" or self.world.enabled:
            return None
        pinned = pinned_threads()
        if pinned is not None:
            torch.set_num_threads(pinned)
            return None
        return ThreadTuner(thread_options(torch.get_num_threads()), torch.set_num_threads)

    def _load_vae(self) -> LatentVAE:
        return LatentVAE.from_pretrained(self.config.data.vae, device=self.device)

    # ----------------------------------------------------------------------------- steps

    def _fit_batch(self, per_rank: int) -> int:
        return dev.find_batch_size(self._probe_step, per_rank, self.device, self.log)

    def _probe_step(self, batch: int) -> None:
        """One forward + backward at micro-batch `batch` on random data (weights untouched)."""
        d, s = self.config.data, self.config.data.model_size
        x = torch.randn(batch, self.config.model.in_channels, d.num_frames, s, s,
                        device=self.device)
        text = self._uncond(batch)
        t = torch.zeros(batch, dtype=torch.long, device=self.device)
        with self.autocast:
            loss = self.diffusion.loss(self.model, x, text, t, torch.randn_like(x))
        loss.backward()
        self.model.zero_grad(set_to_none=True)

    def _micro_step(self, batch: Batch, index: int) -> torch.Tensor:
        x0 = to_model_input(batch.video, self.device)
        b, n = x0.shape[0], self.world.world_size
        g = self.generator
        # Drawn for the global batch, then this rank's rows: the same numbers on every rank.
        keep = shard(torch.rand(b * n, generator=g, device=self.device), self.world) \
            >= self.config.train.cond_drop_prob
        text = self.text_for(batch.captions).select(keep, self._uncond(b))
        t = shard(self.diffusion.sample_timesteps(b * n, g, self.device), self.world)
        noise = shard(torch.randn((b * n, *x0.shape[1:]), generator=g, device=self.device),
                      self.world)
        with dist.no_sync(self.step_model, skip=index != self.grad_accum - 1):
            with self.autocast:
                loss = self.diffusion.loss(self.step_model, x0, text, t, noise)
            scaled = loss / self.grad_accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return loss.detach()

    def _mean_loss(self, losses: list[torch.Tensor]) -> float:
        return float(dist.all_mean(torch.stack(losses).mean(), self.world))

    def _apply_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _optimizer_step(self) -> float:
        tc = self.config.train
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   tc.grad_clip if tc.grad_clip > 0 else math.inf)
        if self.scaler is None and not torch.isfinite(grad_norm):
            # fp16's scaler skips such steps by design; anywhere else the update would poison
            # the weights (and every later checkpoint), so stop before applying it.
            raise diverged(self.out_dir, self.step + 1, float(grad_norm), "gradient norm")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        return float(grad_norm)

    # ----------------------------------------------------------------------------- state

    def _backend_state(self) -> dict[str, Any]:
        state = {**ckpt.rng_state(self.generator, self.device),
                 "param_groups": [{k: v for k, v in g.items() if k != "params"}
                                  for g in self.optimizer.param_groups]}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def _save(self, state: dict[str, Any]) -> Path:
        return ckpt.save_checkpoint(self.out_dir, self.step, self.config, self.model,
                                    self.ema.model, self.optimizer, state,
                                    self.config.train.keep_last)

    def _check_checkpoint(self, checkpoint: Path) -> None:
        ckpt.check_checkpoint(checkpoint, self.model)

    def _load_tensors(self, checkpoint: Path) -> None:
        ckpt.load_checkpoint(checkpoint, self.model, self.ema.model, self.optimizer)

    def _load_backend_state(self, state: dict[str, Any]) -> None:
        for group, saved in zip(self.optimizer.param_groups, state["param_groups"], strict=True):
            # Hyperparameters only: the implementation (fused, foreach) is this device's choice.
            group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()
                          if k not in OPTIMIZER_IMPLEMENTATION})
        # converted from MLX: no torch RNG to restore, so a fresh stream per (seed, step)
        ckpt.restore_rng_state(state, self.generator, self.device,
                          self.config.train.seed * 1_000_003 + self.step)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    # ----------------------------------------------------------------------------- device

    @torch.no_grad()
    def _generate(self, text: TextBatch, sample: SampleConfig, shape: tuple[int, ...],
                  decode: Callable[..., Any] | None) -> np.ndarray:
        return generate(self.ema.model, self.config.diffusion, sample, text,
                        self._uncond(shape[0]), shape, seed=sample.seed, device=self.device,
                        decode=decode)

    def _describe_device(self) -> dict[str, Any]:
        return dev.describe_device(self.device)

    def _log_graph(self, log_dir: Path) -> None:
        log_model_graph(self.model, log_dir)

    def _barrier(self) -> None:
        dist.barrier(self.world)

    def _all_min(self, value: int) -> int:
        return dist.all_min(value, self.world, self.device)

    def _any_rank(self, flag: bool) -> bool:
        return dist.any_rank(flag, self.world, self.device)

    def _synchronize(self) -> None:
        dev.synchronize(self.device)
