"""Tune-A-Video fine-tuning of Stable Diffusion 2.x on sign clips: `t2s-torch finetune-tav`.

The run directory (`--output_dir`)::

    config.json, tav_unet.safetensors   the fine-tuned model (see tav.checkpoint), at the end
    checkpoints/step_N/                 the same + optimizer.safetensors, trainer_state.json
    logs/                               TensorBoard events (--logging_dir), samples/step_N.gif

One step: frames -> VAE latents (a posterior draw, times the VAE's scaling factor); captions ->
CLIP token states, replaced by "" with p = --caption_dropout for classifier-free guidance; noise
at a uniform timestep through the base model's DDPM schedule; MSE against epsilon or v, as the
scheduler config says (SD 2.1-768 is v-prediction, 2.1-base epsilon); AdamW on the trainable
modules only. accelerate handles mixed precision, gradient accumulation and multi-GPU; frozen
weights are cast to the mixed-precision dtype, trainable ones stay fp32 (as diffusers' training
scripts do), and the forward runs under autocast.

Everything random in a step (VAE draw, caption dropout, timesteps, noise) comes from the
trainer's generator, re-seeded at every optimizer step from (seed, rank, step), and the data
order from (seed, epoch). Neither depends on anything but the step number, so resuming continues
the very same run, on one process or several (with the same number of processes).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from shared.app.errors import TrainingDiverged, interrupted
from shared.app.signals import stop_signals
from shared.app.tensorboard import TensorBoardLogger
from shared.config import ConfigError
from shared.data.dataset import Batch, BatchIterator
from shared.data.video import write_grid
from shared.io_atomic import write_text_atomic
from shared.model.checkpoint import (
    CONFIG_FILE,
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    CheckpointError,
    abort_checkpoint,
    begin_checkpoint,
    commit_checkpoint,
    list_checkpoints,
    load_json,
    save_json,
    step_dir_name,
)
from shared.model.resume import resume_checkpoint, verify_checkpoint
from t2s_torch.checkpoint import (
    LAYOUT,
    decode_bytes,
    encode_bytes,
    load_optimizer_tensors,
    load_tensors,
    optimizer_tensors,
    save_tensors,
)
from t2s_torch.device import describe_device, select_device
from t2s_torch.tav.checkpoint import (
    WEIGHTS_FILE,
    TAVModelConfig,
    load_weights_into,
    tensor_specs,
    unet_tensors,
    write_model,
)
from t2s_torch.tav.config import TAVConfig
from t2s_torch.tav.data import center_crop, load_dataset
from t2s_torch.tav.inflate import InflatedUNet, set_trainable
from t2s_torch.tav.models import cast_frozen, load_base_model
from t2s_torch.tav.pipeline import TAVPipeline

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PREDICTION_TYPES = ("epsilon", "v_prediction")


def step_seed(seed: int, rank: int, step: int) -> int:
    """The generator's seed for one optimizer step of one process: a function of the step alone,
    so a resumed run draws what the uninterrupted one would, whatever the number of processes
    (a saved generator state would be rank 0's only)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class TAVResult:
    step: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step of this call
    model_dir: Path | None = None  # the final model (output_dir), once training is complete
    checkpoint: Path | None = None  # the last checkpoint written by this call
    is_main: bool = True  # rank 0 (the one process that reports and writes)


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict: the noise, or v = sqrt(a) * noise - sqrt(1 - a) * x0."""
    kind = check_prediction_type(scheduler)
    return noise if kind == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)


def check_prediction_type(scheduler) -> str:
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ConfigError(f"the base model's scheduler predicts {kind!r}; Tune-A-Video training "
                          f"supports {' and '.join(PREDICTION_TYPES)}")
    return kind


class TAVTrainer:
    """Fine-tune an inflated Stable Diffusion UNet on a folder of captioned sign clips."""

    def __init__(self, config: TAVConfig, progress: bool = True,
                 log: Callable[[str], None] = print, device: str | None = None):
        """`device`: None or "auto" for accelerate's choice (the GPU where there is one), "cpu"
        to keep a GPU box's run on the CPU (the tests' default), or a GPU to insist on one."""
        from accelerate import Accelerator

        self.config = config.validate()
        self.progress = progress
        self.out_dir = Path(config.output_dir)
        self.logging_dir = Path(config.logs)
        # cpu=True where there is no accelerator, so that several launched CPU processes
        # (torchrun, accelerate launch) form a gloo group instead of each training alone.
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision,
                                       gradient_accumulation_steps=
                                       config.gradient_accumulation_steps,
                                       cpu=select_device(device).type == "cpu")
        acc = self.accelerator
        self.log = log if acc.is_main_process else (lambda _: None)
        self.device = acc.device
        self.weight_dtype = WEIGHT_DTYPES[config.mixed_precision]

        base = load_base_model(config.pretrained_model_name_or_path)
        self.noise_scheduler = base.noise_scheduler
        self.prediction_type = check_prediction_type(base.noise_scheduler)
        torch.manual_seed(config.seed)  # the new attn_temp layers' initialisation
        self.unet = InflatedUNet(base.unet)
        self.trainable = set_trainable(self.unet.unet, config.trainable_modules)
        if config.gradient_checkpointing:
            self.unet.unet.enable_gradient_checkpointing()
        for frozen in (base.vae, base.text_encoder):
            frozen.requires_grad_(False).eval()
        for part in (base.vae, base.text_encoder, self.unet):
            cast_frozen(part.to(self.device), self.weight_dtype)
        self.unet.train()
        self.pipeline = TAVPipeline(self.unet, base.vae, base.text_encoder, base.tokenizer,
                                    base.scheduler_config)
        multiple = self.pipeline.latent_multiple
        if config.height % multiple or config.width % multiple:
            raise ConfigError(f"--height and --width must be multiples of {multiple} for this "
                              f"model, not {config.height} x {config.width}")

        self.dataset = load_dataset(config.data_root, config.num_frames, config.height,
                                    config.width, config.seed, config.strict,
                                    progress=progress and acc.is_local_main_process)
        captions = sorted(set(self.dataset.captions))
        self.caption_row = {c: i for i, c in enumerate(captions)}
        self.text_table = self.pipeline.encode_text(captions)  # captions are few: encode once
        self.empty_text = self.pipeline.encode_text([""])[0]
        self.validation_prompts = list(config.validation_prompts) or captions[:4]

        params = [p for p in self.unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                      betas=(config.adam_beta1, config.adam_beta2),
                                      weight_decay=config.adam_weight_decay,
                                      eps=config.adam_epsilon)
        self.model, self.optimizer = acc.prepare(self.unet, optimizer)
        self.generator = torch.Generator(self.device)
        self.step = 0

    # ----------------------------------------------------------------------------- state

    def model_config(self) -> TAVModelConfig:
        c = self.config
        return TAVModelConfig(
            pretrained_model_name_or_path=c.pretrained_model_name_or_path,
            num_frames=c.num_frames, height=c.height, width=c.width,
            trainable_modules=list(c.trainable_modules), prediction_type=self.prediction_type,
            weights="full" if c.save_full else "trainable", step=self.step,
            training=c.to_dict())

    def _param_names(self) -> dict[torch.nn.Parameter, str]:
        return {p: n for n, p in self.unet.unet.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> Path:
        """checkpoints/step_N: trainable weights, optimizer moments, RNG and step (rank 0)."""
        tmp = begin_checkpoint(self.out_dir / "checkpoints", self.step)
        try:
            model_config = self.model_config()
            model_config.weights = "trainable"
            write_text_atomic(tmp / CONFIG_FILE, model_config.to_json())
            save_tensors(tmp / WEIGHTS_FILE, unet_tensors(self.unet.unet), "tav_unet")
            save_tensors(tmp / OPTIMIZER_FILE,
                         optimizer_tensors(self.optimizer.optimizer, self._param_names()),
                         "optimizer")
            state = {"step": self.step, "torch_rng": encode_bytes(torch.get_rng_state())}
            save_json(tmp / TRAINER_STATE_FILE, state)
        except BaseException:
            abort_checkpoint(tmp)
            raise
        return commit_checkpoint(tmp, self.step, self.config.checkpoints_total_limit)

    def _resolve_resume(self, which: str) -> Path:
        """`latest`: the newest intact checkpoint (a damaged newest one is skipped with a
        warning, or refused with --strict); else a path in any form `find_model` accepts, or a
        step folder's name, which must be one of this run's checkpoints and intact."""
        checkpoints = self.out_dir / "checkpoints"
        if which != "latest" and not Path(which).exists() and (checkpoints / which).exists():
            which = str(checkpoints / which)
        return resume_checkpoint(self.out_dir, which, self.check_checkpoint,
                                 strict=self.config.strict, warn=self.log,
                                 flag="--resume_from_checkpoint", weights=WEIGHTS_FILE)

    def check_checkpoint(self, checkpoint: Path) -> None:
        """Everything a resume reads from `checkpoint`, checked before any of it is loaded."""
        saved = TAVModelConfig.load(checkpoint / CONFIG_FILE)
        if sorted(saved.trainable_modules) != sorted(self.config.trainable_modules):
            raise CheckpointError(f"{checkpoint}: trained {saved.trainable_modules}, but this "
                                  f"run trains {list(self.config.trainable_modules)}; resume "
                                  "with the same --trainable_modules")
        verify_checkpoint(checkpoint, {WEIGHTS_FILE: tensor_specs(self.unet.unet),
                                       OPTIMIZER_FILE: None}, LAYOUT)

    def load_checkpoint(self, checkpoint: Path) -> None:
        saved = TAVModelConfig.load(checkpoint / CONFIG_FILE)
        if sorted(saved.trainable_modules) != sorted(self.config.trainable_modules):
            raise CheckpointError(f"{checkpoint}: trained {saved.trainable_modules}, but this "
                                  f"run trains {list(self.config.trainable_modules)}; resume "
                                  "with the same --trainable_modules")
        tensors = load_tensors(checkpoint / WEIGHTS_FILE)
        if set(tensors) != set(self.trainable):
            raise CheckpointError(f"{checkpoint}: its weights are not this run's trainable "
                                  "modules; was it written from another base model?")
        load_weights_into(self.unet.unet, checkpoint / WEIGHTS_FILE)
        load_optimizer_tensors(self.optimizer.optimizer,
                               load_tensors(checkpoint / OPTIMIZER_FILE), self._param_names())
        state = load_json(checkpoint / TRAINER_STATE_FILE)
        self.step = int(state["step"])
        if self.accelerator.process_index == 0:  # torch's own stream (dropout), not the step's
            torch.set_rng_state(decode_bytes(state["torch_rng"]))

    # ----------------------------------------------------------------------------- steps

    def _batches(self) -> Iterator[Batch]:
        acc = self.accelerator
        return iter(BatchIterator(
            self.dataset, self.config.train_batch_size, shuffle=True, seed=self.config.seed,
            rank=acc.process_index, world_size=acc.num_processes,
            start_batch=self.step * self.config.gradient_accumulation_steps))

    def _text(self, captions: list[str], generator: torch.Generator,
              caption_dropout: float) -> torch.Tensor:
        rows = torch.tensor([self.caption_row[c] for c in captions], device=self.device)
        text = self.text_table[rows]
        drop = torch.rand(len(captions), generator=generator, device=self.device)
        keep = (drop >= caption_dropout)[:, None, None]
        return torch.where(keep, text, self.empty_text.expand_as(text))

    def loss(self, video: np.ndarray, captions: list[str], generator: torch.Generator,
             caption_dropout: float = 0.0) -> torch.Tensor:
        """The training loss of uint8 clips (B, F, H, W, 3) with their (training) captions, its
        randomness (latent draw, caption dropout, timesteps, noise) drawn from `generator`."""
        latents = self.pipeline.encode_video(video, generator, sample=True)
        text = self._text(captions, generator, caption_dropout)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(latents),),
                          generator=generator, device=self.device)
        noise = torch.randn(latents.shape, generator=generator, device=self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        target = training_target(self.noise_scheduler, latents, noise, t)
        pred = self.model(noisy.to(self.weight_dtype), t, text)
        return F.mse_loss(pred.float(), target.float())

    def _loss(self, batch: Batch) -> torch.Tensor:
        c = self.config
        return self.loss(center_crop(batch.video, c.height, c.width), batch.captions,
                         self.generator, c.caption_dropout)

    def _optimizer_step(self, batches: Iterator[Batch]) -> float:
        """One optimizer step over --gradient_accumulation_steps micro-batches; the mean loss."""
        acc, losses = self.accelerator, []
        self.generator.manual_seed(step_seed(self.config.seed, acc.process_index, self.step))
        for _ in range(self.config.gradient_accumulation_steps):
            with acc.accumulate(self.model):
                loss = self._loss(next(batches))
                acc.backward(loss)
                if acc.sync_gradients and self.config.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        return float(acc.reduce(torch.stack(losses).mean(), "mean"))

    # ----------------------------------------------------------------------------- training

    def train(self, until: int | None = None) -> TAVResult:
        """Train to --max_train_steps (from a checkpoint with --resume_from_checkpoint); `until`
        stops early with a checkpoint, as an interrupted run would."""
        c, acc = self.config, self.accelerator
        last_step = min(c.max_train_steps, until) if until else c.max_train_steps
        if c.resume_from_checkpoint:
            checkpoint = self._resolve_resume(c.resume_from_checkpoint)
            self.load_checkpoint(checkpoint)
            self.log(f"resumed from {checkpoint} at step {self.step}")
        elif list_checkpoints(self.out_dir / "checkpoints"):
            raise CheckpointError(f"{self.out_dir} already holds a run; continue it with "
                                  "--resume_from_checkpoint latest, or use another --output_dir")
        main = acc.is_main_process
        self.log(f"fine-tuning {len(self.trainable)} tensors "
                 f"({sum(p.numel() for p in self.optimizer.optimizer.param_groups[0]['params'])}"
                 f" weights) of {c.pretrained_model_name_or_path} on {len(self.dataset)} clips, "
                 f"{acc.device}, mixed precision {c.mixed_precision}")
        result = TAVResult(self.step, is_main=acc.is_main_process)
        tb = TensorBoardLogger(self.logging_dir, enabled=main)
        if self.step == 0:
            tb.log_config(c.to_dict())
            tb.text("device", "\n".join(f"- {k}: {v}" for k, v in
                                        describe_device(self.device).items()))
        batches = self._batches()
        bar = tqdm(total=c.max_train_steps, initial=self.step, desc="finetune-tav", unit="step",
                   disable=not (self.progress and acc.is_local_main_process))
        self.model.train()
        with stop_signals(self.log) as stop, contextlib.ExitStack() as cleanup:
            cleanup.callback(bar.close)
            cleanup.callback(tb.close)
            while self.step < last_step:
                start = time.perf_counter()
                loss = self._optimizer_step(batches)
                if not math.isfinite(loss):
                    raise self._diverged(loss)
                self.step += 1
                result.losses.append(loss)
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}")
                tb.scalars({"train/loss": loss, "train/lr": c.learning_rate,
                            "train/seconds_per_step": time.perf_counter() - start}, self.step)
                finished = self.step == last_step
                if c.validation_steps and (self.step % c.validation_steps == 0 or
                                           self.step == c.max_train_steps):
                    self.validate(tb)
                if main and ((c.checkpointing_steps and self.step % c.checkpointing_steps == 0)
                             or (finished and self.step < c.max_train_steps)):
                    result.checkpoint = self.save_checkpoint()
                if self.step < last_step and self._any_rank(bool(stop)):
                    if main and (result.checkpoint is None
                                 or result.checkpoint.name != step_dir_name(self.step)):
                        result.checkpoint = self.save_checkpoint()
                    raise interrupted(stop.name or "a signal to another process",
                                      stop.signum or signal.SIGTERM, self.step, result.checkpoint,
                                      "--resume_from_checkpoint latest")
        result.step = self.step
        if self.step >= c.max_train_steps:
            if main:
                result.model_dir = write_model(self.out_dir, self.unet.unet, self.model_config())
            acc.wait_for_everyone()
        return result

    def _any_rank(self, flag: bool) -> bool:
        """Whether a stop signal reached any process, so that all stop at the same step."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return flag
        return bool(acc.reduce(torch.tensor([float(flag)], device=self.device), "sum").item() > 0)

    def _diverged(self, value: float) -> TrainingDiverged:
        found = list_checkpoints(self.out_dir / "checkpoints")
        where = (f"the last good checkpoint is {found[-1][1]} (continue from it with "
                 "--resume_from_checkpoint latest)") if found else \
            "no checkpoint was written before it"
        return TrainingDiverged(f"the loss became {value} at step {self.step + 1}; {where}. "
                                "Lower --learning_rate, or use --mixed_precision bf16 or no "
                                "instead of fp16")

    @torch.no_grad()
    def validate(self, tb: TensorBoardLogger) -> Path | None:
        """DDIM samples of the validation prompts: <logging_dir>/samples/step_N.gif and
        TensorBoard. The same seed every time, so steps can be compared."""
        if not self.accelerator.is_main_process:
            return None
        c = self.config
        self.model.eval()
        try:
            with self.accelerator.autocast():
                videos = self.pipeline.generate(
                    self.validation_prompts, c.num_frames, c.height, c.width,
                    steps=c.validation_num_inference_steps, guidance=c.validation_guidance_scale,
                    seed=c.seed)
        finally:
            self.model.train()
        path = write_grid(self.logging_dir / "samples" / f"step_{self.step:07d}.gif",
                          list(videos), self.validation_prompts)
        tb.video("validation/samples", np.asarray(videos), self.step)
        return path


def main(argv: list[str] | None = None) -> None:
    """`python -m t2s_torch.tav.train`: the same options as `t2s-torch finetune-tav`."""
    from t2s_torch.tav.cli import finetune_tav_command

    finetune_tav_command.main(args=argv, prog_name="python -m t2s_torch.tav.train")


if __name__ == "__main__":
    main()
