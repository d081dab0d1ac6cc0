"""Stub models for the suites over both backends, each as a torch and an mlx.nn Module:
`backend.stubs(suite)` (tests/backends/conftest.py) gives `<suite>_<backend>()`'s classes.

sample (tests/backends/test_sample.py). Stub: out = 0.1 x + (a per-sample constant from the
text) + (a per-channel offset) + 2e-4 t, in the backend's layout; records each call's batch
size, timesteps (numpy), pooled text (numpy), train/eval mode and whether grad was enabled (MLX
has no such mode: always False). Broken: a Stub whose forward raises RuntimeError("boom"). The
numpy twin is test_sample.twin.

diffusion (tests/backends/test_diffusion.py). FixedOutput: a stub UNet that returns a known
array (a parameter, so gradients can be checked) and records what it was called with;
HalfOutput: the same in bfloat16.

latent (tests/backends/test_latent.py). make_tiny_vae(folder, seed): a two-level
AutoencoderKL (8 x 8 x 4 latents from 16 x 16 frames) saved to `folder` in diffusers' format
(config.json + diffusion_pytorch_model.safetensors, torch layout, diffusers' keys), its
scaling_factor set the way Stable Diffusion's was: 1 / the std of its latents. torch saves
diffusers' own with save_pretrained; MLX writes the port's randomly initialised weights with no
torch import (the parity tests check the port's keys against diffusers').
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOKENS = 5
CHANNEL_OFFSET = np.array([0.05, -0.1, 0.2], dtype=np.float32)


def sample_torch() -> tuple[type, type]:
    import torch
    from torch import nn

    class Stub(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(0.1))  # a parameter, like a real model
            self.calls: list[dict] = []

        def forward(self, x, t, states, mask, pooled):
            self.calls.append({"batch": x.shape[0], "t": t.clone().numpy(),
                               "pooled": pooled.clone().numpy(), "training": self.training,
                               "grad": torch.is_grad_enabled()})
            m = mask.double()
            s = ((states.double() * m[..., None]).sum(dim=(1, 2))
                 / (m.sum(dim=1) * states.shape[-1]))
            c = (0.3 * torch.tanh(pooled.double().sum(dim=1)) + 0.5 * s
                 + 0.05 * m.sum(dim=1) / TOKENS)
            offset = torch.from_numpy(CHANNEL_OFFSET).to(x).view(1, -1, 1, 1, 1)
            return (self.scale.detach() * x + c.to(x).view(-1, 1, 1, 1, 1) + offset
                    + 2e-4 * t.to(x).view(-1, 1, 1, 1, 1))

    class Broken(Stub):
        def forward(self, *args):
            raise RuntimeError("boom")

    return Stub, Broken


def sample_mlx() -> tuple[type, type]:
    import mlx.core as mx
    import mlx.nn as nn

    class Stub(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = mx.array(0.1)  # a parameter, like a real model
            object.__setattr__(self, "calls", [])  # not a child: kept out of parameters()

        def __call__(self, x, t, states, mask, pooled):
            self.calls.append({"batch": x.shape[0], "t": np.array(t), "pooled": np.array(pooled),
                               "training": self.training, "grad": False})
            m = mask.astype(mx.float32)
            s = (states * m[..., None]).sum(axis=(1, 2)) / (m.sum(axis=1) * states.shape[-1])
            c = 0.3 * mx.tanh(pooled.sum(axis=1)) + 0.5 * s + 0.05 * m.sum(axis=1) / TOKENS
            offset = mx.array(CHANNEL_OFFSET)
            return (self.scale * x + c.reshape(-1, 1, 1, 1, 1).astype(x.dtype) + offset
                    + 2e-4 * t.astype(x.dtype).reshape(-1, 1, 1, 1, 1))

    class Broken(Stub):
        def __call__(self, *args):
            raise RuntimeError("boom")

    return Stub, Broken


def diffusion_torch() -> tuple[type, type]:
    import torch
    from torch import nn

    class FixedOutput(nn.Module):
        def __init__(self, output):
            super().__init__()
            self.output = nn.Parameter(output.clone())
            self.calls: list[tuple] = []

        def forward(self, x, t, context, context_mask, pooled):
            self.calls.append((x.detach().clone(), t.clone(), context, context_mask, pooled))
            return self.output

    class HalfOutput(FixedOutput):
        def forward(self, *args):
            return super().forward(*args).to(torch.bfloat16)

    return FixedOutput, HalfOutput


def diffusion_mlx() -> tuple[type, type]:
    import mlx.core as mx
    import mlx.nn as nn

    class FixedOutput(nn.Module):
        def __init__(self, output):
            super().__init__()
            self.output = mx.array(output)
            object.__setattr__(self, "calls", [])  # not a child: kept out of parameters()

        def __call__(self, x, t, context, context_mask, pooled):
            self.calls.append((x, t, context, context_mask, pooled))
            return self.output

    class HalfOutput(FixedOutput):
        def __call__(self, *inputs):
            return super().__call__(*inputs).astype(mx.bfloat16)

    return FixedOutput, HalfOutput


def latent_torch() -> tuple:
    import torch

    def make_tiny_vae(folder: Path, seed: int) -> Path:
        import pytest

        diffusers = pytest.importorskip("diffusers")
        torch.manual_seed(seed)
        vae = diffusers.AutoencoderKL(
            block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
            norm_num_groups=8, sample_size=16, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2)
        with torch.no_grad():
            x = torch.rand(8, 3, 16, 16) * 2 - 1
            std = float(vae.encode(x).latent_dist.mean.std())
        vae.register_to_config(scaling_factor=1.0 / std)
        vae.save_pretrained(folder)
        return folder

    return (make_tiny_vae,)


def latent_mlx() -> tuple:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from safetensors.numpy import save_file

    from shared.data.latents import VAE_WEIGHTS, VAEInfo
    from shared.model.layouts import MLX_TO_TORCH_AXES
    from t2s_mlx import vae as mlx_vae

    def make_tiny_vae(folder: Path, seed: int) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
                  "down_block_types": ["DownEncoderBlock2D"] * 2,
                  "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [32, 64],
                  "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
                  "sample_size": 16, "scaling_factor": 1.0}
        (folder / "config.json").write_text(json.dumps(config))
        mx.random.seed(seed)
        model = mlx_vae.AutoencoderKL(VAEInfo.read(folder))
        save_file({k: np.ascontiguousarray(np.array(v).transpose(MLX_TO_TORCH_AXES[v.ndim]))
                   if v.ndim in MLX_TO_TORCH_AXES else np.array(v)
                   for k, v in tree_flatten(model.parameters())}, folder / VAE_WEIGHTS)
        frames = np.random.default_rng(seed).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
        config["scaling_factor"] = 1.0 / float(
            mlx_vae.LatentVAE.from_pretrained(folder).encode(frames).std())
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    return (make_tiny_vae,)
