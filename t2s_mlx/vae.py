"""Latent mode's image autoencoder in MLX: a port of diffusers' AutoencoderKL.

The twin of `t2s_torch/vae.py` (which runs diffusers itself): the same `LatentVAE` with the same
methods, reading the same folder (`config.json` + `diffusion_pytorch_model.safetensors`), with
numpy in and out so the latent cache and the sampler's decode hook do not care which backend made
them. Nothing here imports torch.

The port keeps diffusers' module tree and parameter keys (`encoder.down_blocks.0.resnets.0.conv1`,
`encoder.mid_block.attentions.0.to_q`, `quant_conv`, ...), so loading is a per-tensor layout
change, the 4-D row of the shared table (`shared.model.layouts.TORCH_TO_MLX_AXES`: conv weights
(O, I, kH, kW) -> (O, kH, kW, I)); activations are channels-last (N, H, W, C). Every numerical
choice is diffusers':

- ResnetBlock2D: GN -> SiLU -> conv -> GN -> SiLU -> conv, plus a 1x1 `conv_shortcut` when the
  width changes; GroupNorm eps 1e-6 (`pytorch_compatible=True`), output scale 1.
- Downsample2D: zero-pad one row / column at the bottom / right, then a 3x3 stride-2 conv.
  Upsample2D: nearest 2x, then a 3x3 conv.
- Mid block: resnet, single-head self-attention over all H x W positions (GroupNorm first,
  residual added, linear to_q / to_k / to_v / to_out.0), resnet.
- `encode` returns the posterior's mean (the first half of `quant_conv`'s channels): the cache
  stores one deterministic latent per clip rather than freezing one random draw of it.

Older diffusers files name the attention weights `query`, `key`, `value`, `proj_attn`; they are
renamed on load, as diffusers does.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from shared.data.latents import VAE_WEIGHTS, VAEInfo, resolve_vae, vae_hash
from shared.model.layouts import TORCH_TO_MLX_AXES

NORM_EPS = 1e-6
_DEPRECATED_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.",
                         ".proj_attn.": ".to_out.0."}


def group_norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=NORM_EPS, affine=True, pytorch_compatible=True)


class ResnetBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(nn.silu(self.norm1(x)))
        h = self.conv2(nn.silu(self.norm2(h)))
        skip = self.conv_shortcut(x) if "conv_shortcut" in self else x
        return skip + h


class Attention(nn.Module):
    """Single-head self-attention over the H x W positions, with its own GroupNorm and residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = group_norm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = [nn.Linear(channels, channels)]

    def __call__(self, x: mx.array) -> mx.array:
        n, h, w, c = x.shape
        y = self.group_norm(x).reshape(n, 1, h * w, c)
        q, k, v = self.to_q(y), self.to_k(y), self.to_v(y)
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c))
        return x + self.to_out[0](y).reshape(n, h, w, c)


class MidBlock2D(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = [ResnetBlock2D(channels, channels, groups),
                        ResnetBlock2D(channels, channels, groups)]
        self.attentions = [Attention(channels, groups)] if attention else []

    def __call__(self, x: mx.array) -> mx.array:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Downsample2D(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)]))


class Upsample2D(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        n, h, w, c = x.shape
        x = mx.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
        return self.conv(x.reshape(n, 2 * h, 2 * w, c))


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int,
                 downsample: bool) -> None:
        super().__init__()
        self.resnets = [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, groups)
                        for i in range(layers)]
        self.downsamplers = [Downsample2D(out_ch)] if downsample else []

    def __call__(self, x: mx.array) -> mx.array:
        for layer in (*self.resnets, *self.downsamplers):
            x = layer(x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int,
                 upsample: bool) -> None:
        super().__init__()
        self.resnets = [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, groups)
                        for i in range(layers)]
        self.upsamplers = [Upsample2D(out_ch)] if upsample else []

    def __call__(self, x: mx.array) -> mx.array:
        for layer in (*self.resnets, *self.upsamplers):
            x = layer(x)
        return x


class Encoder(nn.Module):
    """Pixels (N, H, W, in) -> 2 x latent_channels moments at 1 / downsample the size."""

    def __init__(self, info: VAEInfo) -> None:
        super().__init__()
        chs, groups = info.block_out_channels, info.norm_num_groups
        self.conv_in = nn.Conv2d(info.in_channels, chs[0], 3, padding=1)
        self.down_blocks = [
            DownEncoderBlock2D(chs[max(i - 1, 0)], ch, info.layers_per_block, groups,
                               downsample=i < len(chs) - 1) for i, ch in enumerate(chs)]
        self.mid_block = MidBlock2D(chs[-1], groups, info.mid_block_add_attention)
        self.conv_norm_out = group_norm(groups, chs[-1])
        self.conv_out = nn.Conv2d(chs[-1], 2 * info.latent_channels, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents (N, h, w, latent_channels) -> pixels (N, H, W, out)."""

    def __init__(self, info: VAEInfo) -> None:
        super().__init__()
        chs, groups = tuple(reversed(info.block_out_channels)), info.norm_num_groups
        self.conv_in = nn.Conv2d(info.latent_channels, chs[0], 3, padding=1)
        self.mid_block = MidBlock2D(chs[0], groups, info.mid_block_add_attention)
        self.up_blocks = [
            UpDecoderBlock2D(chs[max(i - 1, 0)], ch, info.layers_per_block + 1, groups,
                             upsample=i < len(chs) - 1) for i, ch in enumerate(chs)]
        self.conv_norm_out = group_norm(groups, chs[-1])
        self.conv_out = nn.Conv2d(chs[-1], info.out_channels, 3, padding=1)

    def __call__(self, z: mx.array) -> mx.array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """diffusers' AutoencoderKL, channels-last: `encode` -> the posterior mean, `decode`."""

    def __init__(self, info: VAEInfo) -> None:
        super().__init__()
        self.latent_channels = info.latent_channels
        self.encoder = Encoder(info)
        self.decoder = Decoder(info)
        if info.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * info.latent_channels, 2 * info.latent_channels, 1)
        if info.use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(info.latent_channels, info.latent_channels, 1)

    def encode(self, x: mx.array) -> mx.array:
        """Pixels in [-1, 1] (N, H, W, C) -> the latent mean (N, h, w, latent_channels)."""
        moments = self.encoder(x)
        if "quant_conv" in self:
            moments = self.quant_conv(moments)
        return moments[..., :self.latent_channels]

    def decode(self, z: mx.array) -> mx.array:
        """Unscaled latents (N, h, w, latent_channels) -> pixels (N, H, W, C), about [-1, 1]."""
        if "post_quant_conv" in self:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def load_vae_weights(model: AutoencoderKL, path: Path, dtype: mx.Dtype = mx.float32) -> None:
    """Read diffusers' safetensors (torch layout) into the port, refusing any mismatch."""
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    loaded = {}
    for key, value in mx.load(str(path)).items():
        for old, new in _DEPRECATED_ATTENTION.items():
            key = key.replace(old, new)
        want = expected.get(key)
        if want is not None and len(want) == 2 and value.ndim == 4:  # old 1x1-conv attention
            value = value.reshape(value.shape[:2])
        axes = TORCH_TO_MLX_AXES.get(value.ndim)
        loaded[key] = (value.transpose(axes) if axes else value).astype(dtype)
    missing, unexpected = sorted(set(expected) - set(loaded)), sorted(set(loaded) - set(expected))
    wrong = [k for k in set(expected) & set(loaded) if tuple(loaded[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: weights do not fit the AutoencoderKL its config.json builds: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}, "
                         f"wrong shape {sorted(wrong)[:3]}")
    model.update(tree_unflatten(list(loaded.items())))


class LatentVAE:
    """Frames <-> scaled latents for latent mode, numpy in and out, in batches of frames.

    `encode` takes uint8 frames (or floats in [-1, 1]), (N, H, W, 3), and returns the latents the
    diffusion model trains on: `(mean - shift_factor) * scaling_factor`, float32 (N, h, w, C).
    `decode` undoes the scaling and returns float32 frames in [-1, 1]. Both run `batch_size`
    frames at a time so that a 28-frame clip at 128 px (or several clips) fits in memory.
    """

    def __init__(self, model: AutoencoderKL, info: VAEInfo, dtype: mx.Dtype = mx.float32,
                 batch_size: int = 8):
        self.model, self.info, self.dtype = model, info, dtype
        self.batch_size = max(1, int(batch_size))
        self.hash = vae_hash(info.path)
        self.model.eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | None = None,
                        dtype: mx.Dtype = mx.float32, batch_size: int = 8) -> LatentVAE:
        """Load a VAE folder (or cached hub id); `device` None keeps MLX's current default."""
        if device is not None:
            from t2s_mlx.device import select_device

            select_device(device)
        info = VAEInfo.read(resolve_vae(name_or_path))
        model = AutoencoderKL(info)
        load_vae_weights(model, info.path / VAE_WEIGHTS, dtype)
        mx.eval(model.parameters())
        return cls(model, info, dtype, batch_size)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        out = []
        for start in range(0, len(frames), self.batch_size):
            x = mx.array(frames[start:start + self.batch_size])
            x = x.astype(mx.float32) * (1 / 127.5) - 1.0 if x.dtype == mx.uint8 else x
            z = self.model.encode(x.astype(self.dtype)).astype(mx.float32)
            z = (z - self.info.shift_factor) * self.info.scaling_factor
            out.append(np.array(z))
        return np.concatenate(out)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(latents), self.batch_size):
            z = mx.array(np.asarray(latents[start:start + self.batch_size], dtype=np.float32))
            z = z / self.info.scaling_factor + self.info.shift_factor
            x = self.model.decode(z.astype(self.dtype)).astype(mx.float32)
            out.append(np.clip(np.array(x), -1.0, 1.0))
        return np.concatenate(out)

    def decode_video(self, latents: np.ndarray) -> np.ndarray:
        """The sampler's decode hook: (B, F, h, w, C) latents -> (B, F, H, W, 3) in [-1, 1]."""
        b, f = latents.shape[:2]
        frames = self.decode(latents.reshape(b * f, *latents.shape[2:]))
        return frames.reshape(b, f, *frames.shape[1:])
