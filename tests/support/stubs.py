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
"""

from __future__ import annotations

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
