"""Training the 3D UNet in MLX.

The twin of `t2s_torch/train.py`: the same run directory, checkpoints, samples and TensorBoard
logs, the same flags. The MLX way underneath: the micro-step (noise, caption dropout, forward,
backward) is one `mx.compile`d function with the model and the random state as compile state;
the optimizer update is another, with the model and optimizer state; lazy evaluation is forced
once per optimizer step.

Randomness: MLX's global generator is reseeded from (seed, step, micro-step) before each
micro-step, so a step's draws depend on nothing but its number, and `--resume` continues the
exact run without saving generator state.

Under `mlx.launch` the same trainer runs data-parallel (see `t2s_mlx.distributed`): every rank
draws the step's randomness for the whole global batch and keeps its own rows, so N ranks at
micro-batch B train exactly as one process at N x B; rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map
from tqdm.auto import tqdm

from shared.batching import fitting_batch
from shared.checkpoint import refuse_existing_run, resume_checkpoint, step_dir_name
from shared.config import Config, SampleConfig
from shared.data import Batch, BatchIterator, ClipDataset, cache_root
from shared.distributed import regroup, shard, stream_start
from shared.errors import diverged, interrupted
from shared.latents import bind_vae, check_vae, use_latents
from shared.lr import warmup_cosine
from shared.signals import stop_signals
from shared.tensorboard import TensorBoardLogger
from shared.valprobe import ValidationProbe
from shared.video import to_uint8, write_grid
from t2s_mlx.checkpoint import (
    check_checkpoint,
    load_into,
    load_optimizer_tensors,
    load_tensors,
    load_trainer_state,
    save_checkpoint,
)
from t2s_mlx.device import describe_device, memory_info, select_device
from t2s_mlx.diffusion import GaussianDiffusion, TextBatch
from t2s_mlx.distributed import (
    all_mean,
    all_min,
    any_rank,
    average_gradients,
    barrier,
    init_distributed,
)
from t2s_mlx.sample import generate
from t2s_mlx.text_encoder import TextEncoder
from t2s_mlx.unet import UNet3D
from t2s_mlx.vae import LatentVAE


class EMA:
    """Exponential moving average of the weights, the model samples are drawn from.

    The decay warms up as min(decay, (1 + n) / (10 + n)) so that short runs (the demo, tests)
    are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.model.eval()
        self.updates = 0

    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.model.update(tree_map(lambda e, p: e + (1.0 - decay) * (p - e),
                                   self.model.parameters(), model.parameters()))


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step of this call
    checkpoint: Path | None = None
    micro_batch: int = 0
    grad_accum: int = 1


def to_model_input(video: np.ndarray) -> mx.array:
    """uint8 (B, F, H, W, C) numpy -> float32 (B, F, H, W, C) in [-1, 1] (channels-last); cached
    latents (float16, latent mode) are already what the model trains on and are only widened."""
    if video.dtype != np.uint8:
        return mx.array(video).astype(mx.float32)
    return mx.array(video).astype(mx.float32) * (1 / 127.5) - 1.0


class Trainer:
    """Train `config` on its data; `train()` runs to `config.train.steps` (or resumes there)."""

    def __init__(self, config: Config, device: str | None = None, progress: bool = True,
                 log: Callable[[str], None] = print):
        if config.data.vae:  # latent mode: channels and sizes come from the VAE
            bind_vae(config)
        self.config = config.validate()
        self.world = init_distributed()
        self.device = select_device(device)
        self.progress = progress and self.world.is_main
        self.log = log if self.world.is_main else (lambda _: None)
        self.out_dir = Path(config.train.out_dir)
        tc = config.train
        if tc.mixed_precision == "fp16":
            # fp16 needs loss scaling against gradient underflow, which bf16 (same exponent
            # range as float32) does not; Apple Silicon runs bf16, so that is the one offered.
            raise ValueError("train.mixed_precision=fp16 is not supported by t2s-mlx: use "
                             "--set train.mixed_precision=bf16 (or no)")

        self.dataset = ClipDataset(config.data, split="train", progress=progress)
        self._vae: LatentVAE | None = None
        if config.data.vae:
            use_latents(self.dataset, config.data.vae_hash, lambda clip: self.vae.encode(clip),
                        progress=self.progress, rank=self.world.rank,
                        world_size=self.world.world_size, barrier=lambda: barrier(self.world))
        text_cache = cache_root(config.data).parent / "text"
        self.encoder = TextEncoder(config.text, cache_dir=text_cache)
        self.encoder.check_context_dim(config.model.context_dim)
        self.captions = sorted(set(self.dataset.captions))
        self.caption_row = {c: i for i, c in enumerate(self.captions)}
        self.text_table = TextBatch(*self.encoder.encode(self.captions))
        self.uncond = TextBatch(*self.encoder.empty_embedding())

        mx.random.seed(tc.seed)
        self.model = UNet3D(config.model)
        self.ema = EMA(self.model, tc.ema_decay)
        # Bias correction on, as torch's AdamW: the two backends take the same update.
        self.optimizer = optim.AdamW(learning_rate=tc.lr, betas=[tc.adam_beta1, tc.adam_beta2],
                                     weight_decay=tc.weight_decay, bias_correction=True)
        self.optimizer.init(self.model.trainable_parameters())
        self.diffusion = GaussianDiffusion(config.diffusion)
        self.step = 0
        self.micro_batch, self.grad_accum = 0, 1
        self._build_steps()

    @property
    def vae(self) -> LatentVAE:
        """Latent mode's VAE, loaded on first use: to encode clips not in the latent cache yet,
        and to decode samples."""
        if self._vae is None:
            self._vae = LatentVAE.from_pretrained(self.config.data.vae)
            check_vae(self.config, self._vae.hash, self._vae.info.path)
        return self._vae

    # ----------------------------------------------------------------------------- text

    def text_for(self, captions: list[str]) -> TextBatch:
        rows = mx.array([self.caption_row[c] for c in captions])
        return TextBatch(self.text_table.states[rows], self.text_table.mask[rows],
                         self.text_table.pooled[rows])

    def _uncond(self, batch: int) -> TextBatch:
        u = self.uncond
        return TextBatch(mx.broadcast_to(u.states, (batch, *u.states.shape[1:])),
                         mx.broadcast_to(u.mask, (batch, *u.mask.shape[1:])),
                         mx.broadcast_to(u.pooled, (batch, *u.pooled.shape[1:])))

    # ----------------------------------------------------------------------------- steps

    def _build_steps(self) -> None:
        """The compiled micro-step (loss + gradients) and optimizer update."""
        tc = self.config.train
        model, diffusion = self.model, self.diffusion
        loss_fn = partial(diffusion.loss, model)
        if tc.mixed_precision == "bf16":
            value_and_grad = mixed_value_and_grad(model, loss_fn, mx.bfloat16)
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

    def _micro_step(self, batch: Batch, index: int) -> tuple[mx.array, Any]:
        mx.random.seed(_step_seed(self.config.train.seed, self.step, index))
        x0 = to_model_input(batch.video)
        text = self.text_for(batch.captions)
        u = self._uncond(x0.shape[0])
        return self._micro(x0, text.states, text.mask, text.pooled, u.states, u.mask, u.pooled)

    def _set_lr(self) -> float:
        tc = self.config.train
        lr = warmup_cosine(self.step, tc.lr, tc.warmup_steps, tc.steps)
        self.optimizer.learning_rate = mx.array(lr, dtype=mx.float32)
        return lr

    def _optimizer_step(self, grads: Any) -> float:
        norm = self._update(average_gradients(grads, self.world))
        mx.eval(self.model.parameters(), self.optimizer.state, norm)
        if not math.isfinite(float(norm)):
            raise diverged(self.out_dir, self.step + 1, float(norm), "gradient norm")
        self.ema.update(self.model)
        mx.eval(self.ema.model.parameters())
        return float(norm)

    # ----------------------------------------------------------------------------- batch size

    def _resolve_batch(self) -> tuple[int, int]:
        tc = self.config.train
        if tc.batch_size != "auto":
            return int(tc.batch_size), tc.grad_accum
        per_rank = max(1, math.ceil(tc.effective_batch / self.world.world_size))
        micro = all_min(find_batch_size(self._probe_step, per_rank, self.log), self.world)
        return micro, max(1, math.ceil(per_rank / micro))

    def _probe_step(self, batch: int) -> None:
        """One forward + backward at micro-batch `batch` on random data (weights untouched)."""
        d, s = self.config.data, self.config.data.model_size
        x0 = mx.random.normal((batch, d.num_frames, s, s, self.config.model.in_channels))
        u = self._uncond(batch)
        loss, grads = self._micro(x0, u.states, u.mask, u.pooled, u.states, u.mask, u.pooled)
        mx.eval(loss, grads)

    # ----------------------------------------------------------------------------- state

    def _trainer_state(self) -> dict[str, Any]:
        return {"micro_batch": self.micro_batch, "grad_accum": self.grad_accum,
                "world_size": self.world.world_size, "ema_updates": self.ema.updates}

    def save(self) -> Path:
        return save_checkpoint(self.out_dir, self.step, self.config, self.model, self.ema.model,
                               self.optimizer, self._trainer_state(), self.config.train.keep_last)

    def load(self, checkpoint: Path) -> None:
        load_into(self.model, checkpoint / "model.safetensors")
        load_into(self.ema.model, checkpoint / "ema.safetensors")
        load_optimizer_tensors(self.optimizer, load_tensors(checkpoint / "optimizer.safetensors"))
        state = load_trainer_state(checkpoint)
        self.step = int(state["step"])
        self.micro_batch, self.grad_accum = int(state["micro_batch"]), int(state["grad_accum"])
        self.grad_accum, note = regroup(self.micro_batch, self.grad_accum,
                                        int(state.get("world_size", 1)), self.world)
        if note:
            self.log(note)
        self.ema.updates = int(state["ema_updates"])
        self._build_steps()  # the compiled steps captured the optimizer state it replaced

    # ----------------------------------------------------------------------------- training

    @property
    def clips_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.world.world_size

    def _batches(self) -> Iterator[Batch]:
        start = stream_start(self.step, self.clips_per_step, self.micro_batch, self.world)
        return iter(BatchIterator(self.dataset, self.micro_batch, shuffle=True,
                                  seed=self.config.data.seed, prefetch=self.config.data.prefetch,
                                  rank=self.world.rank, world_size=self.world.world_size,
                                  start_batch=start))

    def resume_from(self, resume: bool | str | Path = True) -> Path:
        """The checkpoint `--resume [CHECKPOINT]` continues from, checked whole before anything
        is loaded: the newest intact step (a damaged newest one is skipped with a warning, or
        refused under data.strict), or the step named."""
        return resume_checkpoint(self.out_dir, resume,
                                 lambda c: check_checkpoint(c, self.model),
                                 strict=self.config.data.strict, warn=self.log)

    def train(self, resume: bool | str | Path = False, until: int | None = None) -> TrainResult:
        """Train to `config.train.steps`; `until` stops (with a checkpoint) at an earlier step,
        as an interrupted run would, without changing the learning-rate schedule. `resume`:
        True for the run's newest intact checkpoint, or a path to one of its checkpoints.

        SIGINT, SIGTERM and SIGUSR1 stop the run after the optimizer step in progress, with a
        checkpoint of that step (`shared.signals`), by raising TrainingInterrupted; under
        several processes every rank stops at the same step and rank 0 writes."""
        tc = self.config.train
        last_step = min(tc.steps, until) if until else tc.steps
        if resume:
            checkpoint = self.resume_from(resume)
            self.load(checkpoint)
            self.log(f"resumed from {checkpoint} at step {self.step}")
        else:
            refuse_existing_run(self.out_dir)
            barrier(self.world)  # every rank has looked before rank 0 writes
            self.micro_batch, self.grad_accum = self._resolve_batch()
        main = self.world.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.config.save(self.out_dir / "config.json")
        ranks = f" x {self.world.world_size} processes" if self.world.enabled else ""
        self.log(f"training on {self.device} with {len(self.dataset)} clips"
                 f"{self.dataset.split_note}: micro-batch "
                 f"{self.micro_batch} x {self.grad_accum} accumulation{ranks} = "
                 f"{self.clips_per_step} clips per step")
        result = TrainResult(self.step, micro_batch=self.micro_batch, grad_accum=self.grad_accum)
        tb = TensorBoardLogger(self.out_dir / "tb") if main else None
        if tb is not None and self.step == 0:
            tb.log_config(self.config.to_dict())
            tb.text("device", "\n".join(f"- {k}: {v}" for k, v in describe_device().items()))
        probe = (ValidationProbe.create(self.config, self.log)
                 if tb is not None and tc.eval_every else None)
        batches = self._batches()
        bar = tqdm(total=tc.steps, initial=self.step, desc="training", unit="step",
                   disable=not self.progress)
        self.model.train()
        last_saved = None
        with stop_signals(self.log) as stop, contextlib.ExitStack() as cleanup:
            cleanup.callback(bar.close)
            if tb is not None:
                cleanup.callback(tb.close)
            if probe is not None:
                cleanup.callback(probe.close)
            while self.step < last_step:
                start = time.perf_counter()
                lr = self._set_lr()
                losses, grads = [], None
                for index in range(self.grad_accum):
                    loss, g = self._micro_step(next(batches), index)
                    losses.append(loss)
                    grads = g if grads is None else tree_map(mx.add, grads, g)
                if self.grad_accum > 1:
                    grads = tree_map(lambda g: g / self.grad_accum, grads)
                loss = float(all_mean(mx.stack(losses).mean(), self.world))
                if not math.isfinite(loss):
                    raise diverged(self.out_dir, self.step + 1, loss, "loss")
                grad_norm = self._optimizer_step(grads)
                seconds = time.perf_counter() - start
                self.step += 1
                result.losses.append(loss)
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if tb is not None and (self.step % tc.log_every == 0 or self.step == last_step):
                    tb.scalars({"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                                "train/samples_per_s": self.clips_per_step / seconds}, self.step)
                if tb is not None and tc.sample_every and self.step % tc.sample_every == 0:
                    self.write_samples(tb)
                if probe is not None and self.step % tc.eval_every == 0:
                    self.evaluate_reference(probe, tb)
                if self.step % tc.checkpoint_every == 0 or self.step == last_step:
                    last_saved = self.save() if main else None
                if self.step < last_step and any_rank(bool(stop), self.world):
                    if main and (last_saved is None
                                 or last_saved.name != step_dir_name(self.step)):
                        last_saved = self.save()
                    raise interrupted(stop.name or "a signal to another process",
                                      stop.signum or signal.SIGTERM, self.step, last_saved)
        result.step, result.checkpoint = self.step, last_saved
        return result

    def write_samples(self, tb: TensorBoardLogger, prompts: list[str] | None = None,
                      num: int = 4) -> Path:
        """EMA samples for a few training captions: a GIF grid and a TensorBoard video."""
        prompts = prompts or self.captions[:num]
        clips = self.sample_clips(prompts, self.config.sample)
        path = write_grid(self.out_dir / "samples" / f"step_{self.step:07d}.gif", list(clips),
                          prompts, fps=self.config.sample.fps)
        tb.video("samples", clips, self.step, fps=self.config.sample.fps)
        return path

    def sample_clips(self, prompts: list[str], sample: SampleConfig) -> np.ndarray:
        """uint8 (N, F, S, S, 3) EMA samples, one per prompt, with `sample`'s sampler, steps,
        guidance and seed (decoded to pixels in latent mode)."""
        d = self.config.data
        text = TextBatch(*self.encoder.encode(prompts))
        shape = (len(prompts), d.num_frames, d.model_size, d.model_size,
                 self.config.model.out_channels)
        decode = self.vae.decode_video if d.vae else None
        videos = generate(self.ema.model, self.config.diffusion, sample, text,
                          self._uncond(len(prompts)), shape, seed=sample.seed, decode=decode)
        return np.stack([to_uint8(v) for v in videos])

    def evaluate_reference(self, probe: ValidationProbe, tb: TensorBoardLogger | None
                           ) -> dict[str, float]:
        """The real-sign metrics of EMA samples on the validation split (`train.eval_every`),
        logged as val/* at this step."""
        return probe.run(self.sample_clips, self.step, tb)


def mixed_value_and_grad(model: nn.Module, fn: Callable[..., mx.array],
                         dtype: mx.Dtype) -> Callable[..., tuple[mx.array, Any]]:
    """`nn.value_and_grad` with float32 master weights and `dtype` compute.

    MLX has no autocast, so the weights are cast inside the differentiated function: the forward
    and backward run in `dtype` (half the activation memory, the fast matmul path on Apple
    GPUs), while the cast's derivative hands float32 gradients to the float32 optimizer state.
    The model holds its float32 weights again when the call returns.
    """

    def cast(p: mx.array) -> mx.array:
        return p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p

    def inner(params: Any, *args: Any) -> mx.array:
        model.update(tree_map(cast, params))
        return fn(*args)

    value_and_grad = mx.value_and_grad(inner)

    def wrapped(*args: Any) -> tuple[mx.array, Any]:
        params = model.trainable_parameters()
        try:
            return value_and_grad(params, *args)
        finally:
            model.update(params)

    return wrapped


def _step_seed(seed: int, step: int, micro: int) -> int:
    """A distinct 32-bit seed per (run seed, optimizer step, micro-step)."""
    return (seed * 1_000_003 + step * 8_191 + micro) % (2**32)


def find_batch_size(probe: Callable[[int], None], target: int,
                    log: Callable[[str], None] = print) -> int:
    """The largest micro-batch (a power of two, at most `target`) whose training step fits.

    MLX allocates lazily from unified memory and does not raise when it runs out (the system
    swaps), so the peak memory of probes at batch 1 and 2 gives a per-clip cost, and the batch
    is what fits in 70% of MLX's memory limit (the share of RAM the GPU may use).
    """
    mx.reset_peak_memory()
    probe(1)
    one = mx.get_peak_memory()
    mx.reset_peak_memory()
    probe(2)
    two = mx.get_peak_memory()
    per_clip = max(two - one, one // 2, 1)
    free = memory_info()["free"] * 0.7
    size = fitting_batch(per_clip, free, target)
    log(f"--batch-size auto: ~{per_clip / 2**20:.0f} MiB per clip, "
        f"{free / 2**30:.1f} GiB usable: micro-batch {size}")
    return size

