"""Analytic FLOP and parameter counts of the 3D UNet, from the config alone.

MLX has no FLOP counter, and the benchmark needs model FLOPs to turn a step time into a model
FLOP utilisation, so this module walks the UNet that `ModelConfig` builds (`shared.model.unet_plan`,
the plan both backends build from) block by block with plain integer arithmetic. It imports
neither torch nor mlx.

Convention — the one torch.utils.flop_counter.FlopCounterMode uses, so that the numbers here equal
that counter's exactly (tests/shared/test_flops.py checks it against the real torch model):

- A matmul / linear layer of (M, K) by (K, N) costs 2 * M * K * N (one multiply-add = 2 FLOPs).
  A linear layer applied to (..., K) tokens counts every token: M = the product of the leading
  dimensions. Bias additions are not counted.
- A convolution costs 2 * output_positions * C_in * C_out * kernel_volume, with output positions
  B * F * H_out * W_out (so a stride-2 conv pays for its output grid only). Bias not counted.
- Attention (scaled_dot_product_attention) over `groups` independent sequences costs
  2 * groups * heads * L_q * L_k * head_dim for Q @ K^T and the same again for softmax @ V, i.e.
  4 * groups * L_q * L_k * channels. The Q/K/V/out projections are linear layers as above.
- Elementwise work, normalisation (GroupNorm, LayerNorm), softmax, activations, nearest-neighbour
  upsampling, concatenation and the sinusoidal embeddings are not counted.

What the torch UNet does, and so what is counted:

- ResBlock3D: conv1, `time_emb_proj` (one linear over the B time-embedding vectors), conv2, and a
  1x1x1 skip conv when the width changes. `conv_mode="full"` is one 3x3x3 conv; "factorized" is a
  1x3x3 spatial conv (C_in -> C_out) then a 3x1x1 temporal conv (C_out -> C_out).
- SpatioTemporalTransformer on (B, C, F, H, W), P = H * W pixels, N = B * F * P tokens:
  proj_in, proj_out and the feed-forward (C -> 4C -> C) over all N tokens; spatial self-attention
  as B * F sequences of P tokens; cross-attention as B sequences of F * P queries against the
  clip's L text tokens (to_k / to_v run over the B * L text tokens, once per clip, not per frame);
  temporal self-attention as B * P sequences of F tokens.
- Downsample: a (1, 3, 3) stride-(1, 2, 2) conv. Upsample: nearest 2x (free), then a (1, 3, 3)
  conv at the doubled resolution. time_embed: Linear(base, 4 base) -> Linear(4 base, 4 base);
  text_embed: Linear(context_dim, 4 base) on the pooled text embedding (counted: it runs whenever
  a pooled embedding is passed, as training and sampling do).
- Text length L defaults to `config.text.max_length` (the padded length the encoder hands over;
  masked keys are still computed).

Caveat for comparisons: on a CPU, torch runs SDPA as `_scaled_dot_product_flash_attention_for_cpu`,
which FlopCounterMode (torch 2.x) has no formula for, so a plain CPU count misses exactly the
`attention_flops` of each row. On CUDA (flash / efficient / cuDNN kernels) and on the math
fallback (bmm) it counts them as here.

Training: `training_flops_per_sample` = 3 x forward per clip — the usual model-FLOPs convention
(backward = 2 x forward: one product for the input gradient and one for the weight gradient of
every matmul and conv). It is the number model FLOP utilisation divides by, so it leaves out the
extra forward of gradient checkpointing. An autograd count is a little lower (about 1% for tiny,
under 0.03% for small and base): layers fed only by inputs that need no gradient (conv_in on the
noisy clip, time_embed.linear_1 on the sinusoid, text_embed and every cross-attention to_k / to_v
on the frozen text states) skip their input gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Config, ConfigError, ModelConfig
from shared.model.unet_plan import unet_plan

# Kernel volumes of the UNet's convolutions.
SPATIAL_KERNEL = 9  # (1, 3, 3)
TEMPORAL_KERNEL = 3  # (3, 1, 1)
FULL_KERNEL = 27  # (3, 3, 3)
FF_MULT = 4


@dataclass(frozen=True)
class BlockFlops:
    """One top-level block of the UNet, named as t2s_torch.visualize.top_level_blocks names it."""

    name: str
    parameters: int
    # Channels-first like torch: (B, C, F, H, W) for video blocks, (B, D) for the embeddings.
    output_shape: tuple[int, ...]
    # Forward FLOPs of the block for the whole batch (attention included).
    forward_flops: int
    # The part of forward_flops spent inside scaled_dot_product_attention (QK^T and AV).
    attention_flops: int = 0


class _Tally:
    """Running FLOP / parameter totals of one block."""

    def __init__(self) -> None:
        self.flops = 0
        self.attention = 0
        self.params = 0

    def linear(self, tokens: int, d_in: int, d_out: int, bias: bool = True) -> None:
        self.flops += 2 * tokens * d_in * d_out
        self.params += d_in * d_out + (d_out if bias else 0)

    def conv(self, positions: int, c_in: int, c_out: int, kernel: int) -> None:
        """A conv with bias; `positions` = B * F * H_out * W_out."""
        self.flops += 2 * positions * c_in * c_out * kernel
        self.params += c_out * c_in * kernel + c_out

    def norm(self, channels: int) -> None:
        """GroupNorm or LayerNorm with affine weight and bias: parameters only."""
        self.params += 2 * channels

    def sdpa(self, groups: int, len_q: int, len_k: int, channels: int) -> None:
        """QK^T and AV over `groups` sequences; heads * head_dim = channels."""
        flops = 2 * 2 * groups * len_q * len_k * channels
        self.flops += flops
        self.attention += flops

    def row(self, name: str, output_shape: tuple[int, ...]) -> BlockFlops:
        return BlockFlops(name, self.params, tuple(output_shape), self.flops, self.attention)


def _conv3(t: _Tally, positions: int, c_in: int, c_out: int, conv_mode: str) -> None:
    """The ResBlock conv: full 3x3x3, or spatial 1x3x3 then temporal 3x1x1."""
    if conv_mode == "full":
        t.conv(positions, c_in, c_out, FULL_KERNEL)
    elif conv_mode == "factorized":
        t.conv(positions, c_in, c_out, SPATIAL_KERNEL)
        t.conv(positions, c_out, c_out, TEMPORAL_KERNEL)
    else:
        raise ConfigError(f"model.conv_mode={conv_mode!r}: use 'factorized' or 'full'")


def _resblock(t: _Tally, m: ModelConfig, b: int, positions: int, c_in: int, c_out: int) -> None:
    t.norm(c_in)
    _conv3(t, positions, c_in, c_out, m.conv_mode)
    t.linear(b, m.time_embed_dim, 2 * c_out)  # time_emb_proj
    t.norm(c_out)
    _conv3(t, positions, c_out, c_out, m.conv_mode)
    if c_in != c_out:
        t.conv(positions, c_in, c_out, 1)  # 1x1x1 skip


def _attention(t: _Tally, groups: int, len_q: int, len_k: int, channels: int,
               context_dim: int) -> None:
    """to_q / to_k / to_v (no bias), SDPA, to_out (bias) over `groups` sequences."""
    t.linear(groups * len_q, channels, channels, bias=False)
    t.linear(groups * len_k, context_dim, channels, bias=False)
    t.linear(groups * len_k, context_dim, channels, bias=False)
    t.sdpa(groups, len_q, len_k, channels)
    t.linear(groups * len_q, channels, channels)


def _transformer(t: _Tally, m: ModelConfig, b: int, frames: int, pixels: int, channels: int,
                 text_length: int) -> None:
    c, f, p = channels, frames, pixels
    tokens = b * f * p
    t.norm(c)  # GroupNorm
    t.linear(tokens, c, c)  # proj_in
    t.norm(c)
    _attention(t, b * f, p, p, c, c)  # spatial: (B*F, H*W)
    t.norm(c)
    # cross: (B*F, H*W) x (B, L), keys and values projected once per clip: the same count as
    # (B, F*H*W) x (B, L); the text alignment's bias adds a weight per head and no matmul.
    _attention(t, b, f * p, text_length, c, m.context_dim)
    if m.text_alignment:
        t.params += m.num_heads
    t.norm(c)
    _attention(t, b * p, f, f, c, c)  # temporal: (B*H*W, F)
    t.norm(c)
    t.linear(tokens, c, FF_MULT * c)  # ff.linear_1
    t.linear(tokens, FF_MULT * c, c)  # ff.linear_2
    t.linear(tokens, c, c)  # proj_out


def block_flops(config: Config, batch: int = 1,
                text_length: int | None = None) -> list[BlockFlops]:
    """One row per top-level block: time_embed, text_embed, conv_in, down_blocks.i, mid_block,
    up_blocks.i, norm_out, conv_out — for a forward pass of `batch` clips of the config's data
    size with `text_length` text tokens (default `config.text.max_length`)."""
    m, d = config.model, config.data
    length = config.text.max_length if text_length is None else text_length
    if batch < 1 or length < 1:
        raise ValueError(f"batch={batch} and text_length={length} must both be >= 1")
    size = d.model_size  # the side the UNet sees: pixels, or latents in latent mode
    factor = 2 ** (m.num_levels - 1)
    if size % factor:
        raise ConfigError(f"model input size {size} is not divisible by {factor} "
                          f"(one halving per extra model level)")
    b, f = batch, d.num_frames
    plan = unet_plan(m)
    temb = m.time_embed_dim

    def positions(level: int) -> int:
        side = size // 2 ** level
        return b * f * side * side

    def video(channels: int, level: int) -> tuple[int, ...]:
        side = size // 2 ** level
        return (b, channels, f, side, side)

    rows: list[BlockFlops] = []

    t = _Tally()
    t.linear(b, m.base_channels, temb)
    t.linear(b, temb, temb)
    rows.append(t.row("time_embed", (b, temb)))

    t = _Tally()
    t.linear(b, m.context_dim, temb)
    rows.append(t.row("text_embed", (b, temb)))

    t = _Tally()
    t.conv(positions(0), m.in_channels, plan.in_channels, SPATIAL_KERNEL)
    rows.append(t.row("conv_in", video(plan.in_channels, 0)))

    if m.frame_text:
        t = _Tally()
        t.flops += 2 * b * f * length * m.context_dim  # pool the tokens per frame
        t.linear(b * f, m.context_dim, plan.in_channels)
        rows.append(t.row("frame_text", (b, f, plan.in_channels)))

    for block in plan.blocks:
        t = _Tally()
        ch, level = block.out_channels, block.level
        for j, (c_in, c_out) in enumerate(block.resnets):
            _resblock(t, m, b, positions(level), c_in, c_out)
            if j < block.transformers:
                _transformer(t, m, b, f, (size // 2 ** level) ** 2, ch, length)
        if block.resample:
            # A stride-2 downsample, or the conv after a nearest 2x upsample: both pay for
            # their output grid.
            t.conv(positions(block.out_level), ch, ch, SPATIAL_KERNEL)
        rows.append(t.row(block.name, video(ch, block.out_level)))

    t = _Tally()
    t.norm(plan.out_channels)
    rows.append(t.row("norm_out", video(plan.out_channels, 0)))

    t = _Tally()
    t.conv(positions(0), plan.out_channels, m.out_channels, SPATIAL_KERNEL)
    rows.append(t.row("conv_out", video(m.out_channels, 0)))
    return rows


def forward_flops(config: Config, batch: int = 1, text_length: int | None = None) -> int:
    """Forward FLOPs of the whole UNet for `batch` clips (see the module docstring)."""
    return sum(r.forward_flops for r in block_flops(config, batch, text_length))


def num_parameters(config: Config) -> int:
    """Parameters of the UNet (equals `UNet3D(config.model).num_parameters()`)."""
    return sum(r.parameters for r in block_flops(config))


def training_flops_per_sample(config: Config, text_length: int | None = None) -> int:
    """Model FLOPs of one training step per clip: forward + backward = 3 x forward (batch 1)."""
    return 3 * forward_flops(config, 1, text_length)


def format_table(rows: list[BlockFlops]) -> str:
    """The `visualize` table: one line per block, then the totals."""
    lines = [f"{'block':<22} {'params':>12} {'output shape':<28} {'fwd GFLOPs':>11}"]
    for r in rows:
        shape = "x".join(str(s) for s in r.output_shape)
        lines.append(f"{r.name:<22} {r.parameters:>12,} {shape:<28} {r.forward_flops / 1e9:>11.3f}")
    total_params = sum(r.parameters for r in rows)
    total = sum(r.forward_flops for r in rows) / 1e9
    lines.append(f"{'total':<22} {total_params:>12,} {'':<28} {total:>11.3f}")
    return "\n".join(lines)
