"""The UNet suites' shared cases and backend helpers (tests/backends/test_unet*.py): tiny
configs, building a randomised model, inputs, and running / differentiating it on either
backend. Importable from any test as `unet_cases` (pyproject: pytest `pythonpath`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from shared.config import ModelConfig, preset

REPO = Path(__file__).resolve().parents[2]
CONTEXT_DIM = 384
FRAMES, SIZE, TOKENS = 4, 16, 6


def tiny(**changes) -> ModelConfig:
    return replace(preset("tiny").model, **changes)


CONFIGS = {
    "factorized": tiny(),
    "full": tiny(conv_mode="full"),
    "three_levels": tiny(channel_mult=(1, 2, 2), attention_levels=(0, 2)),
}


# ---------------------------------------------------------------------------------------------
# the models, on either backend (what differs is the adapter's: tests/backends/conftest.py)


def unet_module(backend):
    return backend.module("unet")


def build(backend, config: ModelConfig, seed: int = 0, randomize: bool = True):
    """A model in eval mode; `randomize` nudges every parameter so no layer is zero or identity.

    Zero-initialised layers (conv_out, conv2, proj_out) would hide every path behind them, and
    dirac temporal convs would not mix frames, so the behavioural tests perturb all weights.
    """
    backend.seed(seed)
    model = unet_module(backend).UNet3D(config)
    model.eval()
    if randomize:
        backend.perturb(model, 0.05)
    return model


def inputs(backend, config: ModelConfig, batch: int = 2, seed: int = 1, frames: int = FRAMES,
           size: int = SIZE):
    """x (a video batch), t (B,), context (B, L, D), mask (B, L) with 2 padding tokens,
    pooled (B, D)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(backend.video_shape(batch, config.in_channels, frames, size, size),
                            dtype=np.float32)
    t = rng.integers(0, 1000, batch)
    context = rng.standard_normal((batch, TOKENS, config.context_dim), dtype=np.float32)
    mask = np.ones((batch, TOKENS), dtype=bool)
    mask[:, TOKENS - 2:] = False  # the last two tokens are padding
    pooled = rng.standard_normal((batch, config.context_dim), dtype=np.float32)
    return tuple(backend.array(a) for a in (x, t, context, mask, pooled))


def run(backend, model, *args) -> np.ndarray:
    """The model's output (no gradients) as numpy."""
    with backend.no_grad():
        out = model(*args)
    backend.eval(out)
    return backend.numpy(out)


def params(backend, model) -> dict:
    """name -> parameter, in the backend's own arrays."""
    return backend.params(model)


def set_params(backend, model, updates: dict) -> None:
    """Overwrite the named parameters with the given numpy (or backend) values."""
    backend.set_parameters(model, updates)


def load_weights_strict(backend, model, weights: dict) -> None:
    backend.load_weights_strict(model, weights)


def to_bfloat16(backend, model):
    return backend.to_bfloat16(model)


def train(backend, model):
    model.train()
    return model


def loss_and_grads(backend, model, args) -> tuple[np.ndarray, dict]:
    """The output and d mean(out^2) / d parameter (numpy; None where torch has no gradient)."""
    return backend.loss_and_grads(model, args)


def conv_shape(backend, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A torch conv weight shape (O, I, kF, kH, kW) in the backend's layout."""
    if backend.channels_last and len(shape) == 5:
        return (shape[0], *shape[2:], shape[1])
    return shape


def torch_conv_shape(backend, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A conv weight shape in the backend's layout as torch's (O, I, kF, kH, kW)."""
    if backend.channels_last and len(shape) == 5:
        return (shape[0], shape[4], *shape[1:4])
    return tuple(shape)


def conv_weight(backend, w: np.ndarray) -> np.ndarray:
    """A torch-layout (O, I, kF, kH, kW) numpy conv weight in the backend's layout."""
    return np.moveaxis(w, 1, -1) if backend.channels_last and w.ndim == 5 else w


def dirac(backend, out_ch: int, in_ch: int, kernel: tuple[int, int, int]) -> np.ndarray:
    """torch `nn.init.dirac_` in the backend's layout: the centre tap maps i -> i."""
    w = np.zeros((out_ch, in_ch, *kernel), dtype=np.float32)
    d = np.arange(min(out_ch, in_ch))
    w[d, d, kernel[0] // 2, kernel[1] // 2, kernel[2] // 2] = 1.0
    return conv_weight(backend, w)


def normal(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def parameter_keys(backend, model) -> list[str]:
    return backend.parameter_keys(model)
