"""The text-conditioned 3D UNet, PyTorch body.

`t2s_mlx/unet.py` mirrors this file class by class, and both build the same module tree with the
same flattened parameter keys from one `ModelConfig`, so converting a checkpoint is a per-tensor
layout change and nothing else. Every choice below that changes numbers is therefore part of the
contract and is written down where it is made:

- Activations are (B, C, F, H, W) here, (B, F, H, W, C) in MLX.
- Sinusoids (timesteps and frame positions) are `[cos(p * w_i), sin(p * w_i)]` for
  `w_i = exp(-ln(10000) * i / half)`, `i = 0 .. half - 1`, `half = dim // 2`; cos half first, an odd
  `dim` gets one trailing zero column. Computed in float32.
- GroupNorm and LayerNorm: eps 1e-5, affine. GroupNorm statistics span all frames of a clip
  (MLX `GroupNorm(pytorch_compatible=True)` over (B, F, H, W, C) does the same).
- ResBlock3D: `time_emb_proj(silu(temb))` is split into `scale, shift` (scale = first half of the
  output channels), applied after `norm2`: `h = norm2(h) * (1 + scale) + shift`.
- Attention: scale 1 / sqrt(head_dim), head_dim = channels / num_heads, heads split as
  (N, heads, head_dim) from the channel axis; a key mask that keeps no key yields an attention
  output of exactly 0 for that sample (an empty weighted sum), before `to_out`.
- Temporal attention input: `norm3(h) + sinusoid(frame_index, channels)` (same sinusoid as above).
- Cross-attention runs per frame: queries (B*F, H*W), keys and values projected once per clip
  and shared by its frames. With `text_alignment`, head h adds
  `-TEXT_ALIGN_GAIN * text_align[h] * (tau_f - rho_j)^2` to its logits: frame time
  `tau_f = (f + 0.5) / F`; token position `rho_j = clip((r_j - 0.5) / max(n - 2, 1), 0, 1)` for
  the j-th token's rank `r_j` (0-based) among the n real tokens of its caption, so that the
  begin and end markers sit at 0 and 1 and the k-th of m words at the middle of the k-th m-th of
  the clip. `text_align` starts at 1 (a prior the model can sharpen, flatten or reverse).
- Feed-forward GELU: exact (erf), i.e. torch `F.gelu(approximate="none")`, MLX `nn.gelu`.
- Upsample: nearest-neighbour 2x in H and W, frames untouched, then a (1, 3, 3) conv.
- Skips: conv_in output, then every resnet (or resnet + transformer) output of each down level and
  every downsample output, in that order; up blocks pop from the end and concatenate
  `[h, skip]` along channels (h first). The blocks and their widths are `shared.model.unet_plan`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from shared.app.allocator import release_free_memory
from shared.config import ModelConfig
from shared.model.unet_plan import BlockPlan, unet_plan
from t2s_torch.kernels.norm_silu import group_norm_silu
from t2s_torch.kernels.temporal_conv import temporal_conv

NORM_EPS = 1e-5
# Under gradient checkpointing on the CPU, free heap pages beyond this fraction of the bytes in
# use go back to the kernel as a segment's backward begins (`maybe_checkpoint`). `small` at 28
# frames: 4.7 GB peak RSS with ~10 trims a step at 0.6, 5.2 GB with ~5 at 1.0, 7.5 GB never.
CHECKPOINT_HEAP_SLACK = 0.5
MAX_PERIOD = 10000.0
# Scales the learned text-alignment weights so that Adam's per-step change of a weight moves
# the logits at a useful pace: at w = 1 a frame halfway between two words of a two-word
# caption (distance 0.25) leans 1 logit towards the nearer one, at distance 0.5 by 4.
TEXT_ALIGN_GAIN = 16.0


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) positions -> (N, dim) float32 `[cos, sin]` features.

    One formula for timesteps and frame positions, so the MLX twin reproduces both exactly:
    `w_i = exp(-ln(10000) * i / half)`, cos half first, a zero column when `dim` is odd.
    """
    half = dim // 2
    exponent = -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32,
                                                    device=positions.device) / half
    angles = positions.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def group_norm(channels: int, config: ModelConfig) -> nn.GroupNorm:
    return nn.GroupNorm(config.norm_groups, channels, eps=NORM_EPS, affine=True)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so the block around it starts as the identity (or as 0 out)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def maybe_checkpoint(fn: Callable[..., torch.Tensor], enabled: bool, *args) -> torch.Tensor:
    """Recompute `fn` in the backward pass instead of storing its activations, when enabled.

    On the CPU each segment's backward starts by returning the heap's free pages to the kernel
    when they exceed `CHECKPOINT_HEAP_SLACK` of what is in use
    (`shared.app.allocator.release_free_memory`): the holes the previous segments left would
    otherwise stay resident and take back about half of what checkpointing saves.
    """
    if not enabled:
        return fn(*args)
    out = checkpoint(fn, *args, use_reentrant=False)
    # Not under torch.compile: dynamo would trace the hook's ctypes call, a graph break.
    if out.device.type == "cpu" and out.requires_grad and not torch.compiler.is_compiling():
        out.register_hook(_release_free_memory)
    return out


def _release_free_memory(grad: torch.Tensor) -> None:
    release_free_memory(keep=CHECKPOINT_HEAP_SLACK)


def token_positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) real-token mask -> (B, L) float32 positions in [0, 1] (see the module docstring)."""
    m = mask.float()
    rank = m.cumsum(-1) - 1.0
    words = (m.sum(-1, keepdim=True) - 2.0).clamp(min=1.0)
    return ((rank - 0.5) / words).clamp(0.0, 1.0)


def alignment_logits(frames: int, mask: torch.Tensor) -> torch.Tensor:
    """F, (B, L) mask -> (B, F, L) `-TEXT_ALIGN_GAIN * (tau_f - rho_j)^2`: how far token j's
    place in its caption is from frame f's time in the clip (the module docstring's formula)."""
    tau = (torch.arange(frames, dtype=torch.float32, device=mask.device) + 0.5) / frames
    return -TEXT_ALIGN_GAIN * (tau[None, :, None] - token_positions(mask)[:, None, :]) ** 2


def text_alignment_bias(weight: torch.Tensor, frames: int, mask: torch.Tensor) -> torch.Tensor:
    """(heads,) weights, F, (B, L) mask -> (B*F, heads, 1, L) additive cross-attention logits:
    frame f of a clip leans towards the tokens whose position in the caption matches its time."""
    bias = weight.float()[None, None, :, None] * alignment_logits(frames, mask)[:, :, None, :]
    return bias.reshape(-1, weight.shape[0], 1, mask.shape[-1])


class FrameText(nn.Module):
    """Each frame's words, for `model.frame_text`: the caption's token states pooled per frame
    with weights softmax_j(-TEXT_ALIGN_GAIN * (tau_f - rho_j)^2) over the real tokens (zeros
    for a caption without any), then `proj` (zero at the start) to the first level's width."""

    def __init__(self, context_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = zero_module(nn.Linear(context_dim, channels))

    def forward(self, context: torch.Tensor, mask: torch.Tensor, frames: int) -> torch.Tensor:
        """-> (B, F, channels)."""
        real = mask.bool()
        logits = alignment_logits(frames, mask).masked_fill(~real[:, None, :], -math.inf)
        keep = real.any(dim=-1)[:, None, None]
        weights = torch.softmax(logits.masked_fill(~keep, 0.0), dim=-1) * keep
        return self.proj(weights.to(context.dtype) @ context)


class TimestepEmbedding(nn.Module):
    """sinusoid(t, base_channels) -> Linear -> SiLU -> Linear: the diffusion step as a vector."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.linear_1 = nn.Linear(in_dim, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(timesteps, self.in_dim).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


class FactorizedConv3d(nn.Module):
    """(2+1)D conv: spatial (1, 3, 3) then temporal (3, 1, 1).

    The temporal conv starts as the identity (dirac kernel, zero bias), so a fresh factorized
    block is exactly a per-frame 2D conv and learns to mix frames from there.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.spatial = nn.Conv3d(in_ch, out_ch, (1, 3, 3), padding=(0, 1, 1))
        self.temporal = nn.Conv3d(out_ch, out_ch, (3, 1, 1), padding=(1, 0, 0))
        nn.init.dirac_(self.temporal.weight)
        nn.init.zeros_(self.temporal.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix_frames(self.spatial(x))

    def mix_frames(self, h: torch.Tensor) -> torch.Tensor:
        """The temporal half alone (`norm_silu_conv` runs the spatial half fused with its norm)."""
        if not h.is_contiguous():  # channels-last: oneDNN's conv3d, our weight gradient on CPU
            return temporal_conv(self.temporal, h)
        # The (3, 1, 1) conv as a (3, 1) conv2d over (frames, pixels): the same weights (a view),
        # the same result, ~2-3x faster forward and backward on oneDNN (CPU), whose conv3d path
        # for this shape is slow (measured: 27 vs 71+ GFLOP/s); conv2d is also what MPS supports
        # best.
        b, c, f, height, width = h.shape
        t = self.temporal
        out = F.conv2d(h.reshape(b, c, f, height * width), t.weight[..., 0], t.bias,
                       padding=(1, 0))
        return out.reshape(b, c, f, height, width)


class PointwiseConv3d(nn.Conv3d):
    """A 1x1x1 conv (keys `weight`, `bias` as nn.Conv3d) run as a 1x1 conv2d over (frames,
    pixels): oneDNN's conv3d falls back to im2col + GEMM for this shape, conv2d does not
    (measured 1.25-2.5x faster forward + backward)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous():  # channels-last: a matmul over the channels, in place
            out = F.linear(x.permute(0, 2, 3, 4, 1), self.weight[:, :, 0, 0, 0], self.bias)
            return out.permute(0, 4, 1, 2, 3)
        b, c, f, height, width = x.shape
        out = F.conv2d(x.reshape(b, c, f, height * width), self.weight[..., 0], self.bias)
        return out.reshape(b, -1, f, height, width)


def norm_silu_conv(norm: nn.GroupNorm, x: torch.Tensor, conv: nn.Module,
                   scale: torch.Tensor | None = None,
                   shift: torch.Tensor | None = None) -> torch.Tensor:
    """`conv(silu(norm(x) * (1 + scale) + shift))`, the ResBlock's pre-activation conv, as one
    autograd node with its (spatial) conv so that the activation between them is recomputed in
    the backward pass rather than kept (`t2s_torch.kernels.norm_silu`)."""
    if isinstance(conv, FactorizedConv3d):
        return conv.mix_frames(group_norm_silu(norm, x, scale, shift, conv=conv.spatial))
    return group_norm_silu(norm, x, scale, shift, conv=conv)


def make_conv(in_ch: int, out_ch: int, conv_mode: str) -> nn.Module:
    """The ResBlock conv: full 3x3x3 (keys `weight`, `bias`) or factorized (`spatial`,
    `temporal`)."""
    if conv_mode == "full":
        return nn.Conv3d(in_ch, out_ch, 3, padding=1)
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
        self.conv2 = make_conv(out_ch, out_ch, config.conv_mode)
        zero_module(self.conv2.spatial if config.conv_mode == "factorized" else self.conv2)
        self.skip = PointwiseConv3d(in_ch, out_ch) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor,
                concat: torch.Tensor | None = None) -> torch.Tensor:
        """`concat`: a UNet skip to join to `x` along channels first (`[x, concat]`); joined here,
        inside any gradient checkpoint, the joined copy is recomputed instead of kept."""
        if concat is not None:
            x = torch.cat([x, concat], dim=1)
        h = norm_silu_conv(self.norm1, x, self.conv1)
        scale, shift = self.time_emb_proj(F.silu(temb)).chunk(2, dim=1)
        if self.training and self.dropout.p > 0:
            h = self.conv2(self.dropout(group_norm_silu(self.norm2, h, scale, shift)))
        else:
            h = norm_silu_conv(self.norm2, h, self.conv2, scale, shift)
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention over (B, N, C) tokens through the fused SDPA kernel.

    `context=None` is self-attention. `mask` (B, L), True / 1 = a real key. A sample whose mask
    keeps no key gets an attention output of 0 rather than NaN (see `forward`). `frames`: the
    queries are (B*frames, N, C) against a (B, L) context whose keys and values are projected
    once and shared by a clip's frames. `bias`: additive logits broadcastable to
    (B*frames, heads, N, L).
    """

    def __init__(self, query_dim: int, context_dim: int | None, heads: int) -> None:
        super().__init__()
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                frames: int = 1) -> torch.Tensor:
        context = x if context is None else context
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
            return t.reshape(t.shape[0], t.shape[1], self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        if frames > 1:
            k, v = k.repeat_interleave(frames, dim=0), v.repeat_interleave(frames, dim=0)
            mask = None if mask is None else mask.repeat_interleave(frames, dim=0)
        attn_mask = keep = None
        if mask is not None:
            mask = mask.bool()
            keep = mask.any(dim=-1)  # (B,)
            # A row with no real key would be softmax over nothing (NaN); let it see every key
            # and zero its output below, so padding never leaks in and nothing turns NaN.
            attn_mask = (mask | ~keep[:, None])[:, None, None, :]
        if bias is not None:
            bias = bias.to(q.dtype)
            attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, -math.inf)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(b, n, c)
        if keep is not None:
            out = out * keep[:, None, None].to(out.dtype)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Linear(ch, 4ch) -> exact (erf) GELU -> Linear(4ch, ch)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, mult * dim)
        self.linear_2 = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="none"))


class SpatioTemporalTransformer(nn.Module):
    """GN -> proj_in -> [spatial self-attn, text cross-attn, temporal self-attn, FF] -> proj_out.

    Each sub-layer is pre-norm with a residual; `proj_out` starts at zero so the whole transformer
    starts as the identity. Frames and pixels are folded into the batch by reshapes, never loops:
    spatial attention sees (B*F, H*W) tokens, cross-attention (B*F, H*W) queries against the
    clip's text tokens (with `text_alignment`, biased towards the words whose place in the caption
    matches the frame's time), temporal attention (B*H*W, F) tokens with a fixed sinusoidal
    frame-position signal added to its normalised input (without it attention over frames would
    be blind to their order).
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
        self.text_align = nn.Parameter(torch.ones(heads)) if config.text_alignment else None

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, f, hgt, wid = x.shape
        p = hgt * wid
        h = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b, f, p, c)  # (B, F, H*W, C)
        h = self.proj_in(h)
        h = h + self.attn1(self.norm1(h).reshape(b * f, p, c)).reshape(b, f, p, c)
        bias = None
        if self.text_align is not None:
            mask = context_mask if context_mask is not None else torch.ones(
                context.shape[:2], device=x.device)
            bias = text_alignment_bias(self.text_align, f, mask)
        h = h + self.attn2(self.norm2(h).reshape(b * f, p, c), context, context_mask, bias,
                           frames=f).reshape(b, f, p, c)
        frame_pos = sinusoidal_embedding(torch.arange(f, device=x.device), c).to(h.dtype)
        t = (self.norm3(h) + frame_pos[None, :, None, :]).transpose(1, 2).reshape(b * p, f, c)
        h = h + self.attn_temp(t).reshape(b, p, f, c).transpose(1, 2)
        h = h + self.ff(self.norm4(h))
        h = self.proj_out(h)
        return x + h.reshape(b, f, hgt, wid, c).permute(0, 4, 1, 2, 3)


class Downsample3D(nn.Module):
    """Halve H and W with a strided (1, 3, 3) conv; frames are never downsampled."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3D(nn.Module):
    """Nearest 2x in H and W (frames untouched), then a (1, 3, 3) conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))


def planned_layers(block: BlockPlan, temb_dim: int, config: ModelConfig
                   ) -> tuple[nn.ModuleList, nn.ModuleList]:
    """A planned block's ResBlock3Ds and transformers, at the widths `shared.model.unet_plan`
    gives."""
    resnets = nn.ModuleList(ResBlock3D(i, o, temb_dim, config) for i, o in block.resnets)
    attentions = nn.ModuleList(SpatioTemporalTransformer(block.out_channels, config)
                               for _ in range(block.transformers))
    return resnets, attentions


class DownBlock3D(nn.Module):
    """One encoder level: (ResBlock3D [+ transformer]) x num_res_blocks, then maybe downsample."""

    def __init__(self, block: BlockPlan, temb_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.resnets, self.attentions = planned_layers(block, temb_dim, config)
        self.downsample = Downsample3D(block.out_channels) if block.resample else None

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None, ckpt: bool
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            h = maybe_checkpoint(resnet, ckpt, h, temb)
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

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None, ckpt: bool) -> torch.Tensor:
        h = maybe_checkpoint(self.resnets[0], ckpt, h, temb)
        h = maybe_checkpoint(self.attentions[0], ckpt, h, context, context_mask)
        return maybe_checkpoint(self.resnets[1], ckpt, h, temb)


class UpBlock3D(nn.Module):
    """One decoder level: (concat skip -> ResBlock3D [+ transformer]) x (num_res_blocks + 1),
    then maybe upsample; each resnet's input width includes the skip it pops (`block.skips`)."""

    def __init__(self, block: BlockPlan, temb_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.resnets, self.attentions = planned_layers(block, temb_dim, config)
        self.upsample = Upsample3D(block.out_channels) if block.resample else None

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor,
                context: torch.Tensor, context_mask: torch.Tensor | None,
                ckpt: bool) -> torch.Tensor:
        for j, resnet in enumerate(self.resnets):
            h = maybe_checkpoint(resnet, ckpt, h, temb, skips.pop())
            if self.attentions:
                h = maybe_checkpoint(self.attentions[j], ckpt, h, context, context_mask)
        if self.upsample is not None:
            h = maybe_checkpoint(self.upsample, ckpt, h)
        return h


class UNet3D(nn.Module):
    """Text-conditioned 3D UNet: (B, in_channels, F, H, W) -> (B, out_channels, F, H, W).

    Built from `ModelConfig` alone. `conv_out` starts at zero, so an untrained model predicts 0.
    Activations are channels-first unless `use_channels_last()` was called (the CPU default:
    `t2s_torch.device.prefers_channels_last`); the weights' keys and values are the same either
    way.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.memory_format = torch.contiguous_format
        self.gradient_checkpointing = config.gradient_checkpointing
        plan = unet_plan(config)
        temb = config.time_embed_dim

        self.time_embed = TimestepEmbedding(config.base_channels, temb)
        self.text_embed = nn.Linear(config.context_dim, temb)
        width = plan.in_channels
        self.conv_in = nn.Conv3d(config.in_channels, width, (1, 3, 3), padding=(0, 1, 1))
        self.frame_text = FrameText(config.context_dim, width) if config.frame_text else None
        self.down_blocks = nn.ModuleList(DownBlock3D(b, temb, config) for b in plan.down)
        self.mid_block = MidBlock3D(plan.mid, temb, config)
        self.up_blocks = nn.ModuleList(UpBlock3D(b, temb, config) for b in plan.up)
        width = plan.out_channels
        self.norm_out = group_norm(width, config)
        self.conv_out = zero_module(
            nn.Conv3d(width, config.out_channels, (1, 3, 3), padding=(0, 1, 1)))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def use_channels_last(self, enabled: bool = True) -> UNet3D:
        """Run activations (and store conv weights) channels-last, as MLX always does: oneDNN's
        conv3d is much faster that way on the CPU. The outputs are the same up to float rounding.
        """
        self.memory_format = torch.channels_last_3d if enabled else torch.contiguous_format
        for p in self.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=self.memory_format)
        return self

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, F, H, W); timesteps (B,) or scalar; context (B, L, context_dim);
        context_mask (B, L), 1 = real token; pooled (B, context_dim) or None (no contribution)."""
        b = x.shape[0]
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        temb = self.time_embed(timesteps)
        if pooled is not None:
            temb = temb + self.text_embed(pooled.to(temb.dtype))
        context = context.to(x.dtype)
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()

        # conv_in's output is re-laid explicitly: from 3 input channels oneDNN picks channels-first.
        h = self.conv_in(x.contiguous(memory_format=self.memory_format))
        if self.frame_text is not None:
            mask = context_mask if context_mask is not None else torch.ones(
                context.shape[:2], device=x.device)
            words = self.frame_text(context, mask, x.shape[2])  # (B, F, C)
            h = h + words.permute(0, 2, 1)[:, :, :, None, None]
        h = h.contiguous(memory_format=self.memory_format)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb, context, context_mask, ckpt)
            skips += block_skips
        h = self.mid_block(h, temb, context, context_mask, ckpt)
        for block in self.up_blocks:
            h = block(h, skips, temb, context, context_mask, ckpt)
        return norm_silu_conv(self.norm_out, h, self.conv_out)


def log_model_graph(model: UNet3D, log_dir: Path) -> None:
    """The UNet's graph for TensorBoard's Graphs tab, traced at the smallest valid input (the
    graph does not depend on the size, and tracing at full size would cost a forward pass)."""
    import warnings

    from torch.utils.tensorboard import SummaryWriter

    m = model.config
    side = 2 ** (m.num_levels - 1)
    device = next(model.parameters()).device
    inputs = (torch.zeros(1, m.in_channels, 2, side, side, device=device),
              torch.zeros(1, dtype=torch.long, device=device),
              torch.zeros(1, 2, m.context_dim, device=device),
              torch.ones(1, 2, dtype=torch.long, device=device),
              torch.zeros(1, m.context_dim, device=device))
    try:
        with warnings.catch_warnings(), SummaryWriter(str(log_dir)) as writer:
            warnings.simplefilter("ignore")
            writer.add_graph(model, inputs)
    except Exception as e:  # the graph is a nicety; training must not depend on tracing
        warnings.warn(f"could not log the model graph to TensorBoard: {e}", stacklevel=2)
