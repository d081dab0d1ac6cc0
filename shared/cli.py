"""The verbs both command-line tools share (`t2s-torch` and `t2s-mlx`).

Each backend's `cli.py` builds its click group with `make_group` and adds its own verbs; the
commands here need no framework, so they behave identically on both sides. Commands only parse
and print: the work is done by library functions that tests call directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from shared.config import PRESETS, Config, ConfigError, apply_overrides, preset
from shared.data import DataError
from shared.video import VideoError

USER_ERRORS = (ConfigError, DataError, VideoError, FileNotFoundError, ValueError)


class T2SGroup(click.Group):
    """A click group that turns the library's user-facing errors into one clean message."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            raise click.ClickException(str(e)) from e


def make_group(name: str, help_text: str) -> click.Group:
    @click.group(name=name, cls=T2SGroup, help=help_text,
                 context_settings={"help_option_names": ["-h", "--help"],
                                   "max_content_width": 100})
    @click.version_option(package_name="text2sign")
    def group() -> None:
        pass

    for command in (config_command, data_group, eval_command, demo_command):
        group.add_command(command)
    return group


def prog_name() -> str:
    return click.get_current_context().find_root().info_name or "t2s"


def load_config(preset_name: str | None, config_file: str | None,
                overrides: tuple[str, ...]) -> Config:
    """A preset or a config.json, then `--set` overrides, then validation (the CLI's one path)."""
    if preset_name and config_file:
        raise ConfigError("give --preset or --config, not both")
    config = Config.load(config_file) if config_file else preset(preset_name or "small")
    return apply_overrides(config, overrides).validate()


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


# ------------------------------------------------------------------------------------ data


@click.group("data")
def data_group() -> None:
    """Make and inspect training data."""


@data_group.command("toy")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n", "n", type=click.IntRange(1), default=400, show_default=True,
              help="Number of clips.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-prompts", type=click.IntRange(1), default=None,
              help="Draw captions from a closed set of this many sentences (default: every clip "
                   "gets a fresh 1-3 word sentence).")
@click.option("--vocab-size", type=click.IntRange(1), default=None,
              help="Use only the first N words of the toy vocabulary.")
@click.option("--frames", type=click.IntRange(1), default=28, show_default=True)
@click.option("--height", type=click.IntRange(8), default=180, show_default=True)
@click.option("--width", type=click.IntRange(8), default=320, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["gif", "mp4"]), default="gif",
              show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Processes rendering clips (default: all cores).")
def data_toy_command(out, n, seed, num_prompts, vocab_size, frames, height, width, fmt,
                     workers) -> None:
    """Write a synthetic toy-signer data set to OUT.

    Each clip is a signer in front of a plain background performing a 1-3 word sentence; every
    word is a fixed two-hand motion, and every clip has its own signer (colours, position, size,
    speed). Clips are GIF (or MP4) files with same-named .txt captions, the format `train`
    reads, plus prompts.txt with the distinct captions.
    """
    from shared.toy import make_toy_dataset

    written = make_toy_dataset(out, n=n, seed=seed, num_frames=frames, height=height,
                               width=width, vocab_size=vocab_size, fmt=fmt,
                               num_prompts=num_prompts, workers=workers or os.cpu_count() or 1)
    prompts = len({caption for _, caption in written})
    click.echo(f"wrote {len(written)} clips ({prompts} distinct captions) to {out}")


# ------------------------------------------------------------------------------------ eval


@click.command("eval")
@click.argument("clips_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Candidate prompts, one per line (default: the distinct "
                                 "captions of the clips).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the scores as JSON.")
def eval_command(clips_dir, prompts_file, json_out) -> None:
    """Score generated toy-signer clips for text faithfulness.

    CLIPS_DIR holds GIF/MP4 clips with same-named .txt captions (what `sample` writes). Both
    hands are tracked in every clip and compared with each candidate prompt's motion: the
    report gives the prompt-identification accuracy (chance = 1 / number of prompts) and the
    hand-trajectory error against the clip's own caption.
    """
    from shared.eval import evaluate_folder, score_to_dict

    score = evaluate_folder(Path(clips_dir), Path(prompts_file) if prompts_file else None)
    click.echo(score.format())
    if json_out:
        Path(json_out).write_text(json.dumps(score_to_dict(score), indent=2) + "\n")


# ------------------------------------------------------------------------------------ demo


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--n", "n", type=click.IntRange(1), default=400, show_default=True)
def demo_command(out, n) -> None:
    """The README's main job on the built-in toy-signer data.

    Today it makes the toy data set (once), decodes it into the training cache, checks that the
    faithfulness metric recognises the data's own clips, and prints what comes next. Training
    and sampling join it as the backends land.
    """
    from shared.demo import prepare_demo

    for line in prepare_demo(Path(out), n=n, prog=prog_name(), workers=os.cpu_count() or 1):
        click.echo(line)
