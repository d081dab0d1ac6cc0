"""The learning-rate schedule both backends follow: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step: int, base_lr: float, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warm-up ramps linearly from base_lr / warmup_steps to base_lr over `warmup_steps` steps, so
    Adam's first, noisiest moments take small steps; the cosine then decays to
    `min_ratio * base_lr` at `total_steps` and stays there.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_ratio + (1.0 - min_ratio) * cosine)
