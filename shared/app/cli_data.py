"""`TOOL data ...`: make and inspect training data (toy, prepare, encode, stats, preview)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from shared.app.cli_common import load_config, quiet_libraries
from shared.config import PRESETS


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
    from shared.data.toy import VOCABULARY, make_toy_dataset
    from shared.evaluation.textfollow import SPLIT_FILE, make_split, training_captions

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
    from shared.data.prepare import PrepareConfig, parse_columns, prepare_corpus

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
    from shared.data.latents import encode_data

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
    from shared.data.stats import collect_stats

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
    from shared.data.preview import PreviewConfig, make_preview

    preview = make_preview(data_dir, out_png,
                           PreviewConfig(num_clips=num_clips, labels_file=labels_file))
    for path, why in preview.skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    click.echo(f"wrote {preview.sheet} and {preview.grid} ({len(preview.shown)} clips)")
