"""`t2s-torch`: text2sign on PyTorch (CUDA, MPS or CPU).

Thin on purpose: the verbs parse their options and call library functions. The verbs shared
with `t2s-mlx` (config, data, eval, demo) and the flags of `train` and `sample` live in
`shared.cli`, so the two tools cannot drift apart.
"""

from __future__ import annotations

import sys

import click

from shared.cli import (
    build_sample_config,
    build_train_config,
    make_group,
    sample_options,
    train_options,
)
from shared.config import PRESETS, preset

main = make_group(
    "t2s-torch",
    "text2sign on PyTorch (CUDA, MPS or CPU): "
    "text in, a short sign-language video out.",
)


@main.command("train")
@train_options
def train_command(data_dir, preset_name, config_file, out_dir, steps, batch_size, lr, overrides,
                  device, resume, strict, quiet) -> None:
    """Train the 3D UNet on a folder of captioned clips.

    \b
    Examples:
      t2s-torch data toy data/toy --n 400
      t2s-torch train --data data/toy --preset tiny --out runs/tiny --steps 200
      t2s-torch train --out runs/tiny --steps 400 --resume

    Writes checkpoints (every train.checkpoint_every steps, the last train.keep_last kept, and
    `latest`), sample GIF grids of training captions, and TensorBoard logs
    (`tensorboard --logdir RUN/tb`). Ctrl-C saves a checkpoint first; --resume continues exactly.
    """
    from t2s_torch.train import Trainer

    config = build_train_config(preset_name, config_file, data_dir, out_dir, steps, batch_size,
                                lr, overrides, resume, strict)
    trainer = Trainer(config, device=device, progress=not quiet, log=click.echo)
    result = trainer.train(resume=resume)
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    click.echo(f"trained to step {result.step}{last}; checkpoint: {result.checkpoint}")


@main.command("sample")
@sample_options
def sample_command(checkpoint, out_dir, seed, num_samples, sampler, steps, eta, guidance, device,
                   no_ema, quiet, prompts) -> None:
    """Generate sign videos for PROMPTS with a trained checkpoint.

    \b
    Example:
      t2s-torch sample --checkpoint runs/tiny --num-samples 2 --eta 0 "hello" "thanks friend"

    Writes one GIF per sample (with a same-named .txt caption, so `eval` can score the folder)
    and grid.gif. Sampler settings default to those in the checkpoint's config. The same seed
    gives the same videos on any device, and on t2s-mlx.
    """
    from shared.checkpoint import load_checkpoint_config, resolve_checkpoint
    from t2s_torch.sample import sample_checkpoint

    base = load_checkpoint_config(resolve_checkpoint(checkpoint))
    sample = build_sample_config(base, seed, num_samples, sampler, steps, eta, guidance)
    paths = sample_checkpoint(checkpoint, list(prompts), out_dir, sample, device=device,
                              use_ema=not no_ema, progress=not quiet)
    click.echo(f"wrote {len(paths)} samples and grid.gif to {out_dir}")


@main.command("visualize")
@click.option("--preset", "preset_name", type=click.Choice(PRESETS), default="small",
              show_default=True)
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Describe a checkpoint's model instead of a preset.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE")
def visualize_command(preset_name, checkpoint, batch, overrides) -> None:
    """Per-block table of the UNet: parameters, output shapes, forward GFLOPs."""
    from shared.checkpoint import load_checkpoint_config, resolve_checkpoint
    from shared.config import apply_overrides
    from t2s_torch.visualize import format_table, summarize

    config = load_checkpoint_config(resolve_checkpoint(checkpoint)) if checkpoint else \
        preset(preset_name)
    config = apply_overrides(config, overrides).validate()
    rows, total = summarize(config, batch=batch)
    d = config.data
    click.echo(f"input {batch} x {config.model.in_channels} x {d.num_frames} x {d.image_size} x "
               f"{d.image_size}, text {config.text.max_length} tokens x "
               f"{config.model.context_dim}; conv_mode={config.model.conv_mode}")
    click.echo(format_table(rows, total))
    click.echo(f"training costs about 3x the forward: ~{3 * total / batch:.1f} GFLOPs per clip")


@main.command("doctor")
@click.option("--device", default=None, help="Device to check (default: the best available).")
def doctor_command(device) -> None:
    """Check the device, the libraries, the text encoder and one UNet step."""
    from t2s_torch.doctor import run_checks

    failed = 0
    for name, ok, detail in run_checks(device):
        click.echo(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}")
        failed += not ok
    if failed:
        click.echo(f"{failed} check(s) failed", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
