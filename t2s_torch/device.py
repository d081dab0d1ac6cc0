"""Which device to run on, mixed precision on it, what fits in its memory (`--batch-size
auto`) and what it is: CUDA, MPS or CPU.

Every failure names the device, why it cannot be used, and the flag that gets past it, because
the usual cause is a CPU-only torch build or a laptop asked for `--device cuda`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch

from shared.app.allocator import configure_malloc
from shared.data.batching import fit_measured, max_rss_bytes, physical_ram_bytes

MIXED_PRECISION = ("no", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE_RE = re.compile(r"^(cpu|cuda|mps)(?::(\d+))?$")


class DeviceError(ValueError):
    """A device or precision that cannot be used here; the message says why and what to pass."""


def select_device(requested: str | torch.device | None = None) -> torch.device:
    """The torch device to run on.

    None / "auto": CUDA, else MPS, else CPU. "cpu", "cuda", "cuda:N", "mps" are taken as asked
    and raise DeviceError when this machine or this torch build cannot provide them. Choosing the
    CPU also tunes this process's malloc for big tensors (`shared.app.allocator`: 1.7x faster
    training steps measured on Linux).
    """
    if isinstance(requested, torch.device):
        requested = str(requested)
    text = (requested or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return _cpu_device()
    match = _DEVICE_RE.match(text)
    if match is None:
        raise DeviceError(f"device {requested!r} is not one of auto, cpu, cuda, cuda:N, mps; "
                          "use e.g. --device cuda or --device cpu")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        return _cpu_device()
    if kind == "cuda":
        return _cuda_device(requested, None if index is None else int(index))
    return _mps_device(requested, None if index is None else int(index))


def _cpu_device() -> torch.device:
    configure_malloc()
    return torch.device("cpu")


def _cuda_device(requested: str, index: int | None) -> torch.device:
    fix = "use --device cpu (or --device auto)"
    if torch.version.cuda is None and torch.version.hip is None:
        raise DeviceError(
            f"device {requested!r}: torch {torch.__version__} was built without CUDA (a CPU-only "
            f"build); install a CUDA build of torch (https://pytorch.org/get-started), or {fix}")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {requested!r}: no CUDA device visible (no NVIDIA driver loaded, no GPU, or "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!s} hides "
            f"them; `nvidia-smi` shows what the driver sees); {fix}")
    count = torch.cuda.device_count()
    if index is None:
        index = torch.cuda.current_device()
    if index >= count:
        raise DeviceError(f"device {requested!r}: only {count} CUDA device(s) visible "
                          f"(cuda:0..cuda:{count - 1}); pick one of those, or {fix}")
    return torch.device("cuda", index)


def _mps_device(requested: str, index: int | None) -> torch.device:
    fix = "use --device cpu (or --device auto)"
    if not torch.backends.mps.is_built():
        raise DeviceError(f"device {requested!r}: torch {torch.__version__} was built without "
                          f"MPS (MPS needs macOS 12.3+ on Apple Silicon); {fix}")
    if not _mps_available():
        raise DeviceError(f"device {requested!r}: MPS is not available (MPS needs macOS 12.3+ "
                          f"on Apple Silicon, and no x86 Python under Rosetta); {fix}")
    if index not in (None, 0):
        raise DeviceError(f"device {requested!r}: there is only one MPS device, mps:0; {fix}")
    return torch.device("mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


# --------------------------------------------------------------------------- mixed precision


def autocast_context(device: torch.device | str, mixed_precision: str = "no"
                     ) -> contextlib.AbstractContextManager[Any]:
    """A context manager running the forward pass in `mixed_precision` ("no", "bf16", "fp16").

    "no": a nullcontext. Otherwise `torch.autocast` on CUDA (bf16 where the GPU has it, fp16),
    MPS (fp16; bf16 from macOS 14) and CPU (bf16 only). One context may be entered again and
    again, one `with` after another (not nested).
    """
    device = torch.device(device)
    if mixed_precision not in MIXED_PRECISION:
        raise DeviceError(f"mixed precision {mixed_precision!r}: use one of "
                          f"{', '.join(MIXED_PRECISION)} (--set train.mixed_precision=bf16)")
    if mixed_precision == "no":
        return contextlib.nullcontext()
    fix = "pass --set train.mixed_precision=no"
    if device.type == "cpu" and mixed_precision == "fp16":
        raise DeviceError("mixed precision fp16 is not supported well on the CPU (slow fp16 "
                          f"kernels, no gradient scaling); use bf16, or {fix}")
    if device.type == "cuda" and mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
        major, minor = torch.cuda.get_device_capability(device)
        raise DeviceError(f"mixed precision bf16: {torch.cuda.get_device_name(device)} "
                          f"(compute capability {major}.{minor}) has no bf16; bf16 needs "
                          f"Ampere (8.0) or newer; use fp16, or {fix}")
    if device.type == "mps" and mixed_precision == "bf16" and not _macos_at_least(14, 0):
        raise DeviceError(f"mixed precision bf16 on MPS needs macOS 14+; use fp16, or {fix}")
    if device.type not in ("cuda", "mps", "cpu"):
        raise DeviceError(f"mixed precision on device {device}: only cuda, mps and cpu are "
                          f"supported; {fix}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        context = torch.autocast(device.type, dtype=_DTYPES[mixed_precision])
    if not getattr(context, "_enabled", True):  # torch warns and disables instead of failing
        why = "; ".join(str(w.message).splitlines()[0] for w in caught) or "not supported"
        raise DeviceError(f"mixed precision {mixed_precision} on {device}: {why}; {fix}")
    return context


def needs_grad_scaler(device: torch.device | str, mixed_precision: str) -> bool:
    """Whether training needs a `torch.amp.GradScaler`: fp16 on CUDA (bf16 keeps fp32's range).

    MPS fp16 is not scaled: GradScaler on MPS is missing or unreliable in the torch versions
    this project supports, so bf16 (macOS 14+) is the mixed precision to use there.
    """
    return mixed_precision == "fp16" and torch.device(device).type == "cuda"


def _macos_at_least(major: int, minor: int) -> bool:
    check = getattr(torch.backends.mps, "is_macos_or_newer", None)
    if check is not None:
        return bool(check(major, minor))
    version = platform.mac_ver()[0]
    if not version:
        return False
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()] + [0]
    return (parts[0], parts[1]) >= (major, minor)


# --------------------------------------------------------------------------- what the device is


def prefers_channels_last(device: torch.device | str) -> bool:
    """Whether the UNet runs its activations channels-last (`UNet3D.use_channels_last`) here.

    On the CPU oneDNN's conv3d kernels are ~1.2-1.8x faster channels-last for every conv shape
    of the `small` preset and the whole training step ~20% faster (measured on a 2-core x86;
    `benchmarks/run.py --channels-last on|off` repeats it). CUDA and MPS stay channels-first
    until they are measured.
    """
    return torch.device(device).type == "cpu"


def optimizer_options(device: torch.device | str) -> dict[str, bool]:
    """AdamW's implementation: the fused kernel where torch has one (CPU, CUDA), one update
    for all parameters instead of a Python loop of small ops per parameter; `foreach`
    elsewhere."""
    return {"fused": True} if torch.device(device).type in ("cpu", "cuda") else {"foreach": True}


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on `device` (for timings); a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def memory_info(device: torch.device | str) -> dict[str, int]:
    """Memory in bytes, with only the keys the framework can tell.

    "total" and "free" (what can still be allocated); on CUDA also "allocated" and "reserved"
    by this process's caching allocator, on MPS "allocated" (driver). On the CPU: physical RAM
    (capped by a cgroup limit where one is set) and MemAvailable from /proc/meminfo.
    """
    device = torch.device(device)
    info: dict[str, int] = {}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        info.update(total=int(total), free=int(free),
                    allocated=int(torch.cuda.memory_allocated(device)),
                    reserved=int(torch.cuda.memory_reserved(device)))
    elif device.type == "mps":
        recommended = getattr(torch.mps, "recommended_max_memory", None)
        allocated = int(torch.mps.driver_allocated_memory())
        info["allocated"] = allocated
        if recommended is not None:
            total = int(recommended())
            info.update(total=total, free=max(total - allocated, 0))
    else:
        total = physical_ram_bytes()
        limit = _cgroup_limit()
        if limit is not None:
            total = min(total, limit) if total else limit
        if total:
            info["total"] = total
        available = _meminfo_available()
        if available is not None:
            info["free"] = min(available, total) if total else available
    return info


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_limit() -> int | None:
    """A container's memory limit (cgroup v2, then v1), or None when there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                value = f.read().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 1 << 60:  # v1 writes a huge number for "none"
            return int(value)
    return None


def find_batch_size(probe: Callable[[int], None], target: int, device: torch.device,
                    log: Callable[[str], None] = print) -> int:
    """The largest micro-batch (a power of two, at most `target`) whose training step fits.

    CUDA: try doubling sizes until one runs out of memory. CPU and MPS never raise on
    exhaustion (they swap, or the OS kills the process), so there the peak memory of probes at
    batch 1 and 2 gives a per-clip cost (`shared.data.batching.fit_measured`).
    """
    if device.type == "cuda":
        best, size = 0, 1
        while size <= target:
            try:
                torch.cuda.reset_peak_memory_stats(device)
                probe(size)
                best, size = size, size * 2
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                torch.cuda.empty_cache()
        if best == 0:
            raise RuntimeError("even a micro-batch of 1 does not fit in GPU memory; use a "
                               "smaller preset or --set model.gradient_checkpointing=true")
        log(f"--batch-size auto: micro-batch {best} fits on {device}")
        return best
    before = _peak_bytes(device)
    probe(1)
    one = _peak_bytes(device)
    probe(2)
    two = _peak_bytes(device)
    return fit_measured(max(two - one, one - before, 1), memory_info(device).get("free", 0),
                        target, log)


def _peak_bytes(device: torch.device) -> int:
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    return max_rss_bytes()


def describe_device(device: torch.device | str) -> dict[str, str]:
    """Strings about the device and the software, for logs and TensorBoard."""
    device = torch.device(device)
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count() or 0),
        "torch_threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    cuda=str(torch.version.cuda or f"hip {torch.version.hip}"),
                    cudnn=str(torch.backends.cudnn.version()),
                    device_count=str(torch.cuda.device_count()),
                    bf16=str(torch.cuda.is_bf16_supported()))
    elif device.type == "mps":
        info.update(name=f"Apple {platform.machine()} GPU (MPS)",
                    macos=platform.mac_ver()[0] or "unknown")
    else:
        info["name"] = _cpu_name()
    total = memory_info(device).get("total")
    if total:
        info["memory_total"] = f"{total / 2**30:.1f} GiB"
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
