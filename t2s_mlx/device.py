"""Which device MLX runs on, and what it is: the Apple GPU (Metal, or CUDA builds) or the CPU.

The twin of `t2s_torch/device.py`. MLX picks its device globally (`mx.set_default_device`), so
selecting one sets it for the process, which is how MLX programs are written.
"""

from __future__ import annotations

import os
import platform

import mlx.core as mx

from shared.allocator import configure_malloc
from shared.batching import physical_ram_bytes


class DeviceError(ValueError):
    """A device that cannot be used here; the message says why and what to pass."""


def select_device(requested: str | None = None) -> mx.Device:
    """Set and return MLX's default device: None / "auto" = the GPU if there is one, else CPU.

    Choosing the CPU also tunes this process's malloc for big arrays (`shared.allocator`).
    """
    text = (requested or "auto").strip().lower()
    if text not in ("auto", "gpu", "cpu"):
        raise DeviceError(f"device {requested!r} is not one of auto, gpu, cpu; "
                          "use --device gpu or --device cpu")
    gpu = mx.is_available(mx.gpu)
    if text == "gpu" and not gpu:
        raise DeviceError(f"device 'gpu': this MLX build ({mx.__version__}, {platform.system()}) "
                          "has no GPU backend (Metal needs Apple Silicon); use --device cpu")
    device = mx.gpu if text == "gpu" or (text == "auto" and gpu) else mx.cpu
    if device == mx.cpu:
        configure_malloc()
    mx.set_default_device(device)
    return mx.default_device()


def memory_info() -> dict[str, int]:
    """Bytes MLX may use (its memory limit: on a Mac, the share of unified memory the GPU may
    wire) and bytes it holds now; used by `--batch-size auto`."""
    total = int(mx.get_memory_limit()) if mx.is_available(mx.gpu) else physical_ram_bytes() or 0
    info = {"total": total, "allocated": int(mx.get_active_memory())}
    info["free"] = max(0, info["total"] - info["allocated"])
    return info


def describe_device() -> dict[str, str]:
    """What logs and TensorBoard record about where a run ran."""
    info = {"device": str(mx.default_device()), "mlx": mx.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": str(os.cpu_count())}
    details = mx.device_info()
    info.update({k: str(v) for k, v in details.items()})
    info["memory_limit_gib"] = f"{memory_info()['total'] / 2**30:.1f}"
    return info
