"""Which sampler to default to: from the same starting noise on a trained model, how close do
DPM-Solver++ (20 steps) and DDIM (50 steps) land to the 500-step DDIM solution, and how fast;
and, on a model trained on a toy set with held-out sentences (`split.json`, what `t2s-demo` and
`data toy` write), how well each sampler and guidance scale follows the text: seen and unseen
sentences scored apart with standard errors (`shared.evaluation.textfollow`).

    python benchmarks/run.py --quality runs/demo/run-toy
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.config import DiffusionConfig
from shared.data.video import to_uint8
from shared.evaluation.textfollow import make_split, paired_difference, read_split, score_set

REFERENCE = ("ddim", 500)
CANDIDATES = (("ddim", 50), ("dpm++", 20))
# Text-following rows: (sampler, steps, guidance); None = the checkpoint's own guidance.
# DPM-Solver++ 10 is the toy presets' own sampler; DDIM 25 was, until 2026-12-07.
TEXT_FOLLOWING = (("dpm++", 10, None), ("ddim", 25, None), ("dpm++", 20, None),
                  ("dpm++", 10, 1.0), ("dpm++", 10, 6.0))


def quality_notes(checkpoint: Path, log: Callable[[str], None], num_prompts: int = 4
                  ) -> list[str]:
    import torch

    from t2s_torch.checkpoint import load_model
    from t2s_torch.diffusion import TextBatch
    from t2s_torch.sample import generate
    from t2s_torch.text_encoder import TextEncoder

    device = torch.device("cpu")
    config, model, path = load_model(checkpoint, device)
    # Held-out sentences of the checkpoint's toy set (or of the default split): what matters.
    split = read_split(config.data.data_dir) or make_split(seed=config.data.seed)
    prompts = list(split.unseen[:num_prompts])
    encoder = TextEncoder(config.text, device=device)
    text = TextBatch(*encoder.encode(prompts))
    uncond = TextBatch(*encoder.empty_embedding(len(prompts)))
    d = config.data
    shape = (len(prompts), d.num_frames, d.image_size, d.image_size, config.model.out_channels)

    done: dict[tuple, tuple[np.ndarray, float]] = {}

    def run(diffusion: DiffusionConfig, sampler: str, steps: int, consistent: bool
            ) -> tuple[np.ndarray, float]:
        # Each sampler on its default grid ("auto": DDIM trailing, from t = T - 1; DPM-Solver++
        # even in log-SNR), so the rows are what `sample` does with these step counts.
        key = (diffusion.clip_sample, sampler, steps, consistent and sampler == "ddim")
        if key in done:  # DPM-Solver++ ignores use_clipped_model_output: run it once
            return done[key]
        sample = dataclasses.replace(config.sample, sampler=sampler, steps=steps, eta=0.0,
                                     timestep_spacing="auto",
                                     use_clipped_model_output=consistent)
        log(f"quality: {sampler} {steps} steps on {path.name}")
        start = time.perf_counter()
        video = generate(model, diffusion, sample, text, uncond, shape, seed=7, device=device)
        done[key] = video, (time.perf_counter() - start) / len(prompts)
        return done[key]

    # x0 clipping bends the ODE, and DDIM bends it its own way unless it re-derives its noise
    # estimate from the clipped x0 (use_clipped_model_output), as DPM-Solver++ always does; so
    # with clipping the run also measures both samplers on that one clipped ODE.
    unclipped = dataclasses.replace(config.diffusion, clip_sample=False)
    variants = [("x0 not clipped", unclipped, False)]
    if config.diffusion.clip_sample:
        variants = [("x0 clipped, DDIM with the model's noise estimate", config.diffusion, False),
                    ("x0 clipped, DDIM with use_clipped_model_output", config.diffusion, True),
                    *variants]
    lines = []
    for label, diffusion, consistent in variants:
        reference, ref_s = run(diffusion, *REFERENCE, consistent)
        lines.append(f"- sampler quality on {path} ({label}, default timestep grids, guidance "
                     f"{config.sample.guidance}, {num_prompts} prompts, same starting noise): "
                     f"{REFERENCE[0]} {REFERENCE[1]} steps {ref_s:.2f} s/video is the reference")
        for sampler, steps in CANDIDATES:
            video, seconds = run(diffusion, sampler, steps, consistent)
            rmse = float(np.sqrt(np.mean((video - reference) ** 2)))
            lines.append(f"  - {sampler} {steps} steps: RMSE to the reference {rmse:.4f}, "
                         f"{seconds:.3f} s/video")
    return lines


def text_following_notes(checkpoint: Path, log: Callable[[str], None], samples: int = 5
                         ) -> list[str]:
    """Accuracy on each held-out set per sampler and guidance scale, from the same starting
    noise, and each row's paired difference from the first row. Clips are scored as sampled
    (uint8, not through a GIF), the demo's numbers up to GIF quantisation."""
    import torch

    from t2s_torch.checkpoint import load_model
    from t2s_torch.diffusion import TextBatch
    from t2s_torch.sample import generate
    from t2s_torch.text_encoder import TextEncoder

    device = torch.device("cpu")
    config, model, path = load_model(checkpoint, device)
    split = read_split(config.data.data_dir)
    if split is None:
        return [f"- text following: not measured, {config.data.data_dir} has no split.json (a "
                "toy set made by `data toy` or `t2s-demo` has one)"]
    encoder = TextEncoder(config.text, device=device)
    d = config.data
    sets = split.sets()
    counts = " and ".join(f"{len(v)} {k}" for k, v in sets.items())
    lines = [f"- text following on {path} ({samples} samples per sentence, seed 0; "
             f"{counts} sentences of toy split seed {split.seed}):"]
    first: dict[str, np.ndarray] = {}
    for sampler, steps, guidance in TEXT_FOLLOWING:
        g = config.sample.guidance if guidance is None else guidance
        sample = dataclasses.replace(config.sample, sampler=sampler, steps=steps, guidance=g,
                                     timestep_spacing="auto", num_samples=samples)
        parts, diffs = [], []
        for label, sentences in sets.items():
            captions = [p for p in sentences for _ in range(samples)]
            log(f"text following: {sampler} {steps} steps, guidance {g}, {label}")
            text = TextBatch(*encoder.encode(captions))
            uncond = TextBatch(*encoder.empty_embedding(len(captions)))
            shape = (len(captions), d.num_frames, d.image_size, d.image_size,
                     config.model.out_channels)
            videos = generate(model, config.diffusion, sample, text, uncond, shape, seed=0,
                              device=device)
            result = score_set(label, [to_uint8(v) for v in videos], captions, sentences)
            word, word_se, _ = result.word_accuracy()
            parts.append(f"{label} {result.score.accuracy:.1%} ± {result.accuracy_stderr:.1%} "
                         f"(words {word:.1%} ± {word_se:.1%})")
            if label in first:
                mean, se = paired_difference(first[label], result.score.correct)
                diffs.append(f"{label} {100 * mean:+.1f} ± {100 * se:.1f}")
            else:
                first[label] = result.score.correct
        line = f"  - {sampler} {steps} steps, guidance {g}: " + ", ".join(parts)
        if diffs:
            line += "; minus the first row, same noise (points): " + ", ".join(diffs)
        lines.append(line)
    return lines
