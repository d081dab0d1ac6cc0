"""Which sampler, step count, eta and guidance serve real signing: every recipe of `RECIPES`
samples the reference folder's captions from one checkpoint, from the same starting noise, and
is scored as `eval GENERATED --reference DIR` scores it (`shared.evaluation.refeval`: PSNR, SSIM,
pose DTW-MJE, hands found), each metric beside its shuffled-caption baseline.

    python benchmarks/run.py --quality RUN --reference DIR [--json FILE]
    python benchmarks/reference_quality.py make-set DIR     # a small real-person set to try it

The toy set's text-following rows (`benchmarks/quality.py`) chose the sampling defaults on
synthetic gloves; real pixels (a background, a body, faces) may want others, and this table is
where that shows. The generated clips go through GIF files as `sample` writes them, so each row
is what a user gets from `sample` + `eval --reference` with those settings.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from shared.app.cli_common import SCRIPT_SETTINGS, run_script
from shared.config import SampleConfig
from shared.data.video import to_uint8, write_sample_folder
from shared.evaluation.refeval import ReferenceSet, RefEvalConfig, evaluate_against_reference


@dataclass(frozen=True)
class Recipe:
    """One row: a sampler setting; None fields keep the checkpoint's own `sample` config."""

    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None
    guidance: float | None = None

    def apply(self, sample: SampleConfig) -> SampleConfig:
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if "sampler" in changes or "steps" in changes:
            changes["timestep_spacing"] = "auto"  # each sampler on its own default grid
        return dataclasses.replace(sample, **changes)


# The checkpoint's defaults first (what `sample` does), then the rows: DDIM 25 eta 0 / 1,
# DDIM 100, DPM-Solver++ 25, and guidance from none to strong at DDIM 25.
RECIPES: tuple[Recipe, ...] = (
    Recipe(),
    Recipe("ddim", 25, 0.0),
    Recipe("ddim", 25, 1.0),
    Recipe("ddim", 100, 0.0),
    Recipe("dpm++", 25, 0.0),
    Recipe("ddim", 25, 0.0, 1.0),
    Recipe("ddim", 25, 0.0, 3.0),
    Recipe("ddim", 25, 0.0, 7.5),
)
# (key in refeval's totals, column label, decimals)
COLUMNS = (("psnr", "PSNR dB", 2), ("ssim", "SSIM", 3), ("dtw_mje", "DTW-MJE", 3))


def reference_captions(reference: Path, max_captions: int, labels_file: str | None = None
                       ) -> list[str]:
    """The reference folder's distinct captions (as first written), sorted, at most N."""
    refs = ReferenceSet(reference, labels_file, progress=False)
    firsts = sorted(group[0].caption for group in refs.by_caption.values())
    return firsts[:max_captions]


def pose_available() -> tuple[bool, str]:
    from shared.evaluation.pose import PoseExtraMissing, require_mediapipe

    try:
        require_mediapipe()
        return True, ""
    except PoseExtraMissing as error:
        return False, f"pose metrics skipped: {error}"


def compare_on_references(checkpoint: Path, reference: Path, log: Callable[[str], None],
                          recipes: Sequence[Recipe] = RECIPES, max_captions: int = 8,
                          samples: int = 2, seed: int = 0, device: str | None = None,
                          work_dir: Path | None = None) -> dict[str, Any]:
    """Every recipe's scores against `reference` (see the module doc), as a JSON-ready dict:
    `rows` (recipe, resolved sampler settings, seconds per clip, refeval's totals and per-clip
    results) and the protocol."""
    from t2s_torch.checkpoint import load_model
    from t2s_torch.device import select_device
    from t2s_torch.diffusion import TextBatch
    from t2s_torch.sample import generate, load_decoder
    from t2s_torch.text_encoder import TextEncoder

    dev = select_device(device)
    config, model, path = load_model(checkpoint, dev)
    captions = reference_captions(reference, max_captions)
    prompts = [c for c in captions for _ in range(samples)]
    encoder = TextEncoder(config.text, device=dev)
    text = TextBatch(*encoder.encode(prompts))
    uncond = TextBatch(*encoder.empty_embedding(len(prompts)))
    d = config.data
    decode = load_decoder(config, None, dev) if d.vae else None
    shape = (len(prompts), d.num_frames, d.model_size, d.model_size, config.model.out_channels)
    pose, note = pose_available()
    if note:
        log(note)
    eval_config = RefEvalConfig(pose=pose, seed=seed, progress=False)
    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for k, recipe in enumerate(recipes):
            sample = dataclasses.replace(recipe.apply(config.sample), seed=seed)
            dataclasses.replace(config, sample=sample).validate()  # a bad row fails by name
            log(f"reference quality: {describe(sample)} on {len(prompts)} clips")
            start = time.perf_counter()
            videos = generate(model, config.diffusion, sample, text, uncond, shape, seed=seed,
                              device=dev, decode=decode)
            seconds = (time.perf_counter() - start) / len(prompts)
            folder = Path(tmp) / f"row{k}"
            write_sample_folder(folder, [to_uint8(v) for v in videos], prompts, sample.fps)
            result = evaluate_against_reference(folder, reference, eval_config)
            rows.append({"recipe": describe(sample), "defaults": recipe == Recipe(),
                         "sampler": sample.sampler, "steps": sample.steps, "eta": sample.eta,
                         "guidance": sample.guidance, "seconds_per_clip": seconds,
                         **result.to_dict()})
    return {
        "kind": "sampler comparison on reference clips",
        "checkpoint": str(path), "reference": str(reference),
        "protocol": {"captions": captions, "samples_per_caption": samples, "seed": seed,
                     "frames": d.num_frames, "size": d.image_size, "pose": pose,
                     "device": str(dev), "sampler_defaults": dataclasses.asdict(config.sample),
                     "scoring": "shared.evaluation.refeval (eval --reference), "
                                "clips written as GIFs"},
        "rows": rows,
    }


def describe(sample: SampleConfig) -> str:
    eta = f" eta {sample.eta:g}" if sample.sampler == "ddim" else ""
    return f"{sample.sampler} {sample.steps}{eta}, guidance {sample.guidance:g}"


def _cell(row: dict[str, Any], key: str, side: str, decimals: int) -> str:
    value = row["totals"][key].get(side)
    if value is None:
        return "n/a"
    if isinstance(value, str) or not math.isfinite(value):
        return str(value)
    return f"{value:.{decimals}f}"


def format_table(report: dict[str, Any]) -> str:
    """Markdown: one row per recipe, each metric paired / shuffled, and the generated frames
    with a body (pose); the checkpoint's defaults are marked."""
    head = ["recipe", *(f"{label} paired / shuffled" for _, label, _ in COLUMNS),
            "body / hand frames", "s / clip"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells = [row["recipe"] + (" (defaults)" if row["defaults"] else "")]
        for key, _, decimals in COLUMNS:
            cells.append(f"{_cell(row, key, 'paired', decimals)} / "
                         f"{_cell(row, key, 'shuffled', decimals)}")
        body, hand = (row["totals"][k]["generated"] for k in ("body_frames", "hand_frames"))
        cells.append("n/a" if body is None else f"{body:.0%} / {hand:.0%}")
        cells.append(f"{row['seconds_per_clip']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    p = report["protocol"]
    lines.append(f"\n{len(p['captions'])} captions x {p['samples_per_caption']} samples, seed "
                 f"{p['seed']}, {p['frames']} frames of {p['size']}², {p['device']}; "
                 f"{report['checkpoint']} against {report['reference']}. PSNR / SSIM higher "
                 "and DTW-MJE (shoulder widths) lower are better; a row follows the text where "
                 "paired beats shuffled.")
    return "\n".join(lines)


# ------------------------------------------------------------------ a small real-person set


def make_person_set(folder: Path, captions: int = 6, signers: int = 3, frames: int = 16,
                    height: int = 180, width: int = 320) -> Path:
    """Real pixels of a real person (`benchmarks/personclips.py`, a bundled photograph) moved
    along one path per caption; each "signer" has its own background and tempo. MP4 + .txt
    captions."""
    from benchmarks import personclips as pc
    from shared.data.video import write_video

    photo = pc.person_photo()
    backgrounds = [(96, 96, 96), (150, 120, 90), (70, 110, 140), (120, 140, 100)]
    tempos = [pc.uniform, pc.eased, lambda n: pc.delayed(n, max(1, n // 8))]
    for k in range(captions):
        rng = np.random.default_rng(k)
        ax, ay, deg = rng.uniform(-0.15, 0.15), rng.uniform(0, 0.12), rng.uniform(-12, 12)
        freq = int(rng.integers(1, 3))

        def path(p: float, ax=ax, ay=ay, deg=deg, freq=freq) -> pc.Pose2D:
            s = float(np.sin(2 * np.pi * freq * p))
            return pc.Pose2D(ax * s, ay * float(np.sin(np.pi * p)), deg * s)

        for s in range(signers):
            clip = pc.render(tempos[s % len(tempos)](frames), path, height=height, width=width,
                             photo=photo, background=backgrounds[s % len(backgrounds)])
            out = write_video(folder / f"sign{k:02d}_signer{s}.mp4", clip, 25)
            out.with_suffix(".txt").write_text(f"sign {k}\n")
    return folder


@click.group(help=__doc__.splitlines()[0], context_settings=SCRIPT_SETTINGS)
def command() -> None:
    pass


@command.command("make-set", help="write a small real-person reference set",
                 context_settings=SCRIPT_SETTINGS)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--captions", type=int, default=6)
@click.option("--signers", type=int, default=3)
@click.option("--frames", type=int, default=16)
def make_set(out: Path, captions: int, signers: int, frames: int) -> int:
    folder = make_person_set(out, captions, signers, frames)
    print(f"{captions * signers} clips in {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(command, argv)

if __name__ == "__main__":
    sys.exit(main())
