"""`--batch-size auto` arithmetic both backends share."""

from __future__ import annotations


def fitting_batch(per_clip_bytes: float, free_bytes: float, target: int) -> int:
    """The largest power-of-two micro-batch, at most `target`, whose memory fits `free_bytes`
    (at least 1: the caller's probe already ran a batch of one)."""
    size = 1
    while size * 2 <= target and (size * 2) * per_clip_bytes <= free_bytes:
        size *= 2
    return size
