"""The text-conditioned 3D UNet, MLX body.

The twin of `t2s_torch/unet.py`, class by class and method by method: the same module tree and
the same flattened parameter keys (`mlx.utils.tree_flatten(model.parameters())` equals the torch
`state_dict()` keys), built from the same `ModelConfig`, so a checkpoint converts by a per-tensor
layout change (`shared.model.layouts.TORCH_TO_MLX_AXES`) and nothing else. Every numerical choice
is the one the torch file writes down; only the layouts differ:

- Activations are (B, F, H, W, C) here, (B, C, F, H, W) in torch; conv weights are
  (O, kF, kH, kW, I) here, (O, I, kF, kH, kW) in torch; linear weights are (out, in) in both.
- Sinusoids: `[cos(p * w_i), sin(p * w_i)]`, `w_i = exp(-ln(10000) * i / half)`, float32, an odd
  `dim` gets a trailing zero column.
- GroupNorm (`pytorch_compatible=True`, statistics over all frames of a clip) and LayerNorm: eps
  1e-5, affine.
- ResBlock3D: `h = norm2(h) * (1 + scale) + shift`, scale = first half of `time_emb_proj`.
- Attention: scale 1 / sqrt(head_dim), heads split from the channel axis; a sample whose key mask
  keeps nothing attends to every key and has its attention output multiplied by 0 (exactly the
  torch handling), before `to_out`.
- Cross-attention per frame, keys and values projected once per clip; with `text_alignment`
  the torch file's alignment bias `-TEXT_ALIGN_GAIN * text_align[h] * (tau_f - rho_j)^2`.
- Exact (erf) GELU; nearest 2x upsampling in H and W; skips concatenated as `[h, skip]`.
- The blocks, their widths and skips: `shared.model.unet_plan`, as in torch.

Every conv is a `FastConv3d` (`t2s_mlx/kernels/fast_conv.py`, MLX-only speed code): an
`nn.Conv3d` in keys, shapes, layout and initialisation that runs as the 2-D conv or matmul Metal
is fast at (spatial (1, 3, 3) over frames folded into the batch, temporal (3, 1, 1) as a (3, 1)
2-D conv over (frames, pixels), the 1x1x1 skip as a matmul, 3x3x3 as stacked depth taps).

Gradient checkpointing (`config.gradient_checkpointing`) wraps the same block calls as torch in
`mx.checkpoint` while training. MLX recomputes a checkpointed block by calling it again, which
would draw a fresh dropout mask from the global random state; so each ResBlock3D call gets its
dropout key as an explicit argument (`dropout_key`), drawn once outside the block, and the
recomputation reuses it. That argument is the one signature difference from torch.

Nothing here imports torch.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

from shared.config import ModelConfig
from shared.model.layouts import MLX_TO_TORCH_AXES, TORCH_TO_MLX_AXES
from shared.model.unet_plan import BlockPlan, unet_plan
from t2s_mlx.kernels.fast_conv import FastConv3d

NORM_EPS = 1e-5
MAX_PERIOD = 10000.0
TEXT_ALIGN_GAIN = 16.0  # the torch constant, for the same reason

# `mx.checkpoint`, by a module-level name so tests can count its uses.
checkpoint = mx.checkpoint


def sinusoidal_embedding(positions: mx.array, dim: int) -> mx.array:
    """(N,) positions -> (N, dim) float32 `[cos, sin]` features.

    One formula for timesteps and frame positions, the torch one:
    `w_i = exp(-ln(10000) * i / half)`, cos half first, a zero column when `dim` is odd.
    """
    half = dim // 2
    exponent = -math.log(MAX_PERIOD) * mx.arange(half, dtype=mx.float32) / half
    angles = positions.astype(mx.float32)[:, None] * mx.exp(exponent)[None, :]
    emb = mx.concatenate([mx.cos(angles), mx.sin(angles)], axis=-1)
    if dim % 2:
        emb = mx.pad(emb, [(0, 0), (0, 1)])
    return emb


def group_norm(channels: int, config: ModelConfig) -> nn.GroupNorm:
    return nn.GroupNorm(config.norm_groups, channels, eps=NORM_EPS, affine=True,
                        pytorch_compatible=True)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so the block around it starts as the identity (or as 0 out)."""
    module.update(tree_map(mx.zeros_like, module.parameters()))
    return module


def maybe_checkpoint(module: nn.Module, enabled: bool, *args) -> mx.array:
    """Recompute `module(*args)` in the backward pass instead of storing its activations.

    The module's trainable parameters are passed to `mx.checkpoint` explicitly (as
    `mlx.nn.utils.checkpoint` does), so their gradients flow through the recomputation.
    The torch twin also returns glibc's free heap pages as each segment's backward begins on
    the CPU; MLX's graph has no per-segment backward hook and its allocator keeps its own
    buffer cache (`mx.get_peak_memory` is what the benchmark reads), so nothing here does.
    """
    if not enabled:
        return module(*args)

    def inner(params, *inner_args):
        module.update(params)
        return module(*inner_args)

    return checkpoint(inner)(module.trainable_parameters(), *args)


def dirac_conv_weight(out_ch: int, in_ch: int, kernel: tuple[int, int, int]) -> mx.array:
    """torch `nn.init.dirac_` in MLX layout (O, kF, kH, kW, I): the centre tap maps i -> i."""
    w = np.zeros((out_ch, *kernel, in_ch), dtype=np.float32)
    d = np.arange(min(out_ch, in_ch))
    w[d, kernel[0] // 2, kernel[1] // 2, kernel[2] // 2, d] = 1.0
    return mx.array(w)


def token_positions(mask: mx.array) -> mx.array:
    """(B, L) real-token mask -> (B, L) float32 positions in [0, 1] (the torch formula)."""
    m = mask.astype(mx.float32)
    rank = mx.cumsum(m, axis=-1) - 1.0
    words = mx.maximum(m.sum(axis=-1, keepdims=True) - 2.0, 1.0)
    return mx.clip((rank - 0.5) / words, 0.0, 1.0)


def alignment_logits(frames: int, mask: mx.array) -> mx.array:
    """F, (B, L) mask -> (B, F, L) `-TEXT_ALIGN_GAIN * (tau_f - rho_j)^2` (the torch formula)."""
    tau = (mx.arange(frames, dtype=mx.float32) + 0.5) / frames
    return -TEXT_ALIGN_GAIN * (tau[None, :, None] - token_positions(mask)[:, None, :]) ** 2


def text_alignment_bias(weight: mx.array, frames: int, mask: mx.array) -> mx.array:
    """(heads,) weights, F, (B, L) mask -> (B*F, heads, 1, L) additive cross-attention logits:
    frame f of a clip leans towards the tokens whose position in the caption matches its time."""
    bias = weight.astype(mx.float32)[None, None, :, None] * alignment_logits(frames, mask)[
        :, :, None, :]
    return bias.reshape(-1, weight.shape[0], 1, mask.shape[-1])


class FrameText(nn.Module):
    """Each frame's words, for `model.frame_text`: the torch module's pooling (zeros for a
    caption without any real token), then `proj` (zero at the start)."""

    def __init__(self, context_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = zero_module(nn.Linear(context_dim, channels))

    def __call__(self, context: mx.array, mask: mx.array, frames: int) -> mx.array:
        """-> (B, F, channels)."""
        real = mask.astype(mx.bool_)
        logits = mx.where(real[:, None, :], alignment_logits(frames, mask), -math.inf)
        keep = real.any(axis=-1)[:, None, None]
        weights = mx.softmax(mx.where(keep, logits, 0.0), axis=-1) * keep
        return self.proj(weights.astype(context.dtype) @ context)


class TimestepEmbedding(nn.Module):
    """sinusoid(t, base_channels) -> Linear -> SiLU -> Linear: the diffusion step as a vector."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.linear_1 = nn.Linear(in_dim, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def __call__(self, timesteps: mx.array) -> mx.array:
        emb = sinusoidal_embedding(timesteps, self.in_dim).astype(self.linear_1.weight.dtype)
        return self.linear_2(nn.silu(self.linear_1(emb)))


class FactorizedConv3d(nn.Module):
    """(2+1)D conv: spatial (1, 3, 3) then temporal (3, 1, 1).

    The temporal conv starts as the identity (dirac kernel, zero bias), so a fresh factorized
    block is exactly a per-frame 2D conv and learns to mix frames from there.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.spatial = FastConv3d(in_ch, out_ch, (1, 3, 3), padding=(0, 1, 1))
        self.temporal = FastConv3d(out_ch, out_ch, (3, 1, 1), padding=(1, 0, 0))
        self.temporal.weight = dirac_conv_weight(out_ch, out_ch, (3, 1, 1))
        self.temporal.bias = mx.zeros((out_ch,))

    def __call__(self, x: mx.array) -> mx.array:
        return self.temporal(self.spatial(x))


class PointwiseConv3d(FastConv3d):
    """A 1x1x1 conv (keys `weight`, `bias` as nn.Conv3d), the torch twin's class: run as a
    matmul over the channels (`FastConv3d` picks that path from the kernel)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, 1)


def group_norm_silu(norm: nn.GroupNorm, x: mx.array, scale: mx.array | None = None,
                    shift: mx.array | None = None) -> mx.array:
    """`silu(norm(x) * (1 + scale) + shift)` (or `silu(norm(x))`), x (B, F, H, W, C), scale and
    shift (B, C). torch's is a hand-written autograd node (`t2s_torch/kernels/norm_silu.py`);
    here the plain composition is the whole story (MLX keeps only what the backward reads, and
    `mx.compile` fuses the tail), kept as a function so `ResBlock3D` reads as torch's does."""
    if (scale is None) != (shift is None):
        raise ValueError("group_norm_silu: give both scale and shift, or neither")
    h = norm(x)
    if scale is not None:
        spatial = (scale.shape[0],) + (1,) * (x.ndim - 2) + (scale.shape[-1],)
        h = h * (1 + scale.reshape(spatial)) + shift.reshape(spatial)
    return nn.silu(h)


def norm_silu_conv(norm: nn.GroupNorm, x: mx.array, conv: nn.Module,
                   scale: mx.array | None = None, shift: mx.array | None = None) -> mx.array:
    """`conv(silu(norm(x) * (1 + scale) + shift))`, the ResBlock's pre-activation conv. torch
    fuses it into one autograd node to avoid keeping the activation between them; MLX's graph
    needs nothing of the kind, so here it is the composition."""
    return conv(group_norm_silu(norm, x, scale, shift))


def make_conv(in_ch: int, out_ch: int, conv_mode: str) -> nn.Module:
    """The ResBlock conv: full 3x3x3 (keys `weight`, `bias`) or factorized (`spatial`,
    `temporal`)."""
    if conv_mode == "full":
        return FastConv3d(in_ch, out_ch, 3, padding=1)
    if conv_mode == "factorized":
        return FactorizedConv3d(in_ch, out_ch)
    raise ValueError(f"conv_mode={conv_mode!r}: use 'factorized' or 'full'")


class ResBlock3D(nn.Module):
    """GN -> SiLU -> conv1 -> GN * (1 + scale) + shift -> SiLU -> dropout -> conv2, plus a skip.

    conv2 starts at zero so each block starts as the identity (its skip path). In factorized mode
    only `conv2.spatial` is zeroed: zeroing both halves of a product would leave both without a
    gradient forever.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, config)
        self.conv1 = make_conv(in_ch, out_ch, config.conv_mode)
        self.time_emb_proj = nn.Linear(temb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch, config)
        self.dropout = nn.Dropout(config.dropout)
        self.dropout_p = config.dropout
        self.conv2 = make_conv(out_ch, out_ch, config.conv_mode)
        zero_module(self.conv2.spatial if config.conv_mode == "factorized" else self.conv2)
        self.skip = PointwiseConv3d(in_ch, out_ch) if in_ch != out_ch else nn.Identity()

    def dropout_key(self) -> mx.array | None:
        """A fresh key for this call's dropout mask, or None when dropout does nothing."""
        if not (self.training and self.dropout_p > 0):
            return None
        return mx.random.randint(0, 2**31 - 1, shape=(2,)).astype(mx.uint32)

    def __call__(self, x: mx.array, temb: mx.array, dropout_key: mx.array | None = None,
                 concat: mx.array | None = None) -> mx.array:
        """`concat`: a UNet skip to join to `x` along channels first (`[x, concat]`); joined here,
        inside any gradient checkpoint, the joined copy is recomputed instead of kept."""
        if concat is not None:
            x = mx.concatenate([x, concat], axis=-1)
        h = norm_silu_conv(self.norm1, x, self.conv1)
        scale, shift = mx.split(self.time_emb_proj(nn.silu(temb)), 2, axis=-1)
        h = group_norm_silu(self.norm2, h, scale, shift)
        if dropout_key is not None and self.training and self.dropout_p > 0:
            keep = 1.0 - self.dropout_p
            mask = mx.random.bernoulli(keep, h.shape, key=mx.stop_gradient(dropout_key))
            h = mask * h * (1 / keep)
        else:
            h = self.dropout(h)
        h = self.conv2(h)
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention over (B, N, C) tokens through the fused SDPA kernel.

    `context=None` is self-attention. `mask` (B, L), True / 1 = a real key. A sample whose mask
    keeps no key gets an attention output of 0 rather than NaN (see `__call__`). `frames`: the
    queries are (B*frames, N, C) against a (B, L) context whose keys and values are projected
    once and shared by a clip's frames. `bias`: additive logits broadcastable to
    (B*frames, heads, N, L).
    """

    def __init__(self, query_dim: int, context_dim: int | None, heads: int) -> None:
        super().__init__()
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.scale = 1.0 / math.sqrt(query_dim // heads)
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim)

    def __call__(self, x: mx.array, context: mx.array | None = None,
                 mask: mx.array | None = None, bias: mx.array | None = None,
                 frames: int = 1) -> mx.array:
        context = x if context is None else context
        b, n, c = x.shape

        def split(t: mx.array) -> mx.array:  # (B, N, C) -> (B, heads, N, C / heads)
            return t.reshape(t.shape[0], t.shape[1], self.heads, c // self.heads).transpose(
                0, 2, 1, 3)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        if frames > 1:
            k, v = mx.repeat(k, frames, axis=0), mx.repeat(v, frames, axis=0)
            mask = None if mask is None else mx.repeat(mask, frames, axis=0)
        attn_mask = keep = None
        if mask is not None:
            mask = mask.astype(mx.bool_)
            keep = mask.any(axis=-1)  # (B,)
            # A row with no real key would be softmax over nothing; as in torch, let it see every
            # key and zero its output below, so padding never leaks in and nothing turns NaN.
            attn_mask = mx.logical_or(mask, mx.logical_not(keep)[:, None])[:, None, None, :]
        if bias is not None:
            bias = bias.astype(q.dtype)
            attn_mask = bias if attn_mask is None else mx.where(
                attn_mask, bias, mx.array(-math.inf, q.dtype))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=attn_mask)
        out = out.transpose(0, 2, 1, 3).reshape(b, n, c)
        if keep is not None:
            out = out * keep[:, None, None].astype(out.dtype)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Linear(ch, 4ch) -> exact (erf) GELU -> Linear(4ch, ch)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, mult * dim)
        self.linear_2 = nn.Linear(mult * dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(nn.gelu(self.linear_1(x)))


class SpatioTemporalTransformer(nn.Module):
    """GN -> proj_in -> [spatial self-attn, text cross-attn, temporal self-attn, FF] -> proj_out.

    Each sub-layer is pre-norm with a residual; `proj_out` starts at zero so the whole transformer
    starts as the identity. Frames and pixels are folded into the batch by reshapes: spatial
    attention sees (B*F, H*W) tokens, cross-attention (B*F, H*W) queries against the clip's text
    tokens (with `text_alignment`, biased towards the words whose place in the caption matches
    the frame's time), temporal attention (B*H*W, F) tokens with a sinusoidal frame-position
    signal added to its normalised input.
    """

    def __init__(self, channels: int, config: ModelConfig) -> None:
        super().__init__()
        heads = config.num_heads
        self.norm = group_norm(channels, config)
        self.proj_in = nn.Linear(channels, channels)
        self.norm1 = nn.LayerNorm(channels, eps=NORM_EPS)
        self.attn1 = Attention(channels, None, heads)
        self.norm2 = nn.LayerNorm(channels, eps=NORM_EPS)
        self.attn2 = Attention(channels, config.context_dim, heads)
        self.norm3 = nn.LayerNorm(channels, eps=NORM_EPS)
        self.attn_temp = Attention(channels, None, heads)
        self.norm4 = nn.LayerNorm(channels, eps=NORM_EPS)
        self.ff = FeedForward(channels)
        self.proj_out = zero_module(nn.Linear(channels, channels))
        if config.text_alignment:
            self.text_align = mx.ones((heads,))

    def __call__(self, x: mx.array, context: mx.array,
                 context_mask: mx.array | None = None) -> mx.array:
        b, f, hgt, wid, c = x.shape
        p = hgt * wid
        h = self.norm(x).reshape(b, f, p, c)  # (B, F, H*W, C)
        h = self.proj_in(h)
        h = h + self.attn1(self.norm1(h).reshape(b * f, p, c)).reshape(b, f, p, c)
        bias = None
        if "text_align" in self:
            mask = context_mask if context_mask is not None else mx.ones(context.shape[:2])
            bias = text_alignment_bias(self["text_align"], f, mask)
        h = h + self.attn2(self.norm2(h).reshape(b * f, p, c), context, context_mask, bias,
                           frames=f).reshape(b, f, p, c)
        frame_pos = sinusoidal_embedding(mx.arange(f), c).astype(h.dtype)
        t = (self.norm3(h) + frame_pos[None, :, None, :]).transpose(0, 2, 1, 3)
        t = t.reshape(b * p, f, c)
        h = h + self.attn_temp(t).reshape(b, p, f, c).transpose(0, 2, 1, 3)
        h = h + self.ff(self.norm4(h))
        h = self.proj_out(h)
        return x + h.reshape(b, f, hgt, wid, c)


class Downsample3D(nn.Module):
    """Halve H and W with a strided (1, 3, 3) conv; frames are never downsampled."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = FastConv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(x)


class Upsample3D(nn.Module):
    """Nearest 2x in H and W (frames untouched), then a (1, 3, 3) conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = FastConv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))

    def __call__(self, x: mx.array) -> mx.array:
        b, f, h, w, c = x.shape
        x = mx.broadcast_to(x[:, :, :, None, :, None, :], (b, f, h, 2, w, 2, c))
        return self.conv(x.reshape(b, f, 2 * h, 2 * w, c))


def planned_layers(block: BlockPlan, temb_dim: int, config: ModelConfig
                   ) -> tuple[list[ResBlock3D], list[SpatioTemporalTransformer]]:
    """A planned block's ResBlock3Ds and transformers, at the widths `shared.model.unet_plan`
    gives."""
    resnets = [ResBlock3D(i, o, temb_dim, config) for i, o in block.resnets]
    attentions = [SpatioTemporalTransformer(block.out_channels, config)
                  for _ in range(block.transformers)]
    return resnets, attentions


class DownBlock3D(nn.Module):
    """One encoder level: (ResBlock3D [+ transformer]) x num_res_blocks, then maybe downsample."""

    def __init__(self, block: BlockPlan, temb_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.resnets, self.attentions = planned_layers(block, temb_dim, config)
        self.downsample = Downsample3D(block.out_channels) if block.resample else None

    def __call__(self, h: mx.array, temb: mx.array, context: mx.array,
                 context_mask: mx.array | None, ckpt: bool
                 ) -> tuple[mx.array, list[mx.array]]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            h = maybe_checkpoint(resnet, ckpt, h, temb, resnet.dropout_key())
            if self.attentions:
                h = maybe_checkpoint(self.attentions[j], ckpt, h, context, context_mask)
            skips.append(h)
        if self.downsample is not None:
            h = self.downsample(h)
            skips.append(h)
        return h, skips


class MidBlock3D(nn.Module):
    """ResBlock3D -> transformer -> ResBlock3D at the lowest resolution."""

    def __init__(self, block: BlockPlan, temb_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.resnets, self.attentions = planned_layers(block, temb_dim, config)

    def __call__(self, h: mx.array, temb: mx.array, context: mx.array,
                 context_mask: mx.array | None, ckpt: bool) -> mx.array:
        first, second = self.resnets
        h = maybe_checkpoint(first, ckpt, h, temb, first.dropout_key())
        h = maybe_checkpoint(self.attentions[0], ckpt, h, context, context_mask)
        return maybe_checkpoint(second, ckpt, h, temb, second.dropout_key())


class UpBlock3D(nn.Module):
    """One decoder level: (concat skip -> ResBlock3D [+ transformer]) x (num_res_blocks + 1),
    then maybe upsample; each resnet's input width includes the skip it pops (`block.skips`)."""

    def __init__(self, block: BlockPlan, temb_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.resnets, self.attentions = planned_layers(block, temb_dim, config)
        self.upsample = Upsample3D(block.out_channels) if block.resample else None

    def __call__(self, h: mx.array, skips: list[mx.array], temb: mx.array,
                 context: mx.array, context_mask: mx.array | None,
                 ckpt: bool) -> mx.array:
        for j, resnet in enumerate(self.resnets):
            h = maybe_checkpoint(resnet, ckpt, h, temb, resnet.dropout_key(), skips.pop())
            if self.attentions:
                h = maybe_checkpoint(self.attentions[j], ckpt, h, context, context_mask)
        if self.upsample is not None:
            h = maybe_checkpoint(self.upsample, ckpt, h)
        return h


class UNet3D(nn.Module):
    """Text-conditioned 3D UNet: (B, F, H, W, in_channels) -> (B, F, H, W, out_channels).

    Built from `ModelConfig` alone. `conv_out` starts at zero, so an untrained model predicts 0.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = config.gradient_checkpointing
        plan = unet_plan(config)
        temb = config.time_embed_dim

        self.time_embed = TimestepEmbedding(config.base_channels, temb)
        self.text_embed = nn.Linear(config.context_dim, temb)
        width = plan.in_channels
        self.conv_in = FastConv3d(config.in_channels, width, (1, 3, 3), padding=(0, 1, 1))
        if config.frame_text:
            self.frame_text = FrameText(config.context_dim, width)
        self.down_blocks = [DownBlock3D(b, temb, config) for b in plan.down]
        self.mid_block = MidBlock3D(plan.mid, temb, config)
        self.up_blocks = [UpBlock3D(b, temb, config) for b in plan.up]
        width = plan.out_channels
        self.norm_out = group_norm(width, config)
        self.conv_out = zero_module(
            FastConv3d(width, config.out_channels, (1, 3, 3), padding=(0, 1, 1)))

    def num_parameters(self) -> int:
        return sum(v.size for _, v in tree_flatten(self.parameters()))

    def __call__(self, x: mx.array, timesteps: mx.array | int | float, context: mx.array,
                 context_mask: mx.array | None = None,
                 pooled: mx.array | None = None) -> mx.array:
        """x (B, F, H, W, C); timesteps (B,) or scalar; context (B, L, context_dim);
        context_mask (B, L), 1 = real token; pooled (B, context_dim) or None (no contribution)."""
        b = x.shape[0]
        timesteps = timesteps if isinstance(timesteps, mx.array) else mx.array(timesteps)
        if timesteps.ndim == 0:
            timesteps = mx.broadcast_to(timesteps, (b,))
        # Inputs follow the weights' dtype (bf16 training casts the weights, not the data).
        x = x.astype(self.conv_in.weight.dtype)
        temb = self.time_embed(timesteps)
        if pooled is not None:
            temb = temb + self.text_embed(pooled.astype(temb.dtype))
        context = context.astype(x.dtype)
        if context_mask is not None:
            # bool once, here: `mx.checkpoint` differentiates every block input, and the cast of
            # an integer mask to bool inside a block has no matching cotangent.
            context_mask = mx.array(context_mask).astype(mx.bool_)
        ckpt = self.gradient_checkpointing and self.training

        h = self.conv_in(x)
        if "frame_text" in self:
            mask = context_mask if context_mask is not None else mx.ones(context.shape[:2])
            words = self["frame_text"](context, mask, x.shape[1])  # (B, F, C)
            h = h + words[:, :, None, None, :]
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb, context, context_mask, ckpt)
            skips += block_skips
        h = self.mid_block(h, temb, context, context_mask, ckpt)
        for block in self.up_blocks:
            h = block(h, skips, temb, context, context_mask, ckpt)
        return norm_silu_conv(self.norm_out, h, self.conv_out)


# ---------------------------------------------------------------------------------------------
# weights in torch layout (numpy), for tests and converters


def _to_mlx_layout(array: np.ndarray) -> np.ndarray:
    """A torch-layout tensor in MLX layout (only 5-D conv weights change)."""
    axes = TORCH_TO_MLX_AXES.get(array.ndim)
    return np.ascontiguousarray(array.transpose(axes)) if axes else array


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
    """An MLX-layout tensor in torch layout (only 5-D conv weights change)."""
    axes = MLX_TO_TORCH_AXES.get(array.ndim)
    return np.ascontiguousarray(array.transpose(axes)) if axes else array


def load_torch_layout_weights(model: nn.Module, tensors: dict[str, np.ndarray]) -> nn.Module:
    """Load torch-layout numpy tensors (a torch `state_dict` as numpy) into `model`.

    Keys must match the model's parameter keys exactly and shapes must fit after the layout
    change; anything else raises ValueError naming the offending keys. Returns `model`.
    """
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing[:5]} "
                         f"({len(missing)} in all), unexpected {unexpected[:5]} "
                         f"({len(unexpected)} in all)")
    converted = {k: _to_mlx_layout(np.asarray(v)) for k, v in tensors.items()}
    wrong = [f"{k}: {v.shape} vs {tuple(expected[k])}" for k, v in converted.items()
             if tuple(v.shape) != tuple(expected[k])]
    if wrong:
        raise ValueError(f"weights do not fit the model (shapes, MLX layout): {wrong[:5]}")
    model.load_weights([(k, mx.array(v)) for k, v in converted.items()], strict=True)
    return model


def torch_layout_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters as torch-layout numpy arrays (bfloat16 is widened to float32,
    numpy having no bfloat16)."""
    out = {}
    for k, v in tree_flatten(model.parameters()):
        if v.dtype == mx.bfloat16:
            v = v.astype(mx.float32)
        out[k] = _to_torch_layout(np.array(v))
    return out


def parameter_keys(model: nn.Module) -> list[str]:
    """Flattened parameter keys, the names shared with the torch `state_dict`."""
    return [k for k, _ in tree_flatten(model.parameters())]

