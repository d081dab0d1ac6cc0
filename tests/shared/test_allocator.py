"""`shared.app.allocator`: freed big blocks are reused, not faulted in again; and given back on
request even from inside the heap."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# A tensor's life as torch's CPU allocator lives it: malloc, write every byte, free.
PROBE = """
import ctypes, resource
from shared.app.allocator import configure_malloc
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


# A big block freed below a live one: a hole the heap cannot trim from its top.
HOLE_PROBE = """
import ctypes
from shared.app.allocator import configure_malloc, release_free_memory
configure_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1])
size = 256 << 20
hole = libc.malloc(size)
ctypes.memset(hole, 1, size)
above = libc.malloc(1 << 20)
ctypes.memset(above, 1, 1 << 20)
libc.free(hole)
kept = resident()
released = release_free_memory()
print(released, kept - resident())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_release_free_memory_returns_a_hole_inside_the_heap():
    pages = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
    out = subprocess.run([sys.executable, "-c", HOLE_PROBE], capture_output=True, text=True,
                         env=dict(os.environ), timeout=120, check=True).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) > pages * 9 // 10  # the freed block's pages left the resident set
    off = subprocess.run([sys.executable, "-c", HOLE_PROBE], capture_output=True, text=True,
                         env={**os.environ, "T2S_MALLOC_TUNING": "0"}, timeout=120,
                         check=True).stdout.split()
    assert off[0] == "False"  # switched off: glibc's own defaults, nothing called


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallinfo2 is glibc's")
def test_release_free_memory_leaves_slack_below_its_threshold():
    probe = HOLE_PROBE.replace("release_free_memory()", "release_free_memory(keep=1000.0)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=dict(os.environ), timeout=120, check=True).stdout.split()
    assert out[0] == "False"  # 256 MB free is far below 1000x what is in use: kept
    assert abs(int(out[1])) < (16 << 20) // os.sysconf("SC_PAGE_SIZE")
