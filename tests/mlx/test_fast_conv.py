"""`t2s_mlx.kernels.fast_conv`: every conv path equals plain `mx.conv3d` (the old path,
`nn.Conv3d`), forward and gradients, for every kernel the UNet uses and a batch larger than one
(the case MLX's own 3-D -> 2-D decomposition leaves out); the UNet takes no `mx.conv3d` at all;
a checkpoint written by the old path loads and samples the same video. Speed is not tested here
(`benchmarks/conv_mlx.py` measures it). Tiny shapes: MLX runs on the CPU here."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

from mlx.utils import tree_flatten, tree_map  # noqa: E402

from shared.config import SampleConfig, preset  # noqa: E402
from shared.data.video import to_uint8  # noqa: E402
from shared.evaluation.metrics import psnr  # noqa: E402
from t2s_mlx.checkpoint import load_model, save_checkpoint  # noqa: E402
from t2s_mlx.diffusion import TextBatch  # noqa: E402
from t2s_mlx.kernels import fast_conv  # noqa: E402
from t2s_mlx.kernels.fast_conv import FastConv3d  # noqa: E402
from t2s_mlx.sample import generate  # noqa: E402
from t2s_mlx.unet import UNet3D  # noqa: E402

# name: (in, out, kernel, stride, padding, the path fast_conv3d must take)
CONVS = {
    "spatial": (5, 6, (1, 3, 3), 1, (0, 1, 1), "spatial_conv"),
    "downsample": (6, 6, (1, 3, 3), (1, 2, 2), (0, 1, 1), "spatial_conv"),
    "temporal": (6, 6, (3, 1, 1), 1, (1, 0, 0), "temporal_conv"),
    "pointwise": (5, 7, 1, 1, 0, "pointwise_conv"),
    "full": (5, 6, 3, 1, 1, "stacked_taps_conv"),
    "full_no_frame_padding": (5, 6, 3, 1, (0, 1, 1), "stacked_taps_conv"),
    "full_deep_kernel": (4, 6, (5, 3, 3), 1, (2, 1, 1), "stacked_taps_conv"),
    "frame_stride": (4, 6, 3, (2, 1, 1), 1, "conv3d"),
}
PATHS = ("spatial_conv", "temporal_conv", "pointwise_conv", "stacked_taps_conv")
SHAPE = (2, 5, 6, 7, None)  # (B, F, H, W, C): H != W so a swapped axis shows; B > 1


def make_conv(name: str, seed: int = 0) -> FastConv3d:
    in_ch, out_ch, kernel, stride, padding, _ = CONVS[name]
    mx.random.seed(seed)
    conv = FastConv3d(in_ch, out_ch, kernel, stride=stride, padding=padding)
    conv.bias = mx.random.normal(conv.bias.shape)
    return conv


def conv_input(conv: FastConv3d, seed: int = 1) -> mx.array:
    return mx.random.normal((*SHAPE[:4], conv.weight.shape[-1]), key=mx.random.key(seed))


def record_paths(monkeypatch) -> list[str]:
    """Which paths `fast_conv3d` takes from here on (each name once per call)."""
    taken: list[str] = []
    for name in PATHS:
        real = getattr(fast_conv, name)
        monkeypatch.setattr(fast_conv, name,
                            lambda *a, _real=real, _name=name: taken.append(_name) or _real(*a))
    return taken


@pytest.mark.parametrize("name", sorted(CONVS))
def test_each_path_equals_conv3d_forward(name, monkeypatch):
    conv = make_conv(name)
    x = conv_input(conv)
    reference = np.array(conv.reference_call(x))
    taken = record_paths(monkeypatch)
    out = np.array(conv(x))
    assert taken == ([] if CONVS[name][-1] == "conv3d" else [CONVS[name][-1]])
    assert out.shape == reference.shape
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONVS))
def test_each_path_equals_conv3d_gradients(name):
    """d/dx, d/dweight, d/dbias of <conv(x), g> for a random g: the new path trains the same."""
    conv = make_conv(name)
    x = conv_input(conv)
    g = mx.random.normal(conv.reference_call(x).shape, key=mx.random.key(2))

    def grads(call):
        def loss(params, inp):
            conv.update(params)
            return (call(inp) * g).sum()
        return mx.grad(loss, argnums=(0, 1))(conv.trainable_parameters(), x)

    (p_new, x_new), (p_old, x_old) = grads(conv), grads(conv.reference_call)
    np.testing.assert_allclose(np.array(x_new), np.array(x_old), rtol=1e-4, atol=1e-4)
    for key in ("weight", "bias"):
        np.testing.assert_allclose(np.array(p_new[key]), np.array(p_old[key]),
                                   rtol=1e-4, atol=1e-4)


def test_fast_conv_is_an_nn_conv3d_in_keys_shapes_and_initialisation():
    mx.random.seed(3)
    fast = FastConv3d(4, 8, (3, 1, 1), padding=(1, 0, 0))
    mx.random.seed(3)
    plain = nn.Conv3d(4, 8, (3, 1, 1), padding=(1, 0, 0))
    assert isinstance(fast, nn.Conv3d)
    fast_params, plain_params = dict(tree_flatten(fast.parameters())), dict(
        tree_flatten(plain.parameters()))
    assert fast_params.keys() == plain_params.keys() == {"weight", "bias"}
    for key, value in plain_params.items():
        np.testing.assert_array_equal(np.array(fast_params[key]), np.array(value))


# ----------------------------------------------------------------------------- the whole UNet


def tiny_config(conv_mode: str):
    config = preset("tiny")
    model = replace(config.model, conv_mode=conv_mode)
    return replace(config, model=model, data=replace(config.data, num_frames=3, image_size=8))


def randomized_unet(config, seed: int = 0) -> UNet3D:
    """No zero conv_out / conv2 hiding the paths behind them."""
    mx.random.seed(seed)
    model = UNet3D(config.model)
    model.update(tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), model.parameters()))
    model.eval()
    return model


def unet_inputs(config, batch: int = 2):
    d, m = config.data, config.model
    keys = mx.random.split(mx.random.key(7), 3)
    x = mx.random.normal((batch, d.num_frames, d.image_size, d.image_size, m.in_channels),
                         key=keys[0])
    context = mx.random.normal((batch, 4, m.context_dim), key=keys[1])
    pooled = mx.random.normal((batch, m.context_dim), key=keys[2])
    return x, mx.array([10, 500]), context, mx.ones((batch, 4)), pooled


def old_path(monkeypatch) -> None:
    """Every FastConv3d runs as plain `nn.Conv3d` (`mx.conv3d`), the code before this module."""
    monkeypatch.setattr(FastConv3d, "__call__", FastConv3d.reference_call)


@pytest.mark.parametrize("conv_mode", ["factorized", "full"])
def test_unet_output_and_gradients_equal_the_old_path(conv_mode, monkeypatch):
    config = tiny_config(conv_mode)
    model = randomized_unet(config)
    args = unet_inputs(config)

    def loss(params):
        model.update(params)
        return (model(*args) ** 2).mean()

    def run():
        value, grads = mx.value_and_grad(loss)(model.trainable_parameters())
        return np.array(model(*args)), float(value), dict(tree_flatten(grads))

    out_new, loss_new, grads_new = run()
    with monkeypatch.context() as patch:
        old_path(patch)
        out_old, loss_old, grads_old = run()
    np.testing.assert_allclose(out_new, out_old, rtol=1e-4, atol=1e-5)
    assert loss_new == pytest.approx(loss_old, rel=1e-5)
    assert grads_new.keys() == grads_old.keys()
    for key, grad in grads_old.items():
        np.testing.assert_allclose(np.array(grads_new[key]), np.array(grad), rtol=1e-3,
                                   atol=1e-5, err_msg=key)


@pytest.mark.parametrize("conv_mode", ["factorized", "full"])
def test_unet_takes_no_conv3d(conv_mode, monkeypatch):
    """Forward and backward of the whole model run without a single 5-D conv."""
    config = tiny_config(conv_mode)
    model = randomized_unet(config)
    args = unet_inputs(config)

    def refuse(*args, **kwargs):
        raise AssertionError("mx.conv3d called: a conv missed its 2-D path")

    def loss(params):
        model.update(params)
        return model(*args).sum()

    monkeypatch.setattr(mx, "conv3d", refuse)
    value, grads = mx.value_and_grad(loss)(model.trainable_parameters())
    mx.eval(value, grads)


@pytest.mark.parametrize("conv_mode", ["factorized", "full"])
def test_a_checkpoint_saved_on_the_old_path_samples_the_same_video(conv_mode, tmp_path,
                                                                   monkeypatch):
    config = tiny_config(conv_mode)
    d, m = config.data, config.model
    shape = (2, d.num_frames, d.image_size, d.image_size, m.out_channels)
    _, _, context, mask, pooled = unet_inputs(config)
    text = TextBatch(context, mask, pooled)
    sample = SampleConfig(sampler="ddim", steps=4, guidance=1.0, seed=5)

    with monkeypatch.context() as patch:
        old_path(patch)
        trained = randomized_unet(config, seed=4)
        save_checkpoint(tmp_path / "run", 1, config, trained)
        before = generate(trained, config.diffusion, sample, text, None, shape, seed=5)

    _, loaded, _ = load_model(tmp_path / "run")
    after = generate(loaded, config.diffusion, sample, text, None, shape, seed=5)
    assert np.abs(before).max() > 0.05  # a video, not the zero model's
    assert psnr(to_uint8(after), to_uint8(before)) >= 40.0
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-4)
