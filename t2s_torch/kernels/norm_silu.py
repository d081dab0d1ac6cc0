"""GroupNorm -> per-sample affine -> SiLU as one autograd node.

Why: the plain composition `silu(norm(x) * (1 + scale) + shift)` keeps three or four full-size
activations alive for the backward pass (the norm output, the affine output, the SiLU input) and
runs PyTorch's channels-last GroupNorm backward, which on the CPU is several times slower than
its channels-first one (measured 88 vs 16 ms on a 64 x 12 x 128 x 128 clip). This node keeps
only its input `x` and per-group statistics; the backward recomputes the pre-activation in one
pass and writes the GroupNorm gradient as `dx = dz * alpha + x * beta + gamma` with per-channel
coefficients, i.e. broadcasts that are cheap in either memory layout.

Math (per sample, group g, channel c in g, n = elements per group):
    xhat = (x - mean_g) * rstd_g,   z = xhat * a_c + b_c,   y = silu(z)
    a = weight * (1 + scale),       b = bias * (1 + scale) + shift
    dz = dy * silu'(z),  S1_c = sum dz,  S2_c = sum dz * xhat
    dx = rstd_g * (a_c dz - mean_g(a dz) - xhat * mean_g(a dz xhat))
with mean_g(a dz) = sum_{c in g} a_c S1_c / n and mean_g(a dz xhat) = sum_{c in g} a_c S2_c / n.

With a conv after it (`conv=`, the ResBlocks' pre-activation convs and `conv_out`), the node
also runs that conv and keeps not even its own output: the backward recomputes it from `x` for
the conv's weight gradient (`aten.convolution_backward`, the kernel autograd would call), so the
ResBlock keeps its input and its conv inputs' sources only.

MLX needs no such node: its `group_norm_silu` (`t2s_mlx/unet.py`) is the plain composition, as
MLX's graph does not keep intermediates that nothing reads and `mx.compile` fuses the tail.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Device types whose native GroupNorm kernels (`native_group_norm`, returning mean and rstd) this
# node relies on; elsewhere (MPS) `group_norm_silu` falls back to the plain composition.
FUSED_DEVICE_TYPES = ("cpu", "cuda")
CHANNELS_LAST = torch.channels_last_3d


def _per_channel(stat: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, G) group statistics -> (B, C): each group's value repeated for its channels."""
    b, g = stat.shape
    return stat.reshape(b, g, 1).expand(b, g, channels // g).reshape(b, channels)


class GroupNormSiLUFunction(torch.autograd.Function):
    """y = silu(group_norm(x) * a + b), a and b per (sample, channel), then optionally a
    stride-1 conv3d of y; see the module docstring.

    With the conv, y itself is never kept: the backward recomputes it from x (one elementwise
    pass) for the conv's weight gradient, so the whole node keeps x and statistics only.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                eps: float, scale: torch.Tensor | None, shift: torch.Tensor | None,
                conv_weight: torch.Tensor | None = None, conv_bias: torch.Tensor | None = None,
                padding: tuple[int, int, int] = (0, 0, 0)) -> torch.Tensor:
        x = _dense(x)
        b, c = x.shape[:2]
        xhat, mean, rstd = torch.native_group_norm(x, None, None, b, c, x.numel() // (b * c),
                                                   groups, eps)
        a, beta = _affine(weight, bias, scale, shift, b)
        view = (b, c) + (1,) * (x.dim() - 2)
        y = F.silu(xhat.mul_(a.reshape(view)).add_(beta.reshape(view)), inplace=True)
        ctx.groups, ctx.padding = groups, padding
        ctx.has_conv_bias = conv_bias is not None
        ctx.save_for_backward(x, weight, bias, scale, mean, rstd, a, beta, conv_weight)
        if conv_weight is None:
            return y
        return F.conv3d(y, conv_weight, conv_bias, padding=padding)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, bias, scale, mean, rstd, a, beta, conv_weight = ctx.saved_tensors
        b, c = x.shape[:2]
        view = (b, c) + (1,) * (x.dim() - 2)
        dims = tuple(range(2, x.dim()))
        mean_c, rstd_c = _per_channel(mean, c), _per_channel(rstd, c)
        a, beta = a.to(mean.dtype), beta.to(mean.dtype)
        k = a * rstd_c  # z = x * k + (beta - mean * k): the pre-activation again, one pass
        z_offset = (beta - mean_c * k).reshape(view).to(x.dtype)
        z_scale = k.reshape(view).to(x.dtype)
        d_conv_weight = d_conv_bias = None
        if conv_weight is None:
            dy = grad
        else:
            # silu(z) in z's own buffer, z rebuilt after: the conv's backward runs beside one
            # recomputed activation rather than two (the node's peak, at the widest concat
            # input of the up path, is one input-sized buffer lower).
            y = F.silu(torch.addcmul(z_offset, x, z_scale), inplace=True)
            dy, d_conv_weight, d_conv_bias = torch.ops.aten.convolution_backward(
                grad.contiguous(memory_format=_layout(x)), y, conv_weight,
                [conv_weight.shape[0]] if ctx.has_conv_bias else None, [1, 1, 1],
                list(ctx.padding), [1, 1, 1], False, [0, 0, 0], 1,
                [True, True, ctx.has_conv_bias])
            del y
        z = torch.addcmul(z_offset, x, z_scale)
        # dz = dy * silu'(z), written over dy when dy is ours (the conv's input gradient).
        dz = torch.ops.aten.silu_backward.grad_input(dy, z, grad_input=dy) \
            if conv_weight is not None else torch.ops.aten.silu_backward(dy, z)
        del dy
        dz_x = torch.mul(dz, x, out=z)  # z is spent: its buffer takes dz * x
        del z
        s1 = dz.sum(dims, dtype=mean.dtype)  # (B, C): sum dz
        s2 = (dz_x.sum(dims, dtype=mean.dtype) - mean_c * s1) * rstd_c  # sum dz * xhat
        n = x.numel() // (b * ctx.groups)
        m1 = _per_channel((a * s1).reshape(b, ctx.groups, -1).sum(-1) / n, c)
        m2 = _per_channel((a * s2).reshape(b, ctx.groups, -1).sum(-1) / n, c)
        # dx = rstd * a * dz - rstd * m1 - rstd^2 * m2 * (x - mean)
        coef_x = -rstd_c * rstd_c * m2
        const = -rstd_c * m1 - coef_x * mean_c
        dx = torch.addcmul(const.reshape(view).to(x.dtype), x, coef_x.reshape(view).to(x.dtype),
                           out=dz_x)
        dx.addcmul_(dz, (rstd_c * a).reshape(view).to(x.dtype))
        # a = weight * (1 + scale), b = bias * (1 + scale) + shift; s2 = dL/da, s1 = dL/db
        one_plus = 1 if scale is None else 1 + scale.to(mean.dtype)
        d_weight = (s2 * one_plus).sum(0).to(weight.dtype)
        d_bias = (s1 * one_plus).sum(0).to(bias.dtype)
        d_scale = d_shift = None
        if scale is not None:
            d_scale = (s2 * weight + s1 * bias).to(scale.dtype)
            d_shift = s1.to(scale.dtype)
        return (dx, d_weight, d_bias, None, None, d_scale, d_shift, d_conv_weight, d_conv_bias,
                None)


def _affine(weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None,
            shift: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The norm's affine folded with the per-sample modulation: (B, C) multiplier and offset."""
    if scale is None:
        return weight.expand(batch, -1), bias.expand(batch, -1)
    return weight * (1 + scale), bias * (1 + scale) + shift


def group_norm_silu(norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None = None,
                    shift: torch.Tensor | None = None, conv: nn.Conv3d | None = None
                    ) -> torch.Tensor:
    """`silu(norm(x) * (1 + scale) + shift)` (or `silu(norm(x))`), scale and shift (B, C);
    then `conv(...)` when a stride-1 `conv` is given.

    Under autocast the norm runs in float32, as autocast runs `group_norm` itself, and the conv
    stays outside the node so autocast still lowers it.
    """
    if (scale is None) != (shift is None):
        raise ValueError("group_norm_silu: give both scale and shift, or neither")
    device_type = x.device.type
    # Under torch.compile the plain ops: dynamo cannot trace this node's backward (its `out=`
    # buffers are channels-last), and inductor fuses norm, modulation and SiLU by itself.
    if device_type not in FUSED_DEVICE_TYPES or torch.compiler.is_compiling():
        h = norm(x)
        if scale is not None:
            h = h * (1 + _spatial(scale, x)) + _spatial(shift, x)
        h = F.silu(h)
        return h if conv is None else conv(h)
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            h = group_norm_silu(norm, x.float(), _maybe_float(scale), _maybe_float(shift))
        return h if conv is None else conv(h)
    if conv is None:
        return GroupNormSiLUFunction.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps,
                                           scale, shift)
    if tuple(conv.stride) != (1, 1, 1) or tuple(conv.dilation) != (1, 1, 1) or conv.groups != 1 \
            or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError(f"group_norm_silu fuses only stride-1 zero-padded convs, not {conv}")
    return GroupNormSiLUFunction.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps,
                                       scale, shift, conv.weight, conv.bias,
                                       tuple(conv.padding))


def _layout(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=CHANNELS_LAST):
        return CHANNELS_LAST
    return torch.contiguous_format


def _dense(x: torch.Tensor) -> torch.Tensor:
    """`x` with the canonical strides of its dense layout, which the GroupNorm kernels check.

    A dense tensor can carry any stride on a size-1 dim (a batch of 1 out of oneDNN does), so
    re-striding it addresses the same memory; anything not dense is copied channels-first.
    """
    if _layout(x) == CHANNELS_LAST:
        n, c, f, h, w = x.shape
        return x.as_strided(x.shape, (c * f * h * w, 1, h * w * c, w * c, c))
    if x.is_contiguous():
        return x.as_strided(x.shape, _strides(x.shape))
    return x.contiguous()


def _strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step = step * size  # not in place: under jit tracing sizes are tensors
    return tuple(reversed(strides))


def _spatial(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape + (1,) * (like.dim() - 2))


def _maybe_float(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()
