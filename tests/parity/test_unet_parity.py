"""The two UNet bodies compute the same function: torch weights converted by the shared layout
table give the MLX UNet the same outputs and the same parameter gradients, MLX weights give the
torch UNet the same outputs, and a round trip through the other layout is bit-exact.

Weights are randomised everywhere (zero-initialised and dirac layers included), inputs are drawn
once in numpy and handed to each backend in its own layout: x channels-first for torch,
channels-last for MLX."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

from mlx.utils import tree_flatten, tree_map  # noqa: E402

from shared.config import ModelConfig, preset  # noqa: E402
from shared.model.layouts import MLX_TO_TORCH_AXES, TORCH_TO_MLX_AXES  # noqa: E402
from t2s_mlx.unet import UNet3D as MLXUNet3D  # noqa: E402
from t2s_mlx.unet import load_torch_layout_weights, torch_layout_weights  # noqa: E402
from t2s_torch.unet import UNet3D as TorchUNet3D  # noqa: E402

# torch on one thread: its OpenMP workers and MLX's threads fight over the cores in one
# process (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES, SIZE, TOKENS = 4, 16, 6
FORWARD_ATOL = 1e-4
GRAD_RTOL = 1e-3


def tiny(**changes) -> ModelConfig:
    return replace(preset("tiny").model, **changes)


CONFIGS = {
    "tiny": tiny(),
    "full": tiny(conv_mode="full"),
    "three_levels": tiny(channel_mult=(1, 2, 2), attention_levels=(0, 2), num_res_blocks=2),
    "no_text_alignment": tiny(text_alignment=False),
    "frame_text": tiny(frame_text=True),
}


def torch_model(config: ModelConfig, seed: int = 0) -> TorchUNet3D:
    torch.manual_seed(seed)
    model = TorchUNet3D(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def mlx_model(config: ModelConfig, seed: int = 0) -> MLXUNet3D:
    mx.random.seed(seed)
    model = MLXUNet3D(config)
    model.eval()
    model.update(tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), model.parameters()))
    return model


def torch_state_numpy(model: TorchUNet3D) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def to_mlx_layout(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The shared layout table applied by hand (what the converters do)."""
    return {k: v.transpose(TORCH_TO_MLX_AXES[v.ndim]) if v.ndim in TORCH_TO_MLX_AXES else v
            for k, v in tensors.items()}


def mlx_to_torch_layout(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.transpose(MLX_TO_TORCH_AXES[v.ndim]) if v.ndim in MLX_TO_TORCH_AXES else v
            for k, v in tensors.items()}


def converted_pair(config: ModelConfig) -> tuple[TorchUNet3D, MLXUNet3D]:
    """A randomised torch UNet and an MLX UNet holding its weights (via the layout table)."""
    t_model = torch_model(config)
    m_model = MLXUNet3D(config)
    m_model.eval()
    mlx_tensors = to_mlx_layout(torch_state_numpy(t_model))
    m_model.load_weights([(k, mx.array(v)) for k, v in mlx_tensors.items()], strict=True)
    return t_model, m_model


def numpy_inputs(config: ModelConfig, batch: int = 2, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, config.in_channels, FRAMES, SIZE, SIZE), dtype=np.float32)
    t = np.array([3, 700][:batch])
    context = rng.standard_normal((batch, TOKENS, config.context_dim), dtype=np.float32)
    mask = np.ones((batch, TOKENS), dtype=bool)
    mask[1:, 4:] = False  # sample 1 has two padding tokens
    pooled = rng.standard_normal((batch, config.context_dim), dtype=np.float32)
    return x, t, context, mask, pooled


def as_torch(x, t, context, mask, pooled):
    def conv(a):
        return None if a is None else torch.from_numpy(np.asarray(a))
    return conv(x), t if np.isscalar(t) else conv(t), conv(context), conv(mask), conv(pooled)


def as_mlx(x, t, context, mask, pooled):
    def conv(a):
        return None if a is None else mx.array(a)
    return (mx.array(x.transpose(0, 2, 3, 4, 1)), t if np.isscalar(t) else mx.array(t),
            conv(context), conv(mask), conv(pooled))


def torch_forward(model: TorchUNet3D, args) -> np.ndarray:
    with torch.no_grad():
        return model(*as_torch(*args)).numpy()


def mlx_forward(model: MLXUNet3D, args) -> np.ndarray:
    out = model(*as_mlx(*args))
    mx.eval(out)
    return np.array(out).transpose(0, 4, 1, 2, 3)  # back to (B, C, F, H, W)


def assert_forward_close(t_model, m_model, args) -> float:
    expected, got = torch_forward(t_model, args), mlx_forward(m_model, args)
    assert got.shape == expected.shape
    assert np.abs(expected).max() > 0.1  # the randomised model is far from its zero start
    diff = float(np.abs(got - expected).max())
    assert diff <= FORWARD_ATOL, diff
    return diff


# ---------------------------------------------------------------------------------------------
# forward


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_weights_give_mlx_the_same_output(name):
    config = CONFIGS[name]
    t_model, m_model = converted_pair(config)
    assert_forward_close(t_model, m_model, numpy_inputs(config))


def test_edge_inputs_match_too():
    """An all-padding mask row, no pooled embedding and a scalar timestep; then no mask."""
    config = CONFIGS["tiny"]
    t_model, m_model = converted_pair(config)
    x, _, context, mask, _ = numpy_inputs(config)
    mask[1] = False
    assert_forward_close(t_model, m_model, (x, 250, context, mask, None))
    assert_forward_close(t_model, m_model, (x, 999, context, None, None))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mlx_weights_give_torch_the_same_output(name):
    config = CONFIGS[name]
    m_model = mlx_model(config, seed=7)
    tensors = mlx_to_torch_layout({k: np.array(v) for k, v in tree_flatten(m_model.parameters())})
    t_model = TorchUNet3D(config).eval()
    t_model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                             for k, v in tensors.items()}, strict=True)
    assert_forward_close(t_model, m_model, numpy_inputs(config))


def test_round_trips_are_bit_exact():
    config = CONFIGS["tiny"]
    # torch -> mlx -> torch
    original = torch_state_numpy(torch_model(config))
    m_model = load_torch_layout_weights(MLXUNet3D(config), original)
    back = torch_layout_weights(m_model)
    assert set(back) == set(original)
    for k, v in original.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    # mlx -> torch -> mlx
    m_model = mlx_model(config, seed=3)
    t_model = TorchUNet3D(config)
    t_model.load_state_dict({k: torch.from_numpy(v)
                             for k, v in torch_layout_weights(m_model).items()}, strict=True)
    again = load_torch_layout_weights(MLXUNet3D(config), torch_state_numpy(t_model))
    again_params = dict(tree_flatten(again.parameters()))
    for k, v in tree_flatten(m_model.parameters()):
        np.testing.assert_array_equal(np.array(again_params[k]), np.array(v), err_msg=k)


# ---------------------------------------------------------------------------------------------
# gradients


def torch_grads(model: TorchUNet3D, args) -> tuple[float, dict[str, np.ndarray]]:
    model.train().zero_grad(set_to_none=True)
    out = model(*as_torch(*args))
    loss = out.square().mean()
    loss.backward()
    return loss.item(), {n: p.grad.numpy() for n, p in model.named_parameters()}


def mlx_grads(model: MLXUNet3D, args) -> tuple[float, dict[str, np.ndarray]]:
    model.train()

    def loss_fn(*a):
        out = model(*a)
        return mx.mean(out * out)

    loss, grads = nn.value_and_grad(model, loss_fn)(*as_mlx(*args))
    mx.eval(loss, grads)
    grads = {k: np.array(v) for k, v in tree_flatten(grads)}
    return loss.item(), mlx_to_torch_layout(grads)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_gradients_match(name):
    config = CONFIGS[name]
    t_model, m_model = converted_pair(config)
    args = numpy_inputs(config)
    t_loss, t_grads = torch_grads(t_model, args)
    m_loss, m_grads = mlx_grads(m_model, args)
    assert m_loss == pytest.approx(t_loss, rel=1e-5)
    assert set(m_grads) == set(t_grads)
    worst = {}
    for k, g in t_grads.items():
        assert m_grads[k].shape == g.shape, k
        scale = np.linalg.norm(g)
        assert scale > 0, k
        worst[k] = float(np.linalg.norm(m_grads[k] - g) / scale)
    bad = {k: e for k, e in worst.items() if e > GRAD_RTOL}
    assert not bad, bad
