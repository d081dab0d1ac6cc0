"""The verbs both command-line tools share (`t2s-torch` and `t2s-mlx`).

Each backend's `cli.py` builds its click group with `make_group`, handing it the backend's
`shared.backend.Backend` object, and adds its own verbs; the commands here need no framework
(train, sample, doctor, ... call the object's members), so they behave identically on both
sides. Commands only parse
and print: the work is done by library functions that tests call directly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from shared.backend import Backend
from shared.checkpoint import CheckpointError
from shared.config import PRESETS, Config, ConfigError, apply_overrides, preset
from shared.data import DataError
from shared.errors import TrainingDiverged, TrainingInterrupted
from shared.video import VideoError

# Errors about what the user asked for: shown as one line (T2S_DEBUG=1 shows the traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, VideoError, CheckpointError, TrainingDiverged, FileNotFoundError,
    ValueError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The library's user-facing errors as one clean `Error:` line (T2S_DEBUG=1: traceback)."""
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("T2S_DEBUG"):
            raise
        raise click.ClickException(str(e)) from e
    except TrainingInterrupted as e:  # a signal stopped training after saving (e.g. the demo)
        click.echo(str(e), err=True)
        sys.exit(e.exit_code)


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
                    sample_command, visualize_command, doctor_command):
        named = copy.copy(command)  # the examples in a verb's help name this tool
        named.help = (command.help or "").replace("TOOL", name)
        group.add_command(named)
    return group


def quiet_libraries(quiet: bool) -> None:
    """Under --quiet, silence the libraries' own progress bars too (transformers 5 draws a
    "Loading weights" bar for the text encoder; huggingface_hub one per download). Set before
    they are imported, and switched off in any already imported; nothing is imported here."""
    if not quiet:
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()


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
              help="Draw captions from a closed set of this many sentences (default: the "
                   "training sentences of a held-out split, see --max-words).")
@click.option("--max-words", type=click.IntRange(2, 4), default=3, show_default=True,
              help="Longest training sentence. 20 sentences of this length are held out "
                   "(new word sets and new orders) and 20 one word longer are drawn; both are "
                   "written to split.json for `eval` and `benchmarks/run.py --quality`.")
@click.option("--vocab-size", type=click.IntRange(1), default=None,
              help="Use only the first N words of the toy vocabulary.")
@click.option("--frames", type=click.IntRange(1), default=28, show_default=True)
@click.option("--height", type=click.IntRange(8), default=180, show_default=True)
@click.option("--width", type=click.IntRange(8), default=320, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["gif", "mp4"]), default="gif",
              show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Processes rendering clips (default: all cores).")
def data_toy_command(out, n, seed, num_prompts, max_words, vocab_size, frames, height, width,
                     fmt, workers) -> None:
    """Write a synthetic toy-signer data set to OUT.

    Each clip is a signer in front of a plain background performing a sentence of 1 to
    --max-words words; every word is a fixed two-hand motion, and every clip has its own signer
    (colours, position, size, speed). Sentences held out by the seed's split never appear.
    Clips are GIF (or MP4) files with same-named .txt captions, the format `train` reads, plus
    prompts.txt with the distinct captions and split.json with the held-out sentences.
    """
    from shared.textfollow import SPLIT_FILE, make_split, training_captions
    from shared.toy import VOCABULARY, make_toy_dataset

    split = captions = None
    if num_prompts is None:
        split = make_split(VOCABULARY[:vocab_size] if vocab_size else VOCABULARY, max_words,
                           seed)
        captions = training_captions(split, n, seed)
    written = make_toy_dataset(out, n=n, seed=seed, num_frames=frames, height=height,
                               width=width, vocab_size=vocab_size, fmt=fmt,
                               num_prompts=num_prompts, workers=workers or os.cpu_count() or 1,
                               captions=captions)
    prompts = len({caption for _, caption in written})
    held = ""
    if split is not None:
        split.save(Path(out) / SPLIT_FILE)
        held = (f"; held out {len(split.unseen)} sentences of {max_words} words and drew "
                f"{len(split.longer)} of {max_words + 1} ({SPLIT_FILE})")
    click.echo(f"wrote {len(written)} clips ({prompts} distinct captions) to {out}{held}")


@data_group.command("prepare")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--segments", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV/TSV of segments (How2Sign's columns are recognised); without it SOURCE "
                   "is a folder of clips captioned by sidecar .txt files or their file names.")
@click.option("--columns", default=None, metavar="KEY=COLUMN,...",
              help="Map other layouts: keys video, start, end, text, name, e.g. "
                   "video=clip_file,start=t0,end=t1,text=gloss.")
@click.option("--keep-column", "keep_columns", multiple=True, metavar="COLUMN",
              help="Copy this --segments column (e.g. a signer id) into the manifest, so "
                   "`train --set data.split_by=COLUMN` keeps each of its values on one side "
                   "of the validation split (repeatable; data.split_by=source needs none).")
@click.option("--frames", type=click.IntRange(1), default=28, show_default=True,
              help="Frames per clip, evenly spaced over the segment.")
@click.option("--keep-fps", is_flag=True, help="Keep every source frame instead of --frames.")
@click.option("--height", type=click.IntRange(2), default=180, show_default=True)
@click.option("--width", type=click.IntRange(2), default=320, show_default=True)
@click.option("--fit", type=click.Choice(["letterbox", "crop", "stretch"]), default="letterbox",
              show_default=True, help="How a picture of another shape is made to fit.")
@click.option("--format", "fmt", type=click.Choice(["gif", "mp4"]), default="gif",
              show_default=True)
@click.option("--manifest", "manifest_format", type=click.Choice(["csv", "jsonl"]),
              default="csv", show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Processes cutting clips (default: all cores).")
@click.option("--strict", is_flag=True, help="Stop at the first bad row instead of skipping it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def data_prepare_command(source, out, segments, columns, keep_columns, frames, keep_fps, height,
                         width, fit, fmt, manifest_format, workers, strict, quiet) -> None:
    """Cut a sign-language corpus into training clips in OUT.

    \b
    Examples (t2s-mlx takes the same):
      t2s-torch data prepare how2sign/raw_videos data/how2sign \\
          --segments how2sign_realigned_train.csv
      t2s-torch data prepare my_words/ data/words --fit crop

    Each segment (or clip) becomes a GIF (or MP4) of --frames frames at --width x --height with
    a same-named .txt caption, listed in OUT/manifest.csv with its source, times and sha256.
    Bad rows (missing video, end before start, past the video's end, empty caption,
    undecodable) are skipped and listed with their line in OUT/rejected.csv. Running again
    redoes only what is missing or changed; the output is the same, byte for byte. Train with
    --set data.split_by=source (or a --keep-column) so no source video (or signer) is on both
    sides of the validation split.
    """
    from shared.prepare import PrepareConfig, parse_columns, prepare_corpus

    config = PrepareConfig(num_frames=frames, keep_fps=keep_fps, height=height, width=width,
                           fit=fit, fmt=fmt, manifest=manifest_format,
                           columns=parse_columns(columns), keep_columns=tuple(keep_columns),
                           workers=workers or os.cpu_count() or 1,
                           strict=strict, progress=not quiet)
    summary = prepare_corpus(source, out, segments, config)
    shown = 20
    for bad in summary.bad[:shown]:
        click.echo(f"skipped {bad.format()}", err=True)
    if len(summary.bad) > shown:
        click.echo(f"... and {len(summary.bad) - shown} more", err=True)
    click.echo(summary.format())


@data_group.command("encode")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--vae", required=True, metavar="PATH_OR_ID",
              help="The diffusers AutoencoderKL to encode with: a local folder, or a Hugging "
                   "Face id (from the local cache; downloaded only when online); train with the "
                   "same --vae.")
@click.option("--preset", "preset_name", type=click.Choice(PRESETS), default=None,
              help="The preset you will train with: it sets frames and size (default: small).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="A config.json instead of a preset.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override a field, as for train (e.g. --set data.image_size=256).")
@click.option("--device", default=None, help="Device to encode on (default: the best available).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def data_encode_command(ctx, data_dir, vae, preset_name, config_file, overrides, device,
                        quiet) -> None:
    """Encode every clip of DATA_DIR to VAE latents once, for latent-mode training.

    \b
    Example (t2s-mlx takes the same):
      t2s-torch data encode data/how2sign --vae stabilityai/sd-vae-ft-mse --preset small

    Latents go beside the decoded-clip cache (DATA_DIR/.t2s_cache/latents-v1-<vae hash>-f<F>-s<S>)
    and are reused by `train --vae`; an interrupted run resumes, and an edited clip, another
    frame count or size, or another VAE is re-encoded. Training encodes whatever is missing by
    itself; this verb only lets you pay for it up front (e.g. on a bigger machine).
    """
    from shared.latents import encode_data

    flags = (f"data.data_dir={data_dir}", f"data.vae={vae}", "diffusion.clip_sample=false")
    config = load_config(preset_name, config_file, flags + tuple(overrides))
    quiet_libraries(quiet)
    latent_vae = ctx.obj.latent_vae
    click.echo(encode_data(config, lambda: latent_vae(vae, device=device), progress=not quiet))


@data_group.command("stats")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--labels", "labels_file", default=None,
              help="A `filename,text` labels CSV instead of .txt captions (as data.labels_file).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the statistics as JSON.")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True,
              help="How many of the most frequent words, resolutions, ... to list.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def data_stats_command(data_dir, labels_file, json_out, top, quiet) -> None:
    """Describe a training folder: clips, durations, frame counts, resolutions, captions,
    vocabulary, most frequent words, duplicate captions and identical files.

    Sees exactly the clips `train --data DATA_DIR` would (same discovery, same skip rules).
    """
    from shared.datastats import collect_stats

    stats = collect_stats(data_dir, labels_file=labels_file, progress=not quiet)
    click.echo(stats.format(top))
    if json_out:
        Path(json_out).write_text(json.dumps(stats.to_dict(top), indent=2) + "\n")


@data_group.command("preview")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_png", type=click.Path(dir_okay=False))
@click.option("-n", "--num-clips", type=click.IntRange(1), default=12, show_default=True,
              help="Clips to show, spread evenly over the folder.")
@click.option("--labels", "labels_file", default=None,
              help="A `filename,text` labels CSV instead of .txt captions (as data.labels_file).")
def data_preview_command(data_dir, out_png, num_clips, labels_file) -> None:
    """Write a contact sheet OUT_PNG (first / middle / last frame and caption of each clip) and
    a GIF grid of the same clips beside it (OUT_PNG with .gif), to look at before training."""
    from shared.preview import PreviewConfig, make_preview

    preview = make_preview(data_dir, out_png,
                           PreviewConfig(num_clips=num_clips, labels_file=labels_file))
    for path, why in preview.skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    click.echo(f"wrote {preview.sheet} and {preview.grid} ({len(preview.shown)} clips)")


# ------------------------------------------------------------------------------------ eval


def reference_options(f):
    """`eval`'s options for scoring against real reference clips (shared.refeval)."""
    options = [
        click.option("--reference", "reference_dir", default=None,
                     type=click.Path(exists=True, file_okay=False),
                     help="Real reference clips (GIF/MP4 + .txt captions): score each clip "
                          "against the references of its caption (docs/evaluation.md)."),
        click.option("--reference-labels", default=None,
                     help="A `filename,text` CSV for the reference folder (as data.labels_file)."),
        click.option("--i3d", "i3d_path", default=None,
                     type=click.Path(exists=True, dir_okay=False),
                     help="A local Kinetics I3D checkpoint (.pt state dict or .safetensors): "
                          "also compute FVD. Without it FVD is reported as not computed."),
        click.option("--max-references", type=click.IntRange(1), default=5, show_default=True,
                     help="Reference clips of a caption scored per generated clip."),
        click.option("--no-pose", is_flag=True,
                     help="Skip the keypoint metrics (they need the `pose` extra)."),
        click.option("--seed", "reference_seed", type=int, default=0, show_default=True,
                     help="Seed of the shuffled-caption baseline's draw."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def reference_eval(backend: Backend, clips_dir: str, json_out: str | None, reference_dir: str,
                   reference_labels: str | None, i3d_path: str | None, max_references: int,
                   no_pose: bool, reference_seed: int) -> None:
    """`eval CLIPS_DIR --reference DIR`: print the summary, optionally write the JSON."""
    from shared.refeval import RefEvalConfig, evaluate_against_reference

    config = RefEvalConfig(max_references=max_references, seed=reference_seed,
                           pose=not no_pose, labels_file=reference_labels)
    result = evaluate_against_reference(
        Path(clips_dir), Path(reference_dir), config,
        i3d=(lambda: backend.load_i3d(i3d_path)) if i3d_path else None)
    click.echo(result.format())
    if json_out:
        Path(json_out).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    from shared.report_html import reference_scores, write_results_page

    refs, facts = reference_scores(result)
    page = write_results_page(clips_dir, references=refs, extra=facts, summary=[result.format()])
    click.echo(f"every clip with its caption, scores and a reference clip: {page}")


@click.command("eval")
@click.argument("clips_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Candidate prompts, one per line (default: the distinct "
                                 "captions of the clips).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the scores as JSON.")
@reference_options
@click.pass_context
def eval_command(ctx, clips_dir, prompts_file, json_out, **reference) -> None:
    """Score generated toy-signer clips for text faithfulness.

    CLIPS_DIR holds GIF/MP4 clips with same-named .txt captions (what `sample` writes), or
    sub-folders of them (a demo's samples/: seen/, unseen/, longer/), each scored apart. Both
    hands are tracked in every clip and compared with each candidate prompt's motion: the
    report gives, with standard errors, the prompt-identification accuracy (chance = 1 / number
    of prompts), the word accuracy per position (is the first word signed first?) and the
    hand-trajectory error against the clip's own caption.

    With --reference DIR (real signing), each clip is instead scored against the reference
    clips of its caption: PSNR, SSIM, pose DTW-MJE, hands found, hand travel and duration,
    FVD with --i3d, each beside a shuffled-caption baseline (docs/evaluation.md).
    """
    if reference["reference_dir"]:
        return reference_eval(ctx.obj, clips_dir, json_out, **reference)
    from shared.eval import evaluate_set, score_to_dict, set_folders
    from shared.report_html import write_results_page, write_sets_page

    folders = set_folders(Path(clips_dir))
    results, scored = {}, []
    for folder in folders:
        result = evaluate_set(folder, None if len(folders) > 1 else folder.name,
                              Path(prompts_file) if prompts_file else None)
        click.echo(result.format())
        results[folder.name] = {**score_to_dict(result.score), **result.to_dict()}
        page = write_results_page(folder, score=result, summary=[result.format()])
        scored.append((folder, result))
    if len(folders) > 1:
        page = write_sets_page(clips_dir, scored)
    click.echo(f"every clip with its caption and score: {page}")
    if json_out:
        data = next(iter(results.values())) if len(results) == 1 else {"sets": results}
        Path(json_out).write_text(json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------------------ demo


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--preset", "preset_name", type=click.Choice(["toy", "toy-long"]), default="toy",
              show_default=True, help="toy: ~10 minutes of training on a 2-core CPU; toy-long: "
                                      "about an hour, for a better model.")
@click.option("--n", "n", type=click.IntRange(1), default=400, show_default=True,
              help="Toy clips to make (1-2 word training sentences, a new signer each).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Toy set seed: its signers and which sentences are held out.")
@click.option("--samples", "samples_per_sentence", type=click.IntRange(1), default=5,
              show_default=True, help="Samples per evaluation sentence (20 sentences a set).")
@click.option("--device", default=None, help="Device (default: the best available).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Change the preset, e.g. --set train.steps=300.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def demo_command(ctx, out, preset_name, n, seed, samples_per_sentence, device, overrides,
                 quiet) -> None:
    """The README's main job: train on the toy-signer set, sample, score.

    Makes 400 toy clips of 1-2 word sentences (once), holding out 20 two-word sentences
    (new word pairs and new orders) and 20 three-word ones; trains the `toy` preset; samples
    20 training sentences (seen), the 20 held-out ones (unseen) and the 20 longer ones, 5
    clips each (GIFs + grid.gif under OUT/samples/SET); and prints for each set, with standard
    errors, how often a clip names its own sentence among the set's 20 (chance 5%) and how
    often each word position is signed right. Figures also go to OUT/report.json. A finished
    run is reused; an interrupted one resumes.
    """
    from shared.demo import run_demo

    quiet_libraries(quiet)
    for line in run_demo(Path(out), ctx.obj, preset_name, n=n, device=device,
                         workers=os.cpu_count() or 1, progress=not quiet, overrides=overrides,
                         seed=seed, samples_per_sentence=samples_per_sentence):
        click.echo(line)


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
        click.option("--sampler", type=click.Choice(["ddpm", "ddim", "dpm++"]), default=None),
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
    from shared.checkpoint import load_checkpoint_config, resolve_checkpoint
    from shared.report_html import sample_settings, write_results_page

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


@click.command("visualize")
@click.option("--preset", "preset_name", type=click.Choice(PRESETS), default="small",
              show_default=True)
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Describe a checkpoint's model instead of a preset.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE")
def visualize_command(preset_name, checkpoint, batch, overrides) -> None:
    """Per-block table of the UNet: parameters, output shapes, forward GFLOPs.

    Counted from the config (shared.flops), the same for both backends; the counts are tested
    equal to torch's FlopCounterMode and to the parameters of both real models.
    """
    from shared.checkpoint import load_checkpoint_config, resolve_checkpoint
    from shared.flops import block_flops, format_table, training_flops_per_sample

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
