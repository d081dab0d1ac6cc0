"""MLX-only speed code: `nn.Conv3d`'s maths run on the convolution paths Metal is fast at.

Why: MLX's Metal backend has its tuned kernels in the 2-D path (a Winograd kernel for 3x3
stride-1 convs; 1-D convs are dispatched to it too, ml-explore/mlx PR 2195) and none in the 3-D
one, so a 5-D `mx.conv3d` is reported 2-5x slower than the same work as per-frame 2-D convs
(ml-explore/mlx issue 3625). MLX itself decomposes small-depth 3-D convs into 2-D ones since PR
3785, but only for a batch of one; training batches are larger. `FastConv3d` is an `nn.Conv3d`
(same keys `weight` / `bias`, same (O, kF, kH, kW, I) layout and initialisation, so checkpoints,
converters and the torch twin see nothing) whose call picks, from the kernel alone:

- (1, kH, kW), e.g. the spatial half of a factorized conv, conv_in / conv_out, up / downsample:
  one 2-D conv over the frames folded into the batch, (B*F, H, W, C), channels-last, no copy;
- (kF, 1, 1), the temporal half: a (kF, 1) 2-D conv over (frames, pixels), (B, F, H*W, C) —
  what `t2s_torch/unet.py` does for the same conv, again without a copy;
- (1, 1, 1), the ResBlock skip: a matmul over the channels;
- (kF, kH, kW) with frame stride 1, the `full` 3x3x3 conv: the kF depth taps as one 2-D conv
  whose output channels are the taps stacked (weights (kF*O, kH, kW, I)), then each tap's output
  shifted by its frame offset and summed. That is PR 3785's decomposition (a sum over depth taps
  of 2-D convs) with the shift moved from the input to the output: no shifted input copies for
  a batch larger than one (they would also be kept for the backward pass, three times the
  input), one dispatch instead of kF. On this project's x86 CPU (MLX's CPU build) it measured
  faster than both `mx.conv3d` and the input-shifted taps (`benchmarks/conv_mlx.py`);
- anything else (dilation, a frame stride): `mx.conv3d`, the old path.

The results equal `mx.conv3d`'s up to float summation order (bit-equal on MLX's CPU build for
all but the full conv); `tests/mlx/test_fast_conv.py` holds every path to it, forward and
gradients. The torch backend has its own speed code for the same convs (`PointwiseConv3d`,
`FactorizedConv3d.mix_frames`, `t2s_torch/kernels/`).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

Triple = tuple[int, int, int]


def _triple(value: int | tuple[int, ...]) -> Triple:
    return (value,) * 3 if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def spatial_conv(x: mx.array, weight: mx.array, stride: Triple, padding: Triple) -> mx.array:
    """A (1, kH, kW) conv (no frame padding, frame stride 1) as one 2-D conv over B*F images."""
    b, f, h, w, c = x.shape
    o, _, kh, kw, _ = weight.shape
    y = mx.conv2d(x.reshape(b * f, h, w, c), weight.reshape(o, kh, kw, c),
                  stride=stride[1:], padding=padding[1:])
    return y.reshape(b, f, *y.shape[1:])


def temporal_conv(x: mx.array, weight: mx.array, padding: Triple) -> mx.array:
    """A (kF, 1, 1) stride-1 conv as a (kF, 1) 2-D conv over (frames, pixels): the pixels are
    the 2-D conv's width, so the input is used as laid out."""
    b, f, h, w, c = x.shape
    o, kf = weight.shape[:2]
    y = mx.conv2d(x.reshape(b, f, h * w, c), weight.reshape(o, kf, 1, c),
                  padding=(padding[0], 0))
    return y.reshape(b, y.shape[1], h, w, o)


def pointwise_conv(x: mx.array, weight: mx.array) -> mx.array:
    """A (1, 1, 1) conv as a matmul over the channels."""
    return x @ weight.reshape(weight.shape[0], weight.shape[-1]).T


def stacked_taps_conv(x: mx.array, weight: mx.array, stride: Triple,
                      padding: Triple) -> mx.array:
    """A (kF, kH, kW) conv with frame stride 1: out[t] = sum_k conv2d(x[t + k - pF], w[:, k]),
    computed as y_k = conv2d(x, w[:, k]) for all k in one 2-D conv, then out[t] = sum_k
    y_k[t + k - pF] (frames outside the clip are the zero padding)."""
    b, f, h, w, c = x.shape
    o, kf, kh, kw, _ = weight.shape
    pf = padding[0]
    taps = weight.transpose(1, 0, 2, 3, 4).reshape(kf * o, kh, kw, c)
    y = mx.conv2d(x.reshape(b * f, h, w, c), taps, stride=stride[1:], padding=padding[1:])
    y = y.reshape(b, f, *y.shape[1:3], kf, o)
    if pf:
        y = mx.pad(y, [(0, 0), (pf, pf)] + [(0, 0)] * 4)
    frames_out = f + 2 * pf - kf + 1
    out = y[:, 0:frames_out, :, :, 0]
    for k in range(1, kf):
        out = out + y[:, k:k + frames_out, :, :, k]
    return out


def fast_conv3d(x: mx.array, weight: mx.array, stride: int | tuple[int, ...] = 1,
                padding: int | tuple[int, ...] = 0,
                dilation: int | tuple[int, ...] = 1) -> mx.array:
    """`mx.conv3d(x, weight, stride, padding, dilation)` on the fastest path for its kernel
    (see the module docstring); (B, F, H, W, C) in, (B, F', H', W', O) out."""
    stride, padding, dilation = _triple(stride), _triple(padding), _triple(dilation)
    kf, kh, kw = weight.shape[1:4]
    if dilation != (1, 1, 1) or stride[0] != 1:
        return mx.conv3d(x, weight, stride, padding, dilation)
    if (kf, kh, kw) == (1, 1, 1) and padding == (0, 0, 0) and stride == (1, 1, 1):
        return pointwise_conv(x, weight)
    if kf == 1 and padding[0] == 0:
        return spatial_conv(x, weight, stride, padding)
    if (kh, kw) == (1, 1) and padding[1:] == (0, 0) and stride == (1, 1, 1):
        return temporal_conv(x, weight, padding)
    return stacked_taps_conv(x, weight, stride, padding)


class FastConv3d(nn.Conv3d):
    """`nn.Conv3d` (keys, shapes, layout, initialisation) computed by `fast_conv3d`.

    `reference_call` is the old path, plain `nn.Conv3d.__call__` (`mx.conv3d`), kept for the
    tests and the micro-benchmark that compare the two.
    """

    def __call__(self, x: mx.array) -> mx.array:
        y = fast_conv3d(x, self.weight, self.stride, self.padding, self.dilation)
        if "bias" in self:
            y = y + self.bias
        return y

    def reference_call(self, x: mx.array) -> mx.array:
        return nn.Conv3d.__call__(self, x)
