"""GroupNorm -> per-sample affine -> SiLU, the twin of `t2s_torch/norm_silu.py`.

PyTorch needs a hand-written autograd node there to keep memory and its slow channels-last
GroupNorm backward in check; here the plain composition is the whole story: MLX keeps only what
the backward graph reads, and `mx.compile` (the trainer compiles its step) fuses the elementwise
tail. One function with one signature in both backends keeps `ResBlock3D` line-for-line alike.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def group_norm_silu(norm: nn.GroupNorm, x: mx.array, scale: mx.array | None = None,
                    shift: mx.array | None = None) -> mx.array:
    """`silu(norm(x) * (1 + scale) + shift)` (or `silu(norm(x))`), x (B, F, H, W, C), scale and
    shift (B, C)."""
    if (scale is None) != (shift is None):
        raise ValueError("group_norm_silu: give both scale and shift, or neither")
    h = norm(x)
    if scale is not None:
        spatial = (scale.shape[0],) + (1,) * (x.ndim - 2) + (scale.shape[-1],)
        h = h * (1 + scale.reshape(spatial)) + shift.reshape(spatial)
    return nn.silu(h)
