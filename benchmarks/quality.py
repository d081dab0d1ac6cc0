"""Which sampler to default to: from the same starting noise on a trained model, how close do
DPM-Solver++ (20 steps) and DDIM (50 steps) land to the 500-step DDIM solution, and how fast.

    python benchmarks/run.py --quality runs/demo/run-toy
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.config import DiffusionConfig
from shared.toy import sample_prompts

REFERENCE = ("ddim", 500)
CANDIDATES = (("ddim", 50), ("dpm++", 20))


def quality_notes(checkpoint: Path, log: Callable[[str], None], num_prompts: int = 4
                  ) -> list[str]:
    import torch

    from t2s_torch.checkpoint import load_model
    from t2s_torch.diffusion import TextBatch
    from t2s_torch.sample import generate
    from t2s_torch.text_encoder import TextEncoder

    device = torch.device("cpu")
    config, model, path = load_model(checkpoint, device)
    prompts = sample_prompts(num_prompts, seed=0)
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
