"""Inflating a Stable Diffusion UNet to video, as Tune-A-Video does, without forking diffusers.

diffusers' `UNet2DConditionModel` is used as it is; three additions make it a video model:

1. Frames are folded into the batch. `InflatedUNet` runs the 2D UNet on (B*F, C, H, W), so
   every conv, GroupNorm, up/downsampling and cross-attention works per frame, exactly as the
   pretrained image weights expect, and upsampling is spatial only. (Upstream Tune-A-Video's
   ResNet GroupNorms pool statistics over all frames; per frame keeps the image prior intact
   and keeps a frame's output independent of later frames, which the causal attention below
   needs in order to mean anything.)
2. Every spatial self-attention (`attn1` of each `BasicTransformerBlock`) gets a
   `SparseCausalAttnProcessor`: the queries of frame i attend to the keys and values of frame
   0 and frame i-1 (frame 0 to itself), which ties every frame to the first one's appearance.
3. Every `BasicTransformerBlock` gains a submodule `attn_temp` (`TemporalAttention`: pre-norm
   LayerNorm, diffusers `Attention` over the frames of each pixel, zero-initialised output
   projection, residual), run by a forward hook on the block that regroups the block's output
   (B*F, HW, C) -> (B*HW, F, C) and back. Zero init makes the inflated UNet start out as the
   image model applied frame by frame (with sparse-causal attention).

The processors and hooks learn the number of frames from a `FrameContext` that
`InflatedUNet.forward` sets before each call. It stays set afterwards on purpose: gradient
checkpointing recomputes block forwards during the backward pass, after `forward` returned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from t2s_torch.tav.config import DEFAULT_TRAINABLE_MODULES


@dataclass
class FrameContext:
    """How many frames the current batch folds per video; shared by processors and hooks."""

    num_frames: int | None = None

    def frames_for(self, batch: int) -> int:
        f = self.num_frames
        if f is None:
            raise RuntimeError("an inflated attention layer ran outside InflatedUNet.forward; "
                               "call the InflatedUNet (B, C, F, H, W), not its inner .unet")
        if batch % f:
            raise RuntimeError(f"a batch of {batch} frames is not a whole number of "
                               f"{f}-frame videos")
        return f


def sparse_causal_index(num_frames: int, device: torch.device | None = None) -> torch.Tensor:
    """(F, 2) frame indices each frame's queries attend to: frame 0 and the previous frame.

    Frame 0 gets (0, 0): attending to the same keys twice gives the same output as once, so its
    self-attention is exactly the image model's, and the tensor stays rectangular.
    """
    frames = torch.arange(num_frames, device=device)
    return torch.stack([torch.zeros_like(frames), (frames - 1).clamp(min=0)], dim=1)


class SparseCausalAttnProcessor:
    """Self-attention of frame i over frames {0, i-1}, through SDPA; set on every `attn1`."""

    def __init__(self, frames: FrameContext):
        self.frames = frames

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("sparse-causal attention is unmasked self-attention; this attn1 "
                             "was given encoder states or a mask")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            n, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(n, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        n, length, _ = hidden_states.shape
        f = self.frames.frames_for(n)
        index = sparse_causal_index(f, hidden_states.device)
        query = attn.to_q(hidden_states)
        key = _gather_frames(attn.to_k(hidden_states), f, index)
        value = _gather_frames(attn.to_v(hidden_states), f, index)

        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(n, -1, heads, head_dim).transpose(1, 2)
        key = key.view(n, -1, heads, head_dim).transpose(1, 2)
        value = value.view(n, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        out = out.transpose(1, 2).reshape(n, length, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))

        if input_ndim == 4:
            out = out.transpose(1, 2).reshape(n, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _gather_frames(x: torch.Tensor, num_frames: int, index: torch.Tensor) -> torch.Tensor:
    """(B*F, L, D) per-frame tokens -> (B*F, len(index[i]) * L, D): frame i's chosen frames."""
    n, length, dim = x.shape
    videos = x.view(n // num_frames, num_frames, length, dim)
    return videos[:, index].reshape(n, index.shape[1] * length, dim)


class TemporalAttention(nn.Module):
    """Residual self-attention over the frames of each pixel: x + attn(LayerNorm(x)).

    Input (N, F, C) with N = batch * pixels. The output projection starts at zero, so a fresh
    layer is the identity and fine-tuning starts from the image model.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(query_dim=dim, heads=heads, dim_head=dim_head, bias=False,
                              processor=AttnProcessor2_0())
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class TemporalAttentionHook:
    """Forward hook of a BasicTransformerBlock: its output, then `attn_temp` across frames."""

    def __init__(self, frames: FrameContext):
        self.frames = frames

    def __call__(self, block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        n, length, channels = output.shape
        f = self.frames.frames_for(n)
        b = n // f
        x = output.view(b, f, length, channels).transpose(1, 2).reshape(b * length, f, channels)
        x = block.attn_temp(x)
        return x.view(b, length, f, channels).transpose(1, 2).reshape(n, length, channels)


class InflatedUNet(nn.Module):
    """A Stable Diffusion UNet made a video UNet: (B, C, F, H, W) in, (B, C, F, H, W) out.

    Construction inflates `unet` in place (processors, `attn_temp` submodules, hooks); its
    parameter names are the 2D UNet's plus `...transformer_blocks.N.attn_temp.*`.
    """

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
        if not blocks:
            raise ValueError("this UNet has no transformer blocks to inflate (is it a Stable "
                             "Diffusion UNet2DConditionModel?)")
        if any(hasattr(b, "attn_temp") for b in blocks):
            raise ValueError("this UNet is already inflated")
        self.unet = unet
        self.frames = FrameContext()
        for block in blocks:
            reference = next(block.parameters())
            block.attn_temp = TemporalAttention(
                block.dim, block.num_attention_heads, block.attention_head_dim,
            ).to(device=reference.device, dtype=reference.dtype)
            block.attn1.set_processor(SparseCausalAttnProcessor(self.frames))
            block.register_forward_hook(TemporalAttentionHook(self.frames))

    @property
    def config(self):
        return self.unet.config

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """The noise (or v) prediction for video latents `sample` (B, C, F, H, W) at `timestep`
        (a number or one per video) given text states (B, L, D)."""
        b, c, f, h, w = sample.shape
        x = sample.transpose(1, 2).reshape(b * f, c, h, w)
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(()).expand(b) if t.numel() == 1 else t
        self.frames.num_frames = f
        out = self.unet(x, t.repeat_interleave(f), encoder_hidden_states.repeat_interleave(f, 0),
                        return_dict=False)[0]
        return out.reshape(b, f, -1, h, w).transpose(1, 2)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.endswith("." + p) for p in patterns)


def set_trainable(unet: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Freeze everything except modules whose dotted name ends with one of `patterns`.

    A pattern matches at module-name boundaries (`attn1.to_q` matches
    `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`); each must match something,
    so a typo fails here rather than silently training nothing. Returns the trainable
    parameter names (keys of `unet.state_dict()`).
    """
    patterns = [p.strip().strip(".") for p in patterns if p.strip().strip(".")]
    if not patterns:
        raise ValueError("--trainable_modules is empty; name at least one module, e.g. "
                         f"{', '.join(DEFAULT_TRAINABLE_MODULES)}")
    unet.requires_grad_(False)
    used = set()
    for name, module in unet.named_modules():
        hit = [p for p in patterns if _matches(name, [p])]
        if hit:
            used.update(hit)
            module.requires_grad_(True)
    unused = [p for p in patterns if p not in used]
    if unused:
        raise ValueError(f"--trainable_modules {', '.join(unused)} matches no module of the "
                         f"UNet; use dotted module-name endings such as "
                         f"{', '.join(DEFAULT_TRAINABLE_MODULES)}")
    return [n for n, p in unet.named_parameters() if p.requires_grad]
