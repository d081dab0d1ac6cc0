"""The factorized conv's temporal half, (k, 1, 1) over frames, with a faster weight gradient.

Why: on the CPU, channels-last, oneDNN runs this conv's forward and input gradient near its
3x3x3 speed (~170-190 GFLOP/s on a 2-core x86) but its weight gradient at 45-70 GFLOP/s, the
slowest kernel of a factorized training step. That gradient is k matrix products over
frame-shifted views of the channels-last tensors, dW[:, :, j] = sum_t dy[t]^T x[t + j - k//2]
(each a (C_out, pixels) x (pixels, C_in) product), which batched matmul runs at 100-145
GFLOP/s on the same machine, split over the batch and into one slice per thread (measured per
shape: 64 ch at 128^2, 128 at 64^2, 256 at 32^2; `benchmarks/run.py` times the whole step).
Forward and input gradient stay oneDNN's.

MLX runs the plain conv (`t2s_mlx/unet.py: FactorizedConv3d`): it computes the weight gradient
itself and has no such gap to close on Apple Silicon that we have measured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS_LAST = torch.channels_last_3d


class TemporalConvFunction(torch.autograd.Function):
    """conv3d with a (k, 1, 1) kernel, stride 1, zero padding k // 2 over frames."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return F.conv3d(x, weight, bias, padding=(weight.shape[2] // 2, 0, 0))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=CHANNELS_LAST)
        dx = d_weight = d_bias = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1, 1], [weight.shape[2] // 2, 0, 0], [1, 1, 1],
                False, [0, 0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            d_weight = frame_weight_grad(grad, x, weight.shape[2])
            d_weight = d_weight.contiguous(memory_format=_weight_layout(weight))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            d_bias = grad.sum((0, 2, 3, 4))
        return dx, d_weight, d_bias


def frame_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel_frames: int) -> torch.Tensor:
    """The (C_out, C_in, k, 1, 1) weight gradient of a (k, 1, 1) conv with padding k // 2, from
    its output gradient `grad` (B, C_out, F, H, W) and input `x` (B, C_in, F, H, W)."""
    b, c_in, frames = x.shape[:3]
    c_out = grad.shape[1]
    xs = x.permute(0, 2, 3, 4, 1).reshape(b, frames, -1, c_in)
    gs = grad.permute(0, 2, 3, 4, 1).reshape(b, frames, -1, c_out)
    pad = kernel_frames // 2
    taps = []
    for j in range(kernel_frames):
        shift = j - pad  # output frame t reads input frame t + shift through tap j
        g = gs[:, max(0, -shift):frames - max(0, shift)]
        xj = xs[:, max(0, shift):frames - max(0, -shift)]
        taps.append(_summed_products(g.reshape(b, -1, c_out), xj.reshape(b, -1, c_in)))
    return torch.stack(taps, 2)[..., None, None]


def _summed_products(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum over batch and rows of g^T x: g (B, R, C_out), x (B, R, C_in) -> (C_out, C_in).

    Each sample's rows are cut into enough slices for every thread to get one: one long
    (C, R) x (R, C) product runs on one core's worth of work split poorly (measured ~2x slower).
    """
    b, rows = g.shape[:2]
    pieces = max(1, -(-torch.get_num_threads() // b))
    while pieces > 1 and rows % pieces:
        pieces -= 1
    g = g.reshape(b * pieces, rows // pieces, g.shape[2])
    x = x.reshape(b * pieces, rows // pieces, x.shape[2])
    return torch.bmm(g.transpose(1, 2), x).sum(0)


def _weight_layout(weight: torch.Tensor) -> torch.memory_format:
    if not weight.is_contiguous() and weight.is_contiguous(memory_format=CHANNELS_LAST):
        return CHANNELS_LAST
    return torch.contiguous_format


def temporal_conv(conv: nn.Conv3d, h: torch.Tensor) -> torch.Tensor:
    """`conv(h)` for the factorized conv's temporal half; through `TemporalConvFunction` where
    it is measured faster (CPU, float32, channels-last activations, no autocast, not under
    torch.compile, which lowers the plain conv itself)."""
    if (h.device.type == "cpu" and h.dtype == torch.float32 and conv.weight.dtype == h.dtype
            and not torch.compiler.is_compiling() and not h.is_contiguous()
            and h.is_contiguous(memory_format=CHANNELS_LAST)
            and not torch.is_autocast_enabled("cpu")):
        return TemporalConvFunction.apply(h, conv.weight, conv.bias)
    return conv(h)
