"""Which device MLX runs on, mixed precision on it, what fits in its memory (`--batch-size auto`)
and what it is: the Apple GPU (Metal, or CUDA builds) or the CPU.

The twin of `t2s_torch/device.py`. MLX picks its device globally (`mx.set_default_device`), so
selecting one sets it for the process, which is how MLX programs are written.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from shared.app.allocator import configure_malloc
from shared.data.batching import fit_measured, physical_ram_bytes


class DeviceError(ValueError):
    """A device that cannot be used here; the message says why and what to pass."""


def select_device(requested: str | None = None) -> mx.Device:
    """Set and return MLX's default device: None / "auto" = the GPU if there is one, else CPU.

    Choosing the CPU also tunes this process's malloc for big arrays (`shared.app.allocator`).
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


def mixed_value_and_grad(model: nn.Module, fn: Callable[..., mx.array],
                         dtype: mx.Dtype) -> Callable[..., tuple[mx.array, Any]]:
    """`nn.value_and_grad` with float32 master weights and `dtype` compute.

    MLX has no autocast, so the weights are cast inside the differentiated function: the forward
    and backward run in `dtype` (half the activation memory, the fast matmul path on Apple
    GPUs), while the cast's derivative hands float32 gradients to the float32 optimizer state.
    The model holds its float32 weights again when the call returns.
    """

    def cast(p: mx.array) -> mx.array:
        return p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p

    def inner(params: Any, *args: Any) -> mx.array:
        model.update(tree_map(cast, params))
        return fn(*args)

    value_and_grad = mx.value_and_grad(inner)

    def wrapped(*args: Any) -> tuple[mx.array, Any]:
        params = model.trainable_parameters()
        try:
            return value_and_grad(params, *args)
        finally:
            model.update(params)

    return wrapped


def memory_info() -> dict[str, int]:
    """Bytes MLX may use (its memory limit: on a Mac, the share of unified memory the GPU may
    wire) and bytes it holds now; used by `--batch-size auto`."""
    total = int(mx.get_memory_limit()) if mx.is_available(mx.gpu) else physical_ram_bytes() or 0
    info = {"total": total, "allocated": int(mx.get_active_memory())}
    info["free"] = max(0, info["total"] - info["allocated"])
    return info


def find_batch_size(probe: Callable[[int], None], target: int,
                    log: Callable[[str], None] = print) -> int:
    """The largest micro-batch (a power of two, at most `target`) whose training step fits.

    MLX allocates lazily from unified memory and does not raise when it runs out (the system
    swaps), so the peak memory of probes at batch 1 and 2 gives a per-clip cost, and the batch
    is what fits in MLX's memory limit (the share of RAM the GPU may use).
    """
    mx.reset_peak_memory()
    probe(1)
    one = mx.get_peak_memory()
    mx.reset_peak_memory()
    probe(2)
    two = mx.get_peak_memory()
    return fit_measured(max(two - one, one // 2, 1), memory_info()["free"], target, log)


def describe_device() -> dict[str, str]:
    """What logs and TensorBoard record about where a run ran."""
    info = {"device": str(mx.default_device()), "mlx": mx.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": str(os.cpu_count())}
    details = mx.device_info()
    info.update({k: str(v) for k, v in details.items()})
    info["memory_limit_gib"] = f"{memory_info()['total'] / 2**30:.1f}"
    return info
