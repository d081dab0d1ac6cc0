"""`shared.allocator.configure_malloc`: freed big blocks are reused, not faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# A tensor's life as torch's CPU allocator lives it: malloc, write every byte, free.
PROBE = """
import ctypes, resource
from shared.allocator import configure_malloc
tuned = configure_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def tensor(size=512 << 20):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
tensor()  # the step before
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
tensor()  # the same size again: the next step
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_of_second_allocation(env: dict[str, str]) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt tuning is glibc's")
def test_tuned_malloc_reuses_freed_big_blocks():
    pages = (512 << 20) // os.sysconf("SC_PAGE_SIZE")
    tuned, faults = faults_of_second_allocation({})
    default_tuned, default_faults = faults_of_second_allocation({"T2S_MALLOC_TUNING": "0"})
    assert tuned and not default_tuned
    assert default_faults > pages // 2  # glibc's default: a fresh mmap, every page faulted in
    assert faults < pages // 20  # tuned: the freed heap block comes back as it was
