"""`TOOL eval`: score generated clips, by toy-signer tracking or against real reference clips."""

from __future__ import annotations

import json
from pathlib import Path

import click

from shared.app.backend import Backend


def reference_options(f):
    """`eval`'s options for scoring against real reference clips (shared.evaluation.refeval)."""
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
    from shared.evaluation.refeval import RefEvalConfig, evaluate_against_reference

    config = RefEvalConfig(max_references=max_references, seed=reference_seed,
                           pose=not no_pose, labels_file=reference_labels)
    result = evaluate_against_reference(
        Path(clips_dir), Path(reference_dir), config,
        i3d=(lambda: backend.load_i3d(i3d_path)) if i3d_path else None)
    click.echo(result.format())
    if json_out:
        Path(json_out).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    from shared.app.report_html import reference_scores, write_results_page

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
    from shared.app.report_html import write_results_page, write_sets_page
    from shared.evaluation.folder import evaluate_set, score_to_dict, set_folders

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
