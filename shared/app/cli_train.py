"""`TOOL train` and `TOOL sample`: their options (spelled once, so the two tools cannot drift),
the configs they build from them, and the two verbs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from shared.app.cli_common import load_config, quiet_libraries
from shared.app.errors import TrainingInterrupted
from shared.config import PRESETS, Config, ConfigError, apply_overrides
from shared.diffusion.sampling import SAMPLERS
from shared.model.checkpoint import CheckpointError

# ------------------------------------------------------------------------- train / sample
# The options every backend's `train` and `sample` take, spelled once so the tools cannot drift.


def train_options(f):
    options = [
        click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
                     help="Folder of GIF/MP4 clips with same-named .txt captions.  "
                          "[default: the config's data.data_dir]"),
        click.option("--preset", "preset_name", type=click.Choice(PRESETS), default=None,
                     help="Model/data/training preset (default: small)."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="A config.json instead of a preset."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                     help="Run folder: checkpoints/, samples/, tb/.  [default: runs/train]"),
        click.option("--steps", type=click.IntRange(1), default=None,
                     help="Optimizer steps to train to (with --resume: the new end)."),
        click.option("--batch-size", default=None, metavar="N|auto",
                     help="Clips per forward pass; 'auto' finds the largest that fits and "
                          "accumulates gradients up to train.effective_batch."),
        click.option("--lr", type=float, default=None, help="Peak learning rate."),
        click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]),
                     default=None,
                     help="Compute in bf16/fp16 with float32 master weights (t2s-mlx: bf16 "
                          "only; fp16 uses a gradient scaler on CUDA).  [default: the config's "
                          "train.mixed_precision]"),
        click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
                     help="Override any config field (repeatable)."),
        click.option("--device", default=None,
                     help="Device to train on: t2s-torch auto|cpu|cuda[:N]|mps, t2s-mlx "
                          "auto|gpu|cpu (default: the best available)."),
        click.option("--resume", "resume", is_flag=False, flag_value="latest", default=None,
                     metavar="[CHECKPOINT]",
                     help="Continue the run in --out from its newest intact checkpoint (or the "
                          "one named: a step_N folder, checkpoints/latest): same step, "
                          "optimizer, EMA, data order and random state."),
        click.option("--strict", is_flag=True,
                     help="Stop at the first bad clip, or at a damaged newest checkpoint under "
                          "--resume, instead of skipping it with a warning."),
        click.option("--vae", default=None, metavar="PATH_OR_ID",
                     help="Latent mode: train on the latents of this diffusers AutoencoderKL "
                          "(a local folder, or a Hugging Face id such as "
                          "stabilityai/sd-vae-ft-mse, from the local cache when offline). Sets "
                          "diffusion.clip_sample=false."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def build_train_config(preset_name: str | None, config_file: str | None, data_dir: str | None,
                       out_dir: str | None, steps: int | None, batch_size: str | None,
                       lr: float | None, overrides: tuple[str, ...], resume: bool | str | None,
                       strict: bool, mixed_precision: str | None = None,
                       vae: str | None = None) -> Config:
    """The run's config: a preset or file (with --resume, the run's own config.json), then the
    dedicated flags, then --set overrides; validated."""
    run_config = Path(out_dir or "runs/train") / "config.json"
    if resume and not (preset_name or config_file):
        if not run_config.exists():
            raise CheckpointError(f"{run_config.parent}: nothing to resume (no config.json); "
                                  "drop --resume to start a new run, or pass the run's --out")
        config_file = str(run_config)
    flags = [f"data.data_dir={data_dir}"] if data_dir else []
    flags += [f"train.out_dir={out_dir}"] if out_dir else []
    flags += [f"train.steps={steps}"] if steps else []
    flags += [f"train.batch_size={batch_size}"] if batch_size else []
    flags += [f"train.lr={lr}"] if lr else []
    flags += ["data.strict=true"] if strict else []
    flags += [f"train.mixed_precision={mixed_precision}"] if mixed_precision else []
    # latents are not bounded to [-1, 1], so the sampler must not clip them
    flags += [f"data.vae={vae}", "diffusion.clip_sample=false"] if vae else []
    return load_config(preset_name, config_file, tuple(flags) + tuple(overrides))


def sample_options(f):
    options = [
        click.option("--checkpoint", required=True, type=click.Path(),
                     help="A training run's folder or its checkpoints/ folder (the newest "
                          "checkpoint), a step_N folder, or checkpoints/latest."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False),
                     default="runs/samples", show_default=True,
                     help="Where the GIFs (+ .txt captions) and grid.gif go."),
        click.option("--seed", type=int, default=None, help="Noise seed (default: the config's)."),
        click.option("--num-samples", type=click.IntRange(1), default=None,
                     help="Videos per prompt."),
        click.option("--sampler", type=click.Choice(SAMPLERS), default=None,
                     help="dpm++sde: DPM-Solver++ with fresh noise each step (cleaner frames)."),
        click.option("--steps", type=click.IntRange(1), default=None, help="Sampler steps."),
        click.option("--eta", type=click.FloatRange(0, 1), default=None,
                     help="DDIM noise: 0 deterministic ... 1 ancestral."),
        click.option("--guidance", type=float, default=None,
                     help="Classifier-free guidance scale (1 = none)."),
        click.option("--device", default=None, help="Device (default: the best available)."),
        click.option("--no-ema", is_flag=True, help="Use the raw weights, not the EMA ones."),
        click.option("--vae", default=None, metavar="PATH_OR_ID",
                     help="Latent mode: decode with this VAE (a folder, or an id in the local "
                          "cache) instead of the one the checkpoint names, e.g. after moving "
                          "it; its weights must be the ones the model was trained with."),
        click.option("--set", "overrides", multiple=True, metavar="sample.FIELD=VALUE",
                     help="Override a sampling field of the checkpoint's config, e.g. --set "
                          "sample.timestep_spacing=trailing (repeatable)."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.argument("prompts", nargs=-1, required=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def build_sample_config(base: Config, seed: int | None, num_samples: int | None,
                        sampler: str | None, steps: int | None, eta: float | None,
                        guidance: float | None, overrides: tuple[str, ...] = ()):
    """The checkpoint's sampling settings with `--set sample.FIELD=VALUE` and then the
    dedicated flags on top; validated. Only the `sample` section: the model, its diffusion
    schedule and text encoder are the checkpoint's and cannot change at sampling time."""
    for override in overrides:
        if not override.startswith("sample."):
            raise ConfigError(f"--set {override}: sample changes only sampling fields "
                              "(sample.FIELD=VALUE, e.g. sample.timestep_spacing=trailing); "
                              "the model's other settings are the checkpoint's")
    flags = {"seed": seed, "num_samples": num_samples, "sampler": sampler, "steps": steps,
             "eta": eta, "guidance": guidance}
    dedicated = [f"sample.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    return apply_overrides(base, [*overrides, *dedicated]).validate().sample


@click.command("train")
@train_options
@click.pass_context
def train_command(ctx, data_dir, preset_name, config_file, out_dir, steps, batch_size, lr,
                  mixed_precision, overrides, device, resume, strict, vae, quiet) -> None:
    """Train the 3D UNet on a folder of captioned clips.

    \b
    Examples:
      TOOL data toy data/toy --n 400
      TOOL train --data data/toy --preset tiny --out runs/tiny --steps 200
      TOOL train --out runs/tiny --steps 400 --resume

    Writes checkpoints (every train.checkpoint_every steps, the last train.keep_last kept, and
    `latest`), sample GIF grids of training captions, and TensorBoard logs
    (`tensorboard --logdir RUN/tb`). Ctrl-C, SIGTERM or SIGUSR1 (what schedulers send before a
    kill) finish the current step, save a checkpoint of it and exit with 128 + the signal's
    number; --resume continues exactly, from the newest intact checkpoint.
    """
    quiet_libraries(quiet)
    config = build_train_config(preset_name, config_file, data_dir, out_dir, steps, batch_size,
                                lr, overrides, resume, strict, mixed_precision, vae)
    trainer = ctx.obj.trainer(config, device=device, progress=not quiet, log=click.echo)
    try:
        result = trainer.train(resume=resume or False)
    except TrainingInterrupted as e:
        if trainer.world.is_main:
            click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    # trainer.log: silent on the data-parallel ranks other than 0
    trainer.log(f"trained to step {result.step}{last}; checkpoint: {result.checkpoint}")


@click.command("sample")
@sample_options
@click.pass_context
def sample_command(ctx, checkpoint, out_dir, seed, num_samples, sampler, steps, eta, guidance,
                   device, no_ema, vae, overrides, quiet, prompts) -> None:
    """Generate sign videos for PROMPTS with a trained checkpoint.

    \b
    Example:
      TOOL sample --checkpoint runs/tiny --num-samples 2 --eta 0 "hello" "thanks friend"

    Writes one GIF per sample (with a same-named .txt caption, so `eval` can score the folder),
    grid.gif, and index.html: a page showing every clip enlarged with its caption, seed and
    sampler settings (open it in a browser; `eval` adds the scores). Sampler settings default
    to those in the checkpoint's config. The same seed gives the same videos on any device and
    on either backend (t2s-torch, t2s-mlx).
    """
    from shared.app.report_html import sample_settings, write_results_page
    from shared.model.checkpoint import load_checkpoint_config, resolve_checkpoint

    quiet_libraries(quiet)
    base = load_checkpoint_config(resolve_checkpoint(checkpoint))
    sample = build_sample_config(base, seed, num_samples, sampler, steps, eta, guidance,
                                 overrides)
    paths = ctx.obj.sample_checkpoint(
        checkpoint, list(prompts), out_dir, sample, device=device, use_ema=not no_ema,
        progress=not quiet, vae=vae)
    page = write_results_page(out_dir, settings=sample_settings(sample, checkpoint, not no_ema),
                              clips=paths)
    click.echo(f"wrote {len(paths)} samples and grid.gif to {out_dir}; look at them: {page}")
