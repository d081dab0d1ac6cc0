"""`--batch-size auto` arithmetic both backends share."""

from __future__ import annotations

import os
import resource


def fitting_batch(per_clip_bytes: float, free_bytes: float, target: int) -> int:
    """The largest power-of-two micro-batch, at most `target`, whose memory fits `free_bytes`
    (at least 1: the caller's probe already ran a batch of one)."""
    size = 1
    while size * 2 <= target and (size * 2) * per_clip_bytes <= free_bytes:
        size *= 2
    return size


def physical_ram_bytes() -> int | None:
    """The machine's RAM (None where the OS does not say): the CPU's memory budget, and what a
    benchmark child killed for memory ran out of."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def max_rss_bytes() -> int:
    """This process's peak resident memory: the CPU's (and unified memory's) measure of what a
    probe or a benchmark used (ru_maxrss is bytes on macOS, KiB elsewhere)."""
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
