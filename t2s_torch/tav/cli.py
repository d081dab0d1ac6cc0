"""`t2s-torch finetune-tav` and `t2s-torch sample-tav` (also `python -m t2s_torch.tav.train`).

Option names are upstream Tune-A-Video's argument names (underscores), so its recipes carry
over. The commands only parse: `finetune-tav` fills a `TAVConfig` and hands it to `TAVTrainer`;
torch and diffusers are imported when a command runs, so `--help` stays fast.
"""

from __future__ import annotations

import sys

import click

from shared.app.cli_common import user_errors
from shared.app.errors import TrainingInterrupted
from t2s_torch.tav.config import MIXED_PRECISION, TAVConfig

_DEFAULTS = TAVConfig()


class TAVCommand(click.Command):
    """A command whose user errors end in one line also when run on its own (python -m)."""

    def invoke(self, ctx: click.Context):
        with user_errors():
            return super().invoke(ctx)


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeatable options that also take comma-separated lists."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


@click.command("finetune-tav", cls=TAVCommand)
@click.option("--pretrained_model_name_or_path", default=_DEFAULTS.pretrained_model_name_or_path,
              show_default=True, help="Stable Diffusion 2.x: a Hub name or a local diffusers "
                                      "folder (unet/, vae/, text_encoder/, tokenizer/, "
                                      "scheduler/).")
@click.option("--data_root", default=_DEFAULTS.data_root, show_default=True,
              type=click.Path(file_okay=False),
              help="Folder of GIF/MP4 clips with same-named .txt captions.")
@click.option("--output_dir", default=_DEFAULTS.output_dir, show_default=True,
              type=click.Path(file_okay=False),
              help="Run folder: the fine-tuned model and checkpoints/.")
@click.option("--logging_dir", default=None, type=click.Path(file_okay=False),
              help="TensorBoard events and samples/ (default: OUTPUT_DIR/logs).")
@click.option("--train_batch_size", type=click.IntRange(1),
              default=_DEFAULTS.train_batch_size, show_default=True, help="Clips per GPU step.")
@click.option("--num_frames", type=click.IntRange(1), default=_DEFAULTS.num_frames,
              show_default=True)
@click.option("--width", type=click.IntRange(8), default=_DEFAULTS.width, show_default=True)
@click.option("--height", type=click.IntRange(8), default=_DEFAULTS.height, show_default=True)
@click.option("--learning_rate", type=float, default=_DEFAULTS.learning_rate, show_default=True)
@click.option("--max_train_steps", type=click.IntRange(1), default=_DEFAULTS.max_train_steps,
              show_default=True)
@click.option("--validation_steps", type=click.IntRange(0), default=_DEFAULTS.validation_steps,
              show_default=True, help="Sample the validation prompts every N steps (0: never).")
@click.option("--validation_prompts", multiple=True,
              help="A prompt to validate on (repeatable; default: up to 4 training captions).")
@click.option("--validation_num_inference_steps", type=click.IntRange(1),
              default=_DEFAULTS.validation_num_inference_steps, show_default=True)
@click.option("--validation_guidance_scale", type=float,
              default=_DEFAULTS.validation_guidance_scale, show_default=True)
@click.option("--gradient_accumulation_steps", type=click.IntRange(1),
              default=_DEFAULTS.gradient_accumulation_steps, show_default=True)
@click.option("--mixed_precision", type=click.Choice(MIXED_PRECISION),
              default=_DEFAULTS.mixed_precision, show_default=True,
              help="bf16 on Ampere+ GPUs; frozen weights in it, trained ones stay fp32.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True)
@click.option("--resume_from_checkpoint", default=None, metavar="latest|PATH",
              help="Continue this run from its latest checkpoint or a checkpoints/step_N.")
@click.option("--trainable_modules", multiple=True, metavar="NAME",
              help="Module-name endings to train (repeatable or comma-separated).  "
                   f"[default: {' '.join(_DEFAULTS.trainable_modules)}]")
@click.option("--checkpointing_steps", type=click.IntRange(0),
              default=_DEFAULTS.checkpointing_steps, show_default=True,
              help="Checkpoint every N steps (0: only when stopped early).")
@click.option("--checkpoints_total_limit", type=click.IntRange(1),
              default=_DEFAULTS.checkpoints_total_limit, show_default=True)
@click.option("--gradient_checkpointing", is_flag=True,
              help="Recompute activations in the backward pass: much less memory, ~30% slower.")
@click.option("--save_full", is_flag=True,
              help="Save the whole inflated UNet, not only the trained weights.")
@click.option("--caption_dropout", type=click.FloatRange(0, 1, max_open=True),
              default=_DEFAULTS.caption_dropout, show_default=True,
              help="Probability of training on the empty caption (for guidance).")
@click.option("--adam_weight_decay", type=float, default=_DEFAULTS.adam_weight_decay,
              show_default=True)
@click.option("--max_grad_norm", type=float, default=_DEFAULTS.max_grad_norm, show_default=True)
@click.option("--strict", is_flag=True, help="Stop at the first bad clip instead of skipping it.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def finetune_tav_command(quiet: bool, validation_prompts: tuple[str, ...],
                         trainable_modules: tuple[str, ...], **options) -> None:
    """Tune-A-Video: inflate Stable Diffusion 2.x to video and fine-tune it on sign clips.

    \b
    Examples:
      t2s-torch data toy data/toy --n 200
      t2s-torch finetune-tav --data_root data/toy --output_dir runs/tav \\
          --mixed_precision bf16 --gradient_checkpointing
      t2s-torch finetune-tav --output_dir runs/tav --resume_from_checkpoint latest
      t2s-torch sample-tav --model runs/tav "hello friend"

    Self-attention becomes sparse-causal (frame i attends to frames 0 and i-1), a zero-initialised
    temporal attention follows every transformer block, and only the attention queries and the
    temporal layers train. Writes the trained weights + config.json to OUTPUT_DIR, checkpoints,
    validation GIFs under LOGGING_DIR/samples and TensorBoard logs in LOGGING_DIR. Ctrl-C,
    SIGTERM or SIGUSR1 finish the current step, save a checkpoint of it and exit with 128 + the
    signal's number; --resume_from_checkpoint latest continues from the newest intact one.
    """
    from t2s_torch.tav.train import TAVTrainer

    config = TAVConfig(
        validation_prompts=tuple(validation_prompts),
        trainable_modules=_split(trainable_modules) or _DEFAULTS.trainable_modules,
        **options).validate()
    trainer = TAVTrainer(config, progress=not quiet, log=click.echo)
    try:
        result = trainer.train()
    except TrainingInterrupted as e:  # SIGTERM / SIGUSR1 / Ctrl-C: saved, then 128 + signal
        if trainer.accelerator.is_main_process:
            click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    if result.is_main:
        last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
        click.echo(f"trained to step {result.step}{last}; model: {result.model_dir}")


@click.command("sample-tav", cls=TAVCommand)
@click.option("--model", "model_dir", required=True, type=click.Path(),
              help="A finetune-tav --output_dir, its checkpoints/ folder, a step_N folder "
                   "or checkpoints/latest.")
@click.option("--pretrained_model_name_or_path", default=None,
              help="The base model, if not where the model's config.json says (e.g. a local "
                   "copy on this machine).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/tav_samples",
              show_default=True, help="Where the GIFs (+ .txt captions) and grid.gif go.")
@click.option("--steps", type=click.IntRange(1), default=50, show_default=True,
              help="DDIM steps.")
@click.option("--guidance", type=float, default=7.5, show_default=True,
              help="Classifier-free guidance scale (1 = none).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eta", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="DDIM noise: 0 deterministic ... 1 ancestral.")
@click.option("--num_frames", type=click.IntRange(1), default=None,
              help="Frames per video (default: as trained).")
@click.option("--height", type=click.IntRange(8), default=None, help="(default: as trained)")
@click.option("--width", type=click.IntRange(8), default=None, help="(default: as trained)")
@click.option("--num_samples", type=click.IntRange(1), default=1, show_default=True,
              help="Videos per prompt (seeds SEED, SEED+1, ...; with --invert they differ "
                   "only if --eta > 0).")
@click.option("--invert", "invert_clip", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Start from the DDIM inversion of this clip (GIF/MP4): its "
                                 "motion, the prompt's content.")
@click.option("--device", default=None, help="auto|cpu|cuda[:N]|mps (default: the best).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
              show_default=True, help="Weights' dtype (fp16/bf16 on a GPU).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.argument("prompts", nargs=-1, required=True)
def sample_tav_command(model_dir, pretrained_model_name_or_path, out_dir, steps, guidance, seed,
                       eta, num_frames, height, width, num_samples, invert_clip, device,
                       precision, quiet, prompts) -> None:
    """Generate sign videos for PROMPTS with a finetune-tav model.

    \b
    Examples:
      t2s-torch sample-tav --model runs/tav --guidance 7.5 "hello friend"
      t2s-torch sample-tav --model runs/tav --invert data/toy/toy_00001.gif "thank you"
    """
    from t2s_torch.tav.sample import SampleSettings, load_finetuned, sample_to_folder

    pipeline, config = load_finetuned(model_dir, pretrained_model_name_or_path, device,
                                      precision)
    settings = SampleSettings(num_frames=num_frames, height=height, width=width, steps=steps,
                              guidance=guidance, seed=seed, eta=eta, num_samples=num_samples,
                              invert=invert_clip)
    paths = sample_to_folder(pipeline, config, list(prompts), out_dir, settings,
                             progress=not quiet)
    click.echo(f"wrote {len(paths)} samples and grid.gif to {out_dir}")
