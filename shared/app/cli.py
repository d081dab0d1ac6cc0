"""The verbs both command-line tools share (`t2s-torch` and `t2s-mlx`).

Each backend's `cli.py` builds its click group with `make_group`, handing it the backend's
`shared.app.backend.Backend` object, and adds its own verbs; the commands here need no framework
(train, sample, doctor, ... call the object's members), so they behave identically on both
sides. Commands only parse and print: the work is done by library functions that tests call
directly.

This module holds the group and the small verbs (config, demo, visualize, doctor); the others
live by job in `shared.app.cli_data` (the `data` group), `shared.app.cli_eval` (eval),
`shared.app.cli_train` (train, sample) and `shared.app.cli_serve` (serve), and what they all lean
on in `shared.app.cli_common`.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import click

from shared.app.backend import Backend
from shared.app.cli_common import load_config, quiet_libraries, user_errors
from shared.app.cli_data import data_group
from shared.app.cli_eval import eval_command
from shared.app.cli_serve import serve_command
from shared.app.cli_train import sample_command, train_command
from shared.config import PRESETS, apply_overrides, preset

__all__ = ["T2SGroup", "make_group", "user_errors"]


class T2SGroup(click.Group):
    """A click group whose commands report user-facing errors in one line."""

    def invoke(self, ctx: click.Context):
        with user_errors():
            return super().invoke(ctx)


def make_group(name: str, help_text: str, backend: Backend) -> T2SGroup:
    """The tool's click group: the shared verbs plus train / sample / doctor, which run
    `backend` (the verbs' `ctx.obj`; its framework is imported only when a verb needs it)."""

    @click.group(name=name, cls=T2SGroup, help=help_text,
                 context_settings={"help_option_names": ["-h", "--help"],
                                   "max_content_width": 100, "obj": backend})
    @click.version_option(package_name="text2sign")
    def group() -> None:
        pass

    for command in (config_command, data_group, eval_command, demo_command, train_command,
                    sample_command, serve_command, visualize_command, doctor_command):
        named = copy.copy(command)  # the examples in a verb's help name this tool
        named.help = (command.help or "").replace("TOOL", name)
        group.add_command(named)
    return group


# ------------------------------------------------------------------------------------ config


@click.command("config")
@click.option("--preset", "preset_name", type=click.Choice(PRESETS), default=None,
              help="Start from a preset (default: small).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Start from a config.json (e.g. a checkpoint's).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override a field, e.g. --set train.lr=3e-4 --set model.channel_mult=1,2,4.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the config here instead of printing it.")
def config_command(preset_name, config_file, overrides, out) -> None:
    """Print (or write) a validated configuration.

    Sections: model, diffusion, text, data, train, sample. Any field can be set from the command
    line with --set; the result is checked before it is printed, so a bad combination (say an
    image size the UNet cannot halve) is reported here rather than an hour into training.
    """
    config = load_config(preset_name, config_file, overrides)
    if out:
        config.save(out)
        click.echo(f"wrote {out}")
    else:
        click.echo(json.dumps(config.to_dict(), indent=2))


# ------------------------------------------------------------------------------------ demo


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where everything goes.  [default: runs/demo, with --data runs/demo-real]")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A folder of your own captioned clips (GIF/MP4 + same-named .txt): train the "
                   "`real` preset on them and score samples of their captions against them, "
                   "instead of the toy signer.")
@click.option("--preset", "preset_name", type=click.Choice(["toy", "toy-long", "real"]),
              default=None, help="toy (default): ~10 minutes of training on a 2-core CPU; "
                                 "toy-long: under an hour, for a better model; real (default "
                                 "with --data): real clips at 8 x 32 x 32, under 45 minutes.")
@click.option("--n", "n", type=click.IntRange(1), default=400, show_default=True,
              help="Toy clips to make (1-2 word training sentences, a new signer each).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Toy set seed: its signers and which sentences are held out.")
@click.option("--samples", "samples_per_sentence", type=click.IntRange(1), default=None,
              help="Samples per sentence: 5 of each of a toy set's 20; with --data, 1 of each "
                   "caption.")
@click.option("--captions", type=click.IntRange(0), default=0, show_default=True,
              help="With --data: sample a fixed random subset of this many captions (0 = all).")
@click.option("--no-pose", is_flag=True,
              help="With --data: skip the keypoint metrics (they need the `pose` extra).")
@click.option("--device", default=None, help="Device (default: the best available).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Change the preset, e.g. --set train.steps=300.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def demo_command(ctx, out, data_dir, preset_name, n, seed, samples_per_sentence, captions,
                 no_pose, device, overrides, quiet) -> None:
    """The README's main job: train on the toy-signer set, sample, score.

    Makes 400 toy clips of 1-2 word sentences (once), holding out 20 two-word sentences
    (new word pairs and new orders) and 20 three-word ones; trains the `toy` preset; samples
    20 training sentences (seen), the 20 held-out ones (unseen) and the 20 longer ones, 5
    clips each (GIFs + grid.gif under OUT/samples/SET); and prints for each set, with standard
    errors, how often a clip names its own sentence among the set's 20 (chance 5%) and how
    often each word position is signed right. Figures also go to OUT/report.json. A finished
    run is reused; an interrupted one resumes.

    With --data DIR (real clips): trains the `real` preset on every clip, samples each caption
    once, and prints, with standard errors, the share of generated frames where MediaPipe finds
    a body and the pose DTW-MJE, SSIM and PSNR against the clips of the same caption beside the
    shuffled-caption baseline (docs/real-clips.md).
    """
    quiet_libraries(quiet)
    if data_dir is not None:
        from shared.app.demo_real import run_real_demo

        lines = run_real_demo(Path(out or "runs/demo-real"), ctx.obj, Path(data_dir).resolve(),
                              preset_name or "real", device=device, progress=not quiet,
                              overrides=overrides, captions=captions,
                              samples_per_caption=samples_per_sentence or 1, pose=not no_pose)
    else:
        from shared.app.demo import DEMO_SAMPLES, run_demo

        if preset_name == "real":
            raise click.UsageError("--preset real trains on real clips: give them with --data DIR")
        lines = run_demo(Path(out or "runs/demo"), ctx.obj, preset_name or "toy", n=n,
                         device=device, workers=os.cpu_count() or 1, progress=not quiet,
                         overrides=overrides, seed=seed,
                         samples_per_sentence=samples_per_sentence or DEMO_SAMPLES)
    for line in lines:
        click.echo(line)


@click.command("visualize")
@click.option("--preset", "preset_name", type=click.Choice(PRESETS), default="small",
              show_default=True)
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Describe a checkpoint's model instead of a preset.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE")
def visualize_command(preset_name, checkpoint, batch, overrides) -> None:
    """Per-block table of the UNet: parameters, output shapes, forward GFLOPs.

    Counted from the config (shared.model.flops), the same for both backends; the counts are tested
    equal to torch's FlopCounterMode and to the parameters of both real models.
    """
    from shared.model.checkpoint import load_checkpoint_config, resolve_checkpoint
    from shared.model.flops import block_flops, format_table, training_flops_per_sample

    config = load_checkpoint_config(resolve_checkpoint(checkpoint)) if checkpoint else \
        preset(preset_name)
    config = apply_overrides(config, overrides).validate()
    d = config.data
    click.echo(f"input {batch} x {config.model.in_channels} x {d.num_frames} x {d.image_size} x "
               f"{d.image_size}, text {config.text.max_length} tokens x "
               f"{config.model.context_dim}; conv_mode={config.model.conv_mode}")
    click.echo(format_table(block_flops(config, batch=batch)))
    click.echo(f"training (forward + backward, 3x forward): "
               f"{training_flops_per_sample(config) / 1e9:.1f} GFLOPs per clip")


@click.command("doctor")
@click.option("--device", default=None, help="Device to check (default: the best available).")
@click.pass_context
def doctor_command(ctx, device) -> None:
    """Check the device, the libraries, the text encoder and one UNet step."""
    failed = 0
    for name, ok, detail in ctx.obj.run_checks(device):
        click.echo(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}")
        failed += not ok
    if failed:
        click.echo(f"{failed} check(s) failed", err=True)
        sys.exit(1)
