"""Training the 3D UNet in PyTorch.

One `Trainer` owns a run directory::

    <out_dir>/config.json           the run's config
    <out_dir>/checkpoints/step_N/   model, EMA, optimizer, trainer state (see shared.checkpoint)
    <out_dir>/samples/step_N.gif    a grid of EMA samples, one per training prompt shown
    <out_dir>/tb/                   TensorBoard events (val/*: `shared.valprobe`, when on)

Everything random in a step (timesteps, noise, caption dropout) is drawn from the trainer's own
generator, dropout from torch's global one, and the data order from (seed, epoch); all of these
are checkpointed, so `resume` continues the exact run: 2N steps equal N + resume + N.

Under `torchrun` / `accelerate launch` the same trainer runs data-parallel (see
`t2s_torch.distributed`): every rank draws the step's randomness for the whole global batch and
keeps its own rows, so N ranks at micro-batch B train exactly as one process at N x B; rank 0
alone writes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from shared.batching import fitting_batch, max_rss_bytes
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
from t2s_torch.checkpoint import (
    check_checkpoint,
    decode_bytes,
    encode_bytes,
    load_into,
    load_optimizer_tensors,
    load_tensors,
    load_trainer_state,
    save_checkpoint,
)
from t2s_torch.device import (
    autocast_context,
    describe_device,
    memory_info,
    needs_grad_scaler,
    prefers_channels_last,
    select_device,
    synchronize,
)
from t2s_torch.diffusion import GaussianDiffusion, TextBatch
from t2s_torch.distributed import (
    all_mean,
    all_min,
    any_rank,
    barrier,
    init_distributed,
    no_sync,
    rank_device,
    wrap,
)
from t2s_torch.sample import generate
from t2s_torch.text_encoder import TextEncoder
from t2s_torch.unet import UNet3D
from t2s_torch.vae import LatentVAE


class EMA:
    """Exponential moving average of the weights, the model samples are drawn from.

    The decay warms up as min(decay, (1 + n) / (10 + n)) so that short runs (the demo, tests)
    are not dominated by the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - decay)


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step of this call
    checkpoint: Path | None = None
    micro_batch: int = 0
    grad_accum: int = 1


def to_model_input(video: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, F, H, W, C) numpy -> float32 (B, C, F, H, W) in [-1, 1] on the device; cached
    latents (float16, latent mode) are already what the model trains on and are only widened."""
    x = torch.from_numpy(np.ascontiguousarray(video)).to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x.permute(0, 4, 1, 2, 3).float()
    return x.permute(0, 4, 1, 2, 3).float().mul_(1 / 127.5).sub_(1.0)


class Trainer:
    """Train `config` on its data; `train()` runs to `config.train.steps` (or resumes there)."""

    def __init__(self, config: Config, device: str | None = None, progress: bool = True,
                 log: Callable[[str], None] = print):
        if config.data.vae:  # latent mode: channels and sizes come from the VAE
            bind_vae(config)
        self.config = config.validate()
        requested = select_device(device)
        self.world = init_distributed(requested)
        self.device = rank_device(requested, self.world)
        self.progress = progress and self.world.is_main
        self.log = log if self.world.is_main else (lambda _: None)
        self.out_dir = Path(config.train.out_dir)
        tc = config.train
        self.autocast = autocast_context(self.device, tc.mixed_precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if needs_grad_scaler(
            self.device, tc.mixed_precision) else None

        self.dataset = ClipDataset(config.data, split="train", progress=progress)
        self._vae: LatentVAE | None = None
        if config.data.vae:
            use_latents(self.dataset, config.data.vae_hash, lambda clip: self.vae.encode(clip),
                        progress=self.progress, rank=self.world.rank,
                        world_size=self.world.world_size, barrier=lambda: barrier(self.world))
        text_cache = cache_root(config.data).parent / "text"
        self.encoder = TextEncoder(config.text, device=self.device, cache_dir=text_cache)
        self.encoder.check_context_dim(config.model.context_dim)
        self.captions = sorted(set(self.dataset.captions))
        self.caption_row = {c: i for i, c in enumerate(self.captions)}
        self.text_table = self._encode_all(self.captions)
        self.uncond = TextBatch(*self.encoder.empty_embedding())

        torch.manual_seed(tc.seed)
        self.model = UNet3D(config.model).to(self.device)
        self.model.use_channels_last(prefers_channels_last(self.device))
        self.ema = EMA(self.model, tc.ema_decay)
        self.step_model = wrap(self.model, self.world, self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
            weight_decay=tc.weight_decay)
        self.diffusion = GaussianDiffusion(config.diffusion, self.device)
        self.generator = torch.Generator(self.device).manual_seed(tc.seed)
        self.step = 0
        self.micro_batch, self.grad_accum = 0, 1

    @property
    def vae(self) -> LatentVAE:
        """Latent mode's VAE, loaded on first use: to encode clips not in the latent cache yet,
        and to decode samples."""
        if self._vae is None:
            self._vae = LatentVAE.from_pretrained(self.config.data.vae, device=self.device)
            check_vae(self.config, self._vae.hash, self._vae.info.path)
        return self._vae

    # ----------------------------------------------------------------------------- text

    def _encode_all(self, captions: list[str]) -> TextBatch:
        """Every caption's embedding, computed (or read from the disk cache) once per run."""
        return TextBatch(*self.encoder.encode(captions))

    def text_for(self, captions: list[str]) -> TextBatch:
        rows = torch.tensor([self.caption_row[c] for c in captions], device=self.device)
        return TextBatch(self.text_table.states[rows], self.text_table.mask[rows],
                         self.text_table.pooled[rows])

    def _uncond(self, batch: int) -> TextBatch:
        u = self.uncond
        return TextBatch(u.states.expand(batch, -1, -1), u.mask.expand(batch, -1),
                         u.pooled.expand(batch, -1))

    # ----------------------------------------------------------------------------- batch size

    def _resolve_batch(self) -> tuple[int, int]:
        tc = self.config.train
        if tc.batch_size != "auto":
            return int(tc.batch_size), tc.grad_accum
        per_rank = max(1, math.ceil(tc.effective_batch / self.world.world_size))
        micro = find_batch_size(self._probe_step, per_rank, self.device, self.log)
        micro = all_min(micro, self.world, self.device)
        return micro, max(1, math.ceil(per_rank / micro))

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

    # ----------------------------------------------------------------------------- state

    def _trainer_state(self) -> dict[str, Any]:
        state = {
            "micro_batch": self.micro_batch, "grad_accum": self.grad_accum,
            "world_size": self.world.world_size, "ema_updates": self.ema.updates,
            "generator": encode_bytes(self.generator.get_state()),
            "torch_rng": encode_bytes(torch.get_rng_state()),
            "param_groups": [{k: v for k, v in g.items() if k != "params"}
                             for g in self.optimizer.param_groups],
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = encode_bytes(torch.cuda.get_rng_state(self.device))
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def save(self) -> Path:
        return save_checkpoint(self.out_dir, self.step, self.config, self.model, self.ema.model,
                               self.optimizer, self._trainer_state(), self.config.train.keep_last)

    def load(self, checkpoint: Path) -> None:
        load_into(self.model, checkpoint / "model.safetensors")
        load_into(self.ema.model, checkpoint / "ema.safetensors")
        names = {p: n for n, p in self.model.named_parameters()}
        load_optimizer_tensors(self.optimizer, load_tensors(checkpoint / "optimizer.safetensors"),
                               names)
        state = load_trainer_state(checkpoint)
        for group, saved in zip(self.optimizer.param_groups, state["param_groups"], strict=True):
            group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
        self.step = int(state["step"])
        self.micro_batch, self.grad_accum = int(state["micro_batch"]), int(state["grad_accum"])
        self.grad_accum, note = regroup(self.micro_batch, self.grad_accum,
                                        int(state.get("world_size", 1)), self.world)
        if note:
            self.log(note)
        self.ema.updates = int(state["ema_updates"])
        if "generator" in state:
            self.generator.set_state(decode_bytes(state["generator"]))
            torch.set_rng_state(decode_bytes(state["torch_rng"]))
        else:  # converted from MLX: no torch RNG to restore, so a fresh stream per (seed, step)
            seed = self.config.train.seed * 1_000_003 + self.step
            self.generator.manual_seed(seed)
            torch.manual_seed(seed)
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(decode_bytes(state["cuda_rng"]), self.device)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

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

    def _micro_step(self, batch: Batch, last: bool = True) -> torch.Tensor:
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
        with no_sync(self.step_model, skip=not last):
            with self.autocast:
                loss = self.diffusion.loss(self.step_model, x0, text, t, noise)
            scaled = loss / self.grad_accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return loss.detach()

    def _set_lr(self) -> float:
        tc = self.config.train
        lr = warmup_cosine(self.step, tc.lr, tc.warmup_steps, tc.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

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
            if tc.log_graph:
                log_model_graph(self.model, self.config, self.out_dir / "tb")
            tb.log_config(self.config.to_dict())
            tb.text("device", "\n".join(f"- {k}: {v}" for k, v in
                                        describe_device(self.device).items()))
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
                losses = [self._micro_step(next(batches), last=i == self.grad_accum - 1)
                          for i in range(self.grad_accum)]
                loss = float(all_mean(torch.stack(losses).mean(), self.world))
                if not math.isfinite(loss):
                    raise diverged(self.out_dir, self.step + 1, loss, "loss")
                grad_norm = self._optimizer_step()
                synchronize(self.device)
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
                if self.step < last_step and any_rank(bool(stop), self.world, self.device):
                    if main and (last_saved is None
                                 or last_saved.name != step_dir_name(self.step)):
                        last_saved = self.save()
                    raise interrupted(stop.name or "a signal to another process",
                                      stop.signum or signal.SIGTERM, self.step, last_saved)
        result.step, result.checkpoint = self.step, last_saved
        return result

    @torch.no_grad()
    def write_samples(self, tb: TensorBoardLogger, prompts: list[str] | None = None,
                      num: int = 4) -> Path:
        """EMA samples for a few training captions: a GIF grid and a TensorBoard video."""
        prompts = prompts or self.captions[:num]
        clips = self.sample_clips(prompts, self.config.sample)
        path = write_grid(self.out_dir / "samples" / f"step_{self.step:07d}.gif", list(clips),
                          prompts, fps=self.config.sample.fps)
        tb.video("samples", clips, self.step, fps=self.config.sample.fps)
        return path

    @torch.no_grad()
    def sample_clips(self, prompts: list[str], sample: SampleConfig) -> np.ndarray:
        """uint8 (N, F, S, S, 3) EMA samples, one per prompt, with `sample`'s sampler, steps,
        guidance and seed (decoded to pixels in latent mode)."""
        d = self.config.data
        text = TextBatch(*self.encoder.encode(prompts))
        shape = (len(prompts), d.num_frames, d.model_size, d.model_size,
                 self.config.model.out_channels)
        decode = self.vae.decode_video if d.vae else None
        videos = generate(self.ema.model, self.config.diffusion, sample, text,
                          self._uncond(len(prompts)), shape, seed=sample.seed,
                          device=self.device, decode=decode)
        return np.stack([to_uint8(v) for v in videos])

    def evaluate_reference(self, probe: ValidationProbe, tb: TensorBoardLogger | None
                           ) -> dict[str, float]:
        """The real-sign metrics of EMA samples on the validation split (`train.eval_every`),
        logged as val/* at this step."""
        return probe.run(self.sample_clips, self.step, tb)


def log_model_graph(model: torch.nn.Module, config: Config, log_dir: Path) -> None:
    """The UNet's graph for TensorBoard's Graphs tab, traced at the smallest valid input (the
    graph does not depend on the size, and tracing at full size would cost a forward pass)."""
    import warnings

    from torch.utils.tensorboard import SummaryWriter

    m = config.model
    side = 2 ** (m.num_levels - 1)
    device = next(model.parameters()).device
    inputs = (torch.zeros(1, m.in_channels, 2, side, side, device=device),
              torch.zeros(1, dtype=torch.long, device=device),
              torch.zeros(1, 2, m.context_dim, device=device),
              torch.ones(1, 2, dtype=torch.long, device=device),
              torch.zeros(1, m.context_dim, device=device))
    try:
        with warnings.catch_warnings(), SummaryWriter(str(log_dir)) as writer:
            warnings.simplefilter("ignore")
            writer.add_graph(model, inputs)
    except Exception as e:  # the graph is a nicety; training must not depend on tracing
        warnings.warn(f"could not log the model graph to TensorBoard: {e}", stacklevel=2)


def find_batch_size(probe: Callable[[int], None], target: int, device: torch.device,
                    log: Callable[[str], None] = print) -> int:
    """The largest micro-batch (a power of two, at most `target`) whose training step fits.

    CUDA: try doubling sizes until one runs out of memory. CPU and MPS never raise on
    exhaustion (they swap, or the OS kills the process), so there the peak memory of probes at
    batch 1 and 2 gives a per-clip cost, and the batch is what fits in 70% of free memory.
    """
    if device.type == "cuda":
        best, size = 0, 1
        while size <= target:
            try:
                torch.cuda.reset_peak_memory_stats(device)
                probe(size)
                best, size = size, size * 2
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                torch.cuda.empty_cache()
        if best == 0:
            raise RuntimeError("even a micro-batch of 1 does not fit in GPU memory; use a "
                               "smaller preset or --set model.gradient_checkpointing=true")
        log(f"--batch-size auto: micro-batch {best} fits on {device}")
        return best
    before = _peak_bytes(device)
    probe(1)
    one = _peak_bytes(device)
    probe(2)
    two = _peak_bytes(device)
    per_clip = max(two - one, one - before, 1)
    free = memory_info(device).get("free", 0) * 0.7
    size = fitting_batch(per_clip, free, target)
    log(f"--batch-size auto: ~{per_clip / 2**20:.0f} MiB per clip, "
        f"{free / 2**30:.1f} GiB usable: micro-batch {size}")
    return size


def _peak_bytes(device: torch.device) -> int:
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    return max_rss_bytes()
