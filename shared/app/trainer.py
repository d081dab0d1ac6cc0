"""The training loop, written once over the backends' tensor code.

`BaseTrainer` owns a run directory::

    <out_dir>/config.json           the run's config
    <out_dir>/checkpoints/step_N/   model, EMA, optimizer, trainer state (shared.model.checkpoint)
    <out_dir>/samples/step_N.gif    a grid of EMA samples, one per training prompt shown
    <out_dir>/tb/                   TensorBoard events (val/*: `shared.app.valprobe`, when on)

and everything in a run that is not tensors: resuming or refusing a run, the micro-batch and
accumulation, the learning-rate schedule, the data stream, the caption table, logging, the
validation probe, checkpoint cadence, divergence checks and the stop signals. A backend's
`Trainer` subclasses it and supplies the hooks below (`_open`, `_build`, `_micro_step`,
`_optimizer_step`, tensor save/load, the collectives, sampling), so a training feature is
written here once and in a backend only where its tensors differ.

Data-parallel: every rank draws the step's randomness for the whole global batch and keeps its
own rows, so N ranks at micro-batch B train exactly as one process at N x B; every rank stops at
the same step, and rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from shared.app.distributed import Distributed, regroup, stream_start
from shared.app.errors import diverged, interrupted
from shared.app.sampling_driver import fit_text
from shared.app.signals import stop_signals
from shared.app.tensorboard import TensorBoardLogger
from shared.app.threads import ThreadTuner
from shared.app.valprobe import ValidationProbe
from shared.config import Config, SampleConfig
from shared.data.dataset import Batch, BatchIterator, ClipDataset
from shared.data.decode_cache import cache_root
from shared.data.latents import bind_vae, check_vae, use_latents
from shared.data.video import to_uint8, write_grid
from shared.diffusion.lr import warmup_cosine
from shared.model.checkpoint import TRAINER_STATE_FILE, load_json, step_dir_name
from shared.model.resume import refuse_existing_run, resume_checkpoint


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step of this call
    checkpoint: Path | None = None
    micro_batch: int = 0
    grad_accum: int = 1


class EMACount:
    """Exponential moving average of the weights, the model samples are drawn from: the count
    and decay here, the weights in a backend's subclass.

    The decay warms up as min(decay, (1 + n) / (10 + n)) so that short runs (the demo, tests)
    are not dominated by the random initialisation.
    """

    def __init__(self, decay: float):
        self.decay = decay
        self.updates = 0

    def next_decay(self) -> float:
        """Count an update and return its decay."""
        self.updates += 1
        return min(self.decay, (1 + self.updates) / (10 + self.updates))


ESTIMATE_PREFIX = "training: about"


class StepPace:
    """The run's remaining time, said once, from the median of its first timed steps (after a
    few warm-up steps that pay for allocation and caches): what a user wants to know before
    walking away from a long run."""

    WARMUP, TIMED = 3, 20

    def __init__(self, step: int, last_step: int):
        self.first, self.last_step = step, last_step
        self.times: list[float] = []

    def tick(self, seconds: float) -> str | None:
        self.times.append(seconds)
        timed = self.times[self.WARMUP:]
        if len(timed) != self.TIMED:
            return None
        per_step = float(np.median(timed))
        steps_left = self.last_step - self.first - len(self.times)
        if per_step * steps_left < 60:
            return None
        return (f"{ESTIMATE_PREFIX} {per_step * steps_left / 60:.0f} min more on this machine "
                f"({per_step:.2f} s/step, {steps_left} steps to go)")


class BaseTrainer:
    """Train `config` on its data; `train()` runs to `config.train.steps` (or resumes there)."""

    model: Any
    ema: Any
    optimizer: Any
    text_batch: Any  # the backend's TextBatch: (states, mask, pooled) with take / expand / select

    def __init__(self, config: Config, device: str | None = None, progress: bool = True,
                 log: Callable[[str], None] = print):
        if config.data.vae:  # latent mode: channels and sizes come from the VAE
            bind_vae(config)
        self.config = config.validate()
        self.world, self.device = self._open(device)
        self.progress = progress and self.world.is_main
        self.log = log if self.world.is_main else (lambda _: None)
        self.out_dir = Path(config.train.out_dir)

        self.dataset = ClipDataset(config.data, split="train", progress=progress)
        self._vae: Any = None
        if config.data.vae:
            use_latents(self.dataset, config.data.vae_hash, lambda clip: self.vae.encode(clip),
                        progress=self.progress, rank=self.world.rank,
                        world_size=self.world.world_size, barrier=self._barrier)
        self.encoder = self._text_encoder(cache_root(config.data).parent / "text")
        self.encoder.check_context_dim(config.model.context_dim)
        self.captions = sorted(set(self.dataset.captions))
        self.caption_row = {c: i for i, c in enumerate(self.captions)}
        # Every caption's embedding, computed (or read from the disk cache) once per run.
        self.text_table, self.uncond = fit_text(
            self.text_batch(*self.encoder.encode(self.captions)),
            self.text_batch(*self.encoder.empty_embedding()))
        self._build()
        self.threads = self._thread_tuner()
        self.step = 0
        self.micro_batch, self.grad_accum = 0, 1

    def text_for(self, captions: list[str]) -> Any:
        """The training captions' text, from the table encoded once per run."""
        return self.text_table.take([self.caption_row[c] for c in captions])

    def _uncond(self, batch: int) -> Any:
        """The empty caption's text, `batch` rows (classifier-free guidance's other half)."""
        return self.uncond.expand(batch)

    # ----------------------------------------------------------------- what a backend supplies

    def _open(self, device: str | None) -> tuple[Distributed, Any]:
        """This process's place among the ranks and its device; mixed precision is set up (or
        refused) here, before any data is read."""
        raise NotImplementedError

    def _text_encoder(self, cache_dir: Path) -> Any:
        raise NotImplementedError

    def _build(self) -> None:
        """Seed, then build the model, EMA, optimizer and diffusion on the device."""
        raise NotImplementedError

    def _thread_tuner(self) -> ThreadTuner | None:
        """A `ThreadTuner` where the backend sets its own CPU thread count; None elsewhere."""
        return None

    def _load_vae(self) -> Any:
        raise NotImplementedError

    def _fit_batch(self, per_rank: int) -> int:
        """`--batch-size auto`: the largest micro-batch up to `per_rank` that fits this device."""
        raise NotImplementedError

    def _micro_step(self, batch: Batch, index: int) -> Any:
        """Forward + backward of micro-step `index` of this optimizer step; its loss (a tensor:
        it is read once per step, in `_mean_loss`)."""
        raise NotImplementedError

    def _mean_loss(self, losses: list[Any]) -> float:
        """The step's loss: the micro-steps' mean, averaged over the ranks."""
        raise NotImplementedError

    def _optimizer_step(self) -> float:
        """Clip, step and update the EMA; the gradient norm (diverged on a non-finite one)."""
        raise NotImplementedError

    def _apply_lr(self, lr: float) -> None:
        raise NotImplementedError

    def _backend_state(self) -> dict[str, Any]:
        """trainer_state.json's backend part (RNG, optimizer hyperparameters, scaler)."""
        return {}

    def _save(self, state: dict[str, Any]) -> Path:
        raise NotImplementedError

    def _check_checkpoint(self, checkpoint: Path) -> None:
        raise NotImplementedError

    def _load_tensors(self, checkpoint: Path) -> None:
        """Model, EMA and optimizer tensors."""
        raise NotImplementedError

    def _load_backend_state(self, state: dict[str, Any]) -> None:
        """What `_backend_state` saved, after the step and batch are restored."""

    def _generate(self, text: Any, sample: SampleConfig, shape: tuple[int, ...],
                  decode: Callable[..., Any] | None) -> np.ndarray:
        """EMA sample videos for `text` (`to_uint8` makes them clips)."""
        raise NotImplementedError

    def _describe_device(self) -> dict[str, Any]:
        raise NotImplementedError

    def _log_graph(self, log_dir: Path) -> None:
        """The model graph for TensorBoard (`train.log_graph`), where the backend can trace it."""

    def _barrier(self) -> None:
        raise NotImplementedError

    def _all_min(self, value: int) -> int:
        raise NotImplementedError

    def _any_rank(self, flag: bool) -> bool:
        raise NotImplementedError

    def _synchronize(self) -> None:
        """Wait for the device, so that a step's time is its compute."""

    # ----------------------------------------------------------------------------- the run

    @property
    def vae(self) -> Any:
        """Latent mode's VAE, loaded on first use: to encode clips not in the latent cache yet,
        and to decode samples."""
        if self._vae is None:
            self._vae = self._load_vae()
            check_vae(self.config, self._vae.hash, self._vae.info.path)
        return self._vae

    @property
    def clips_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.world.world_size

    def _resolve_batch(self) -> tuple[int, int]:
        tc = self.config.train
        if tc.batch_size != "auto":
            return int(tc.batch_size), tc.grad_accum
        per_rank = max(1, math.ceil(tc.effective_batch / self.world.world_size))
        micro = self._all_min(self._fit_batch(per_rank))
        return micro, max(1, math.ceil(per_rank / micro))

    def _trainer_state(self) -> dict[str, Any]:
        return {"micro_batch": self.micro_batch, "grad_accum": self.grad_accum,
                "world_size": self.world.world_size, "ema_updates": self.ema.updates,
                **self._backend_state()}

    def save(self) -> Path:
        return self._save(self._trainer_state())

    def load(self, checkpoint: Path) -> None:
        self._load_tensors(checkpoint)
        state = load_json(checkpoint / TRAINER_STATE_FILE)
        self.step = int(state["step"])
        self.micro_batch, self.grad_accum = int(state["micro_batch"]), int(state["grad_accum"])
        self.grad_accum, note = regroup(self.micro_batch, self.grad_accum,
                                        int(state.get("world_size", 1)), self.world)
        if note:
            self.log(note)
        self.ema.updates = int(state["ema_updates"])
        self._load_backend_state(state)

    def resume_from(self, resume: bool | str | Path = True) -> Path:
        """The checkpoint `--resume [CHECKPOINT]` continues from, checked whole before anything
        is loaded: the newest intact step (a damaged newest one is skipped with a warning, or
        refused under data.strict), or the step named."""
        return resume_checkpoint(self.out_dir, resume, self._check_checkpoint,
                                 strict=self.config.data.strict, warn=self.log)

    def _batches(self) -> Iterator[Batch]:
        start = stream_start(self.step, self.clips_per_step, self.micro_batch, self.world)
        return iter(BatchIterator(self.dataset, self.micro_batch, shuffle=True,
                                  seed=self.config.data.seed, prefetch=self.config.data.prefetch,
                                  rank=self.world.rank, world_size=self.world.world_size,
                                  start_batch=start))

    def _set_lr(self) -> float:
        tc = self.config.train
        lr = warmup_cosine(self.step, tc.lr, tc.warmup_steps, tc.steps)
        self._apply_lr(lr)
        return lr

    def train(self, resume: bool | str | Path = False, until: int | None = None) -> TrainResult:
        """Train to `config.train.steps`; `until` stops (with a checkpoint) at an earlier step,
        as an interrupted run would, without changing the learning-rate schedule. `resume`:
        True for the run's newest intact checkpoint, or a path to one of its checkpoints.

        SIGINT, SIGTERM and SIGUSR1 stop the run after the optimizer step in progress, with a
        checkpoint of that step (`shared.app.signals`), by raising TrainingInterrupted; under
        several processes every rank stops at the same step and rank 0 writes."""
        tc = self.config.train
        last_step = min(tc.steps, until) if until else tc.steps
        if resume:
            checkpoint = self.resume_from(resume)
            self.load(checkpoint)
            self.log(f"resumed from {checkpoint} at step {self.step}")
        else:
            refuse_existing_run(self.out_dir)
            self._barrier()  # every rank has looked before rank 0 writes
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
                self._log_graph(self.out_dir / "tb")
            tb.log_config(self.config.to_dict())
            tb.text("device", "\n".join(f"- {k}: {v}" for k, v in
                                        self._describe_device().items()))
        probe = (ValidationProbe.create(self.config, self.log)
                 if tb is not None and tc.eval_every else None)
        batches = self._batches()
        bar = tqdm(total=tc.steps, initial=self.step, desc="training", unit="step",
                   disable=not self.progress)
        self.model.train()
        last_saved, saved_at = None, time.monotonic()
        pace = StepPace(self.step, last_step)
        with stop_signals(self.log) as stop, contextlib.ExitStack() as cleanup:
            cleanup.callback(bar.close)
            if tb is not None:
                cleanup.callback(tb.close)
            if probe is not None:
                cleanup.callback(probe.close)
            if self.threads is not None:
                cleanup.callback(self.threads.restore)
            while self.step < last_step:
                threads = self.threads.current if self.threads else None
                loss, grad_norm, lr, seconds = self.train_step(batches)
                result.losses.append(loss)
                if self.threads and self.threads.current != threads:
                    self.log(f"CPU threads: {self.threads.current} from step {self.step} "
                             "(its steps ran faster; the machine's load changed)")
                estimate = pace.tick(seconds)
                if estimate:
                    self.log(estimate)
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if tb is not None and (self.step % tc.log_every == 0 or self.step == last_step):
                    tb.scalars({"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                                "train/samples_per_s": self.clips_per_step / seconds}, self.step)
                if tb is not None and tc.sample_every and self.step % tc.sample_every == 0:
                    self.write_samples(tb)
                if probe is not None and self.step % tc.eval_every == 0:
                    self.evaluate_reference(probe, tb)
                # The clock only matters on rank 0, the one that writes.
                overdue = tc.checkpoint_minutes > 0 and \
                    time.monotonic() - saved_at >= 60 * tc.checkpoint_minutes
                if self.step % tc.checkpoint_every == 0 or self.step == last_step or overdue:
                    last_saved, saved_at = (self.save() if main else None), time.monotonic()
                if self.step < last_step and self._any_rank(bool(stop)):
                    if main and (last_saved is None
                                 or last_saved.name != step_dir_name(self.step)):
                        last_saved = self.save()
                    raise interrupted(stop.name or "a signal to another process",
                                      stop.signum or signal.SIGTERM, self.step, last_saved)
        result.step, result.checkpoint = self.step, last_saved
        return result

    # ----------------------------------------------------------------------------- samples

    def train_step(self, batches: Iterator[Batch]) -> tuple[float, float, float, float]:
        """One optimizer step over `grad_accum` micro-batches: (loss, gradient norm, learning
        rate, seconds)."""
        start = time.perf_counter()
        lr = self._set_lr()
        loss = self._mean_loss([self._micro_step(next(batches), i)
                                for i in range(self.grad_accum)])
        if not math.isfinite(loss):
            raise diverged(self.out_dir, self.step + 1, loss, "loss")
        grad_norm = self._optimizer_step()
        self._synchronize()
        seconds = time.perf_counter() - start
        self.step += 1
        if self.threads is not None:
            self.threads.record(seconds)
        return loss, grad_norm, lr, seconds

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
        text = self.text_batch(*self.encoder.encode(prompts))
        shape = (len(prompts), d.num_frames, d.model_size, d.model_size,
                 self.config.model.out_channels)
        decode = self.vae.decode_video if d.vae else None
        videos = self._generate(text, sample, shape, decode)
        return np.stack([to_uint8(v) for v in videos])

    def evaluate_reference(self, probe: ValidationProbe, tb: TensorBoardLogger | None
                           ) -> dict[str, float]:
        """The real-sign metrics of EMA samples on the validation split (`train.eval_every`),
        logged as val/* at this step."""
        return probe.run(self.sample_clips, self.step, tb)
