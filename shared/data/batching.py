"""`--batch-size auto` arithmetic both backends share."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable


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


def fit_measured(per_clip_bytes: float, free_bytes: float, target: int,
                 log: Callable[[str], None] = print) -> int:
    """The micro-batch whose measured per-clip cost fits 70% of `free_bytes`: for devices that
    swap (or get killed) rather than raise when memory runs out, so the size cannot be tried."""
    usable = free_bytes * 0.7
    size = fitting_batch(per_clip_bytes, usable, target)
    log(f"--batch-size auto: ~{per_clip_bytes / 2**20:.0f} MiB per clip, "
        f"{usable / 2**30:.1f} GiB usable: micro-batch {size}")
    return size
