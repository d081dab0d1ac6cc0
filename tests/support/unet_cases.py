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
# what differs between the backends


def unet_module(backend):
    return backend.module("unet")


def build(backend, config: ModelConfig, seed: int = 0, randomize: bool = True):
    """A model in eval mode; `randomize` nudges every parameter so no layer is zero or identity.

    Zero-initialised layers (conv_out, conv2, proj_out) would hide every path behind them, and
    dirac temporal convs would not mix frames, so the behavioural tests perturb all weights.
    """
    UNet3D = unet_module(backend).UNet3D
    if backend.name == "torch":
        torch = backend.xp
        torch.manual_seed(seed)
        model = UNet3D(config).eval()
        if randomize:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        return model
    from mlx.utils import tree_map

    mx = backend.xp
    mx.random.seed(seed)
    model = UNet3D(config)
    model.eval()
    if randomize:
        model.update(tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), model.parameters()))
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
    if backend.name == "torch":
        with backend.xp.no_grad():
            return backend.numpy(model(*args))
    out = model(*args)
    backend.xp.eval(out)
    return backend.numpy(out)


def params(backend, model) -> dict:
    """name -> parameter, in the backend's own arrays."""
    if backend.name == "torch":
        return dict(model.named_parameters())
    from mlx.utils import tree_flatten

    return dict(tree_flatten(model.parameters()))


def set_params(backend, model, updates: dict) -> None:
    """Overwrite the named parameters with the given numpy (or backend) values."""
    if backend.name == "torch":
        torch = backend.xp
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in updates.items():
                named[name].copy_(torch.as_tensor(np.asarray(value)))
        return
    from mlx.utils import tree_unflatten

    model.update(tree_unflatten([(n, backend.xp.array(np.asarray(v)))
                                 for n, v in updates.items()]))


def load_weights_strict(backend, model, weights: dict) -> None:
    if backend.name == "torch":
        model.load_state_dict(weights, strict=True)
    else:
        model.load_weights(list(weights.items()), strict=True)


def to_bfloat16(backend, model):
    if backend.name == "torch":
        return model.to(backend.bfloat16)
    model.set_dtype(backend.bfloat16)
    return model


def train(backend, model):
    model.train()
    return model


def loss_and_grads(backend, model, args) -> tuple[np.ndarray, dict]:
    """The output and d mean(out^2) / d parameter (numpy; None where torch has no gradient)."""
    if backend.name == "torch":
        model.zero_grad(set_to_none=True)
        out = model(*args)
        out.square().mean().backward()
        return backend.numpy(out), {n: None if p.grad is None else backend.numpy(p.grad)
                                    for n, p in model.named_parameters()}
    from mlx.utils import tree_flatten

    mx = backend.xp

    def loss_fn(*a):
        out = model(*a)
        return mx.mean(out * out), out

    (_, out), grads = backend.nn.value_and_grad(model, loss_fn)(*args)
    mx.eval(out, grads)
    return backend.numpy(out), {n: backend.numpy(g) for n, g in tree_flatten(grads)}


def conv_shape(backend, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A torch conv weight shape (O, I, kF, kH, kW) in the backend's layout."""
    if backend.channels_last and len(shape) == 5:
        return (shape[0], *shape[2:], shape[1])
    return shape


def normal(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)



def parameter_keys(backend, model) -> list[str]:
    if backend.name == "torch":
        return [n for n, _ in model.named_parameters()]
    return unet_module(backend).parameter_keys(model)
