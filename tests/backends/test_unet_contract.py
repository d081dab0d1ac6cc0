"""t2s_torch.unet and t2s_mlx.unet, one suite over both backends: the parameter-key contract
the two share (one hand-written list), strict loading, import hygiene, and the attention and
sinusoid maths against a float64 numpy reference (the behaviour: test_unet.py)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from unet_cases import (  # tests/support/unet_cases.py
    CONFIGS,
    CONTEXT_DIM,
    REPO,
    build,
    conv_shape,
    normal,
    parameter_keys,
    params,
    run,
    set_params,
    tiny,
    unet_module,
)

# ---------------------------------------------------------------------------------------------
# the parameter-key contract (one hand-written list for both backends)


def resnet_keys(prefix: str, factorized: bool = True, skip: bool = False) -> list[str]:
    convs = (["conv1.spatial.weight", "conv1.spatial.bias", "conv1.temporal.weight",
              "conv1.temporal.bias"] if factorized else ["conv1.weight", "conv1.bias"])
    convs2 = [c.replace("conv1", "conv2") for c in convs]
    keys = ["norm1.weight", "norm1.bias", *convs, "time_emb_proj.weight", "time_emb_proj.bias",
            "norm2.weight", "norm2.bias", *convs2]
    if skip:
        keys += ["skip.weight", "skip.bias"]
    return [f"{prefix}.{k}" for k in keys]


def transformer_keys(prefix: str) -> list[str]:
    keys = ["norm.weight", "norm.bias", "proj_in.weight", "proj_in.bias",
            "norm1.weight", "norm1.bias",
            "attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight",
            "attn1.to_out.weight", "attn1.to_out.bias",
            "norm2.weight", "norm2.bias",
            "attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight",
            "attn2.to_out.weight", "attn2.to_out.bias",
            "norm3.weight", "norm3.bias",
            "attn_temp.to_q.weight", "attn_temp.to_k.weight", "attn_temp.to_v.weight",
            "attn_temp.to_out.weight", "attn_temp.to_out.bias",
            "norm4.weight", "norm4.bias",
            "ff.linear_1.weight", "ff.linear_1.bias", "ff.linear_2.weight", "ff.linear_2.bias",
            "proj_out.weight", "proj_out.bias", "text_align"]
    return [f"{prefix}.{k}" for k in keys]


def test_tiny_key_set_is_exactly_the_contract(backend):
    """The tiny preset (widths 16, 32; one resnet per level; attention on level 1), by hand.
    Conv shapes are written in torch layout (O, I, kF, kH, kW); MLX's is (O, kF, kH, kW, I).

    Skips: conv_in (16), down 0 resnet (16), down 0 downsample (16), down 1 resnet (32).
    Up 0 (level 1, width 32) pops 32 then 16: resnets take 32+32 and 32+16 channels.
    Up 1 (level 0, width 16) pops 16 then 16: resnets take 32+16 and 16+16 channels.
    """
    expected = [
        "time_embed.linear_1.weight", "time_embed.linear_1.bias",
        "time_embed.linear_2.weight", "time_embed.linear_2.bias",
        "text_embed.weight", "text_embed.bias",
        "conv_in.weight", "conv_in.bias",
        *resnet_keys("down_blocks.0.resnets.0"),
        "down_blocks.0.downsample.conv.weight", "down_blocks.0.downsample.conv.bias",
        *resnet_keys("down_blocks.1.resnets.0", skip=True),
        *transformer_keys("down_blocks.1.attentions.0"),
        *resnet_keys("mid_block.resnets.0"),
        *transformer_keys("mid_block.attentions.0"),
        *resnet_keys("mid_block.resnets.1"),
        *resnet_keys("up_blocks.0.resnets.0", skip=True),
        *resnet_keys("up_blocks.0.resnets.1", skip=True),
        *transformer_keys("up_blocks.0.attentions.0"),
        *transformer_keys("up_blocks.0.attentions.1"),
        "up_blocks.0.upsample.conv.weight", "up_blocks.0.upsample.conv.bias",
        *resnet_keys("up_blocks.1.resnets.0", skip=True),
        *resnet_keys("up_blocks.1.resnets.1", skip=True),
        "norm_out.weight", "norm_out.bias", "conv_out.weight", "conv_out.bias",
    ]
    assert len(expected) == len(set(expected))
    model = unet_module(backend).UNet3D(tiny())
    keys = parameter_keys(backend, model)
    assert len(keys) == len(set(keys))
    assert set(keys) == set(expected)
    # What a checkpoint holds (torch: the state dict; MLX: the trainable parameters): the
    # parameters, no buffers.
    assert set(backend.state_keys(model)) == set(expected)
    state = params(backend, model)
    shapes = {k: tuple(v.shape) for k, v in state.items()}

    def conv(*shape):
        return conv_shape(backend, shape)

    assert shapes["conv_in.weight"] == conv(16, 3, 1, 3, 3)
    assert shapes["down_blocks.0.resnets.0.conv1.spatial.weight"] == conv(16, 16, 1, 3, 3)
    assert shapes["down_blocks.0.resnets.0.conv1.temporal.weight"] == conv(16, 16, 3, 1, 1)
    assert shapes["down_blocks.0.resnets.0.time_emb_proj.weight"] == (32, 64)
    assert shapes["up_blocks.0.resnets.0.conv1.spatial.weight"] == conv(32, 64, 1, 3, 3)
    assert shapes["up_blocks.0.resnets.1.skip.weight"] == conv(32, 48, 1, 1, 1)
    assert shapes["up_blocks.1.resnets.0.conv1.spatial.weight"] == conv(16, 48, 1, 3, 3)
    assert shapes["up_blocks.1.resnets.1.conv1.spatial.weight"] == conv(16, 32, 1, 3, 3)
    assert shapes["mid_block.attentions.0.attn2.to_k.weight"] == (32, CONTEXT_DIM)
    assert shapes["mid_block.attentions.0.ff.linear_1.weight"] == (128, 32)
    assert shapes["time_embed.linear_1.weight"] == (64, 16)
    assert shapes["text_embed.weight"] == (64, CONTEXT_DIM)
    assert shapes["conv_out.weight"] == conv(3, 16, 1, 3, 3)
    assert model.num_parameters() == sum(int(np.prod(s)) for s in shapes.values())


def test_full_conv_keys_and_named_contract_keys(backend):
    UNet3D = unet_module(backend).UNet3D
    full = set(parameter_keys(backend, UNet3D(tiny(conv_mode="full"))))
    assert set(resnet_keys("down_blocks.0.resnets.0", factorized=False)) <= full
    assert not any(".spatial." in k or ".temporal." in k for k in full)
    three = params(backend, UNet3D(CONFIGS["three_levels"]))
    assert tuple(three["down_blocks.0.resnets.0.conv1.spatial.weight"].shape) == conv_shape(
        backend, (16, 16, 1, 3, 3))
    for key in ["down_blocks.0.resnets.0.conv1.spatial.weight",
                "mid_block.attentions.0.attn_temp.to_q.weight", "time_embed.linear_1.weight",
                "text_embed.weight", "up_blocks.0.upsample.conv.weight",
                "up_blocks.1.upsample.conv.weight", "down_blocks.0.attentions.0.attn2.to_v.weight",
                "up_blocks.2.attentions.1.proj_out.bias", "down_blocks.1.downsample.conv.weight"]:
        assert key in three, key
    # Levels without attention have an empty `attentions` list, which flattens to no keys.
    assert not any(k.startswith("down_blocks.1.attentions") for k in three)
    assert not any(k.startswith(("down_blocks.2.downsample", "up_blocks.2.upsample"))
                   for k in three)
    assert not any(k.endswith((".dropout", ".skip")) for k in three)


@pytest.mark.backends("mlx")
def test_torch_layout_weights_round_trip_and_strict_loading(backend):
    unet = unet_module(backend)
    model = build(backend, tiny())
    tensors = unet.torch_layout_weights(model)
    assert tensors["conv_in.weight"].shape == (16, 3, 1, 3, 3)  # torch (O, I, kF, kH, kW)
    other = unet.UNet3D(tiny())
    unet.load_torch_layout_weights(other, tensors)
    loaded = params(backend, other)
    for k, v in params(backend, model).items():
        np.testing.assert_array_equal(np.array(loaded[k]), np.array(v), err_msg=k)
    with pytest.raises(ValueError, match="missing"):
        unet.load_torch_layout_weights(
            other, {k: v for k, v in tensors.items() if k != "conv_in.bias"})
    with pytest.raises(ValueError, match="unexpected"):
        unet.load_torch_layout_weights(other, {**tensors, "extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="shapes"):
        unet.load_torch_layout_weights(other, {**tensors, "conv_in.bias": np.zeros(5, np.float32)})


@pytest.mark.backends("mlx")
def test_the_mlx_unet_does_not_import_torch(backend):
    code = ("import sys; import t2s_mlx.unet; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ---------------------------------------------------------------------------------------------
# attention and sinusoid maths (one float64 numpy reference for both backends)

def reference_attention(backend, attn, x, context, mask, heads):
    x, context = backend.numpy(x).astype(np.float64), backend.numpy(context).astype(np.float64)
    w = {k: backend.numpy(v).astype(np.float64) for k, v in params(backend, attn).items()}
    q, k, v = x @ w["to_q.weight"].T, context @ w["to_k.weight"].T, context @ w["to_v.weight"].T
    b, n, c = q.shape
    d = c // heads

    def split(t):
        return t.reshape(b, -1, heads, d).transpose(0, 2, 1, 3)

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    if mask is not None:
        scores = np.where(np.array(mask)[:, None, None, :], scores, -np.inf)
    with np.errstate(invalid="ignore"):  # a row with no key is NaN here; compared separately
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out = (scores / scores.sum(axis=-1, keepdims=True)) @ v
    out = out.transpose(0, 2, 1, 3).reshape(b, n, c)
    return out @ w["to_out.weight"].T + w["to_out.bias"]


def test_attention_matches_a_hand_written_softmax(backend):
    Attention = unet_module(backend).Attention
    backend.seed(0)
    heads = 4
    cross = Attention(32, 24, heads)
    self_attn = Attention(32, None, heads)
    set_params(backend, cross, {"to_out.bias": normal((32,), 0)})
    x, context = backend.array(normal((3, 10, 32), 1)), backend.array(normal((3, 7, 24), 2))
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1, 0, 1, 0, 1, 0, 0]], dtype=bool)

    def close(a, b):
        np.testing.assert_allclose(a, b, **backend.close)

    close(run(backend, self_attn, x), reference_attention(backend, self_attn, x, x, None, heads))
    close(run(backend, cross, x, context),
          reference_attention(backend, cross, x, context, None, heads))
    close(run(backend, cross, x, context, backend.array(mask)),
          reference_attention(backend, cross, x, context, mask, heads))
    # A sample with no real token: the attention sum is empty, only to_out's bias remains.
    mask[1] = False
    out = run(backend, cross, x, context, backend.array(mask.astype(np.int32)))
    bias = backend.numpy(params(backend, cross)["to_out.bias"])
    np.testing.assert_array_equal(out[1], np.broadcast_to(bias, (10, 32)))
    close(out[0], reference_attention(backend, cross, x, context, mask, heads)[0])


def test_sinusoid_is_cos_then_sin_with_base_10000(backend):
    positions = [0.0, 1.0, 5.0, 999.0]
    emb = backend.numpy(unet_module(backend).sinusoidal_embedding(
        backend.array(np.array(positions, np.float32)), 7))
    half = 3
    expected = np.zeros((4, 7))
    for r, p in enumerate(positions):
        for i in range(half):
            w = math.exp(-math.log(10000.0) * i / half)
            expected[r, i] = math.cos(p * w)
            expected[r, half + i] = math.sin(p * w)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(emb, expected, **backend.close)
