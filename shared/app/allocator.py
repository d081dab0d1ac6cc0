"""Keep glibc's malloc from handing big tensors back to the kernel between training steps.

A CPU training step allocates and frees hundreds of activation tensors of tens to hundreds of MB.
glibc serves every block above its mmap threshold (at most 32 MB by default, adapting upwards)
with a fresh `mmap` and returns it with `munmap` on free, and trims the heap top whenever more
than the trim threshold lies free: so each step faults every page of every big tensor in
again, and the kernel zeroes each one. Measured on the `small` preset at 12 frames (torch, 2
cores): 29.5 s/step with 22 s of system time by default, 17.0 s with 1.4 s of system time after
`configure_malloc()`, for 9% more peak RSS (9.05 vs 8.27 GB; freed memory is kept for reuse).
Either threshold alone gets half of that at most (22.0 s and 34.9 s).

Process-wide by nature (there is one malloc per process), so it is applied where a process
commits to CPU work: both backends' `select_device` when it picks the CPU (training, sampling,
eval and the benchmark's children all go through it).
It is a no-op off glibc (macOS, musl) and can be switched off with T2S_MALLOC_TUNING=0.

The price is fragmentation: a heap that never shrinks holds every hole a step leaves between
live blocks. With gradient checkpointing (the mode that trades time for memory) the live peak
of `small` at 28 frames is 3.8 GB but the heap grew to 7.5 GB resident. `release_free_memory()`
(`malloc_trim(0)`: every free page inside the heap goes back to the kernel, the heap's layout
stays), called as each checkpointed segment's backward begins whenever the resident free heap
exceeds half the bytes in use, keeps the peak near 4.7-5.1 GB at no step time measurable at
28 frames (interleaved in one process); at 12 frames it cost 2-4 s of 26: the pages of a hole
that a later allocation reuses fault in (and are zeroed) again.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameters from <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to 1 GiB come from the heap; larger ones (rare) are still mmapped.
MMAP_THRESHOLD = 1 << 30
# Never trim the heap top: what a step freed, the next step reuses.
TRIM_THRESHOLD = (1 << 31) - 1
ENV_SWITCH = "T2S_MALLOC_TUNING"


def _glibc() -> ctypes.CDLL | None:
    if os.environ.get(ENV_SWITCH, "1") == "0" or platform.system() != "Linux":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def configure_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; True when both took effect."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (2.33+): byte counts of the whole heap."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def heap_use() -> tuple[int, int] | None:
    """(bytes in use, resident bytes beyond them): the second is the free heap the kernel still
    backs, plus the process's code and interpreter (a constant few hundred MB). None off glibc."""
    libc = _glibc()
    info = None if libc is None else getattr(libc, "mallinfo2", None)
    if info is None:
        return None
    info.restype = _MallInfo2
    heap = info()
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    used = heap.uordblks + heap.hblkhd
    return used, resident - used


def release_free_memory(keep: float = 0.0) -> bool:
    """Hand the heap's free pages back to the kernel (glibc `malloc_trim(0)`) when more of them
    are resident than `keep` times the bytes in use; True if it trimmed.

    A threshold, because every page given back faults in again (and is zeroed) when a later
    allocation reuses its hole: trimming at every chance cost ~13% of a 12-frame checkpointed step.
    """
    libc = _glibc()
    trim = None if libc is None else getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    if keep > 0:
        use = heap_use()
        if use is not None and use[1] <= keep * use[0]:
            return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
