"""The MLX 3D UNet on its own: shapes, zero start, frame mixing, batch isolation, text
conditioning, gradients, checkpointing, the parameter-key contract shared with torch, and the
attention and sinusoid maths. Tiny shapes throughout: MLX runs on the CPU here."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

from mlx.utils import tree_flatten, tree_map, tree_unflatten  # noqa: E402

from shared.config import ModelConfig, preset  # noqa: E402
from t2s_mlx import unet as unet_module  # noqa: E402
from t2s_mlx.unet import (  # noqa: E402
    Attention,
    FactorizedConv3d,
    UNet3D,
    load_torch_layout_weights,
    parameter_keys,
    sinusoidal_embedding,
    torch_layout_weights,
)

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


def build(config: ModelConfig, seed: int = 0, randomize: bool = True) -> UNet3D:
    """A model in eval mode; `randomize` nudges every parameter so no layer is zero or identity
    (zero-initialised conv_out / conv2 / proj_out would hide every path behind them)."""
    mx.random.seed(seed)
    model = UNet3D(config)
    model.eval()
    if randomize:
        model.update(tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), model.parameters()))
    return model


def inputs(config: ModelConfig, batch: int = 2, seed: int = 1, frames: int = FRAMES,
           size: int = SIZE):
    """x (B, F, H, W, C), t (B,), context (B, L, D), mask (B, L) with 2 padding tokens, pooled."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, frames, size, size, config.in_channels), dtype=np.float32)
    t = rng.integers(0, 1000, batch)
    context = rng.standard_normal((batch, TOKENS, config.context_dim), dtype=np.float32)
    mask = np.ones((batch, TOKENS), dtype=bool)
    mask[:, TOKENS - 2:] = False
    pooled = rng.standard_normal((batch, config.context_dim), dtype=np.float32)
    return tuple(mx.array(a) for a in (x, t, context, mask, pooled))


def run(model: UNet3D, *args) -> np.ndarray:
    out = model(*args)
    mx.eval(out)
    return np.array(out)


def with_row(a: mx.array, row: int, value) -> mx.array:
    a = np.array(a)
    a[row] = value
    return mx.array(a)


# ---------------------------------------------------------------------------------------------
# shapes and the zero start


@pytest.mark.parametrize("name", ["factorized", "full"])
@pytest.mark.parametrize("in_ch, out_ch", [(4, 4), (3, 6)])
def test_output_shape_and_dtype(name, in_ch, out_ch):
    config = replace(CONFIGS[name], in_channels=in_ch, out_channels=out_ch)
    model = build(config)
    x, t, context, mask, pooled = inputs(config)
    out = model(x, t, context, mask, pooled)
    assert out.shape == (2, FRAMES, SIZE, SIZE, out_ch)
    assert out.dtype == mx.float32
    assert np.isfinite(np.array(out)).all()


def test_three_levels_output_shape():
    config = CONFIGS["three_levels"]
    out = run(build(config), *inputs(config, batch=1))
    assert out.shape == (1, FRAMES, SIZE, SIZE, 3) and np.isfinite(out).all()


def test_bfloat16_model_keeps_its_dtype_and_single_frames_work():
    config = tiny()
    model = build(config)
    model.set_dtype(mx.bfloat16)
    x, t, context, mask, pooled = inputs(config, frames=1)
    out = model(x.astype(mx.bfloat16), t, context, mask, pooled)
    assert out.shape == (2, 1, SIZE, SIZE, 3) and out.dtype == mx.bfloat16
    assert np.isfinite(np.array(out.astype(mx.float32))).all()


def test_timesteps_may_be_int_float_or_scalar_and_matter():
    config = tiny()
    model = build(config)
    x, _, context, mask, pooled = inputs(config)
    a = run(model, x, mx.array([7, 7]), context, mask, pooled)
    b = run(model, x, mx.array([7.0, 7.0]), context, mask, pooled)
    c = run(model, x, 7, context, mask, pooled)
    d = run(model, x, np.array([7, 900]), context, mask, pooled)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert np.abs(a[1] - d[1]).max() > 1e-3


@pytest.mark.parametrize("name", ["factorized", "full"])
def test_untrained_model_predicts_exactly_zero(name):
    config = CONFIGS[name]
    model = build(config, randomize=False)
    args = inputs(config)
    assert np.count_nonzero(run(model, *args)) == 0
    model.conv_out.weight = 0.02 * mx.random.normal(model.conv_out.weight.shape)
    assert np.abs(run(model, *args)).max() > 0


def test_fresh_factorized_conv_is_a_per_frame_2d_conv():
    conv = FactorizedConv3d(8, 8)
    x = mx.random.normal((1, 5, 6, 6, 8))
    np.testing.assert_allclose(np.array(conv(x)), np.array(conv.spatial(x)), rtol=0, atol=1e-6)


def test_zero_and_dirac_initialisation():
    model = UNet3D(tiny())
    params = dict(tree_flatten(model.parameters()))
    zero = [k for k, v in params.items() if not np.any(np.array(v))]
    for k in ["conv_out.weight", "down_blocks.0.resnets.0.conv2.spatial.weight",
              "mid_block.attentions.0.proj_out.weight", "mid_block.attentions.0.proj_out.bias"]:
        assert k in zero, k
    assert "down_blocks.0.resnets.0.conv2.temporal.weight" not in zero  # only the spatial half
    w = np.array(params["down_blocks.0.resnets.0.conv1.temporal.weight"])  # (O, 3, 1, 1, I)
    expected = np.zeros_like(w)
    expected[:, 1, 0, 0, :] = np.eye(16)
    np.testing.assert_array_equal(w, expected)


# ---------------------------------------------------------------------------------------------
# mixing across frames, and no mixing across the batch


@pytest.mark.parametrize("name", ["factorized", "full"])
def test_changing_frame_zero_changes_every_other_frame(name):
    config = CONFIGS[name]
    model = build(config)
    x, t, context, mask, pooled = inputs(config)
    changed = np.array(x)
    changed[:, 0] = np.random.default_rng(5).standard_normal(changed[:, 0].shape)
    diff = np.abs(run(model, x, t, context, mask, pooled)
                  - run(model, mx.array(changed), t, context, mask, pooled))
    per_frame = diff.max(axis=(0, 2, 3, 4))
    assert (per_frame[1:] > 1e-3).all(), per_frame


def make_convs_per_frame(model: UNet3D) -> None:
    """Cut every temporal tap of every ResBlock conv, keeping the per-frame (centre) part."""
    updates = []
    for name, p in tree_flatten(model.parameters()):
        if name.endswith(".temporal.weight"):
            updates.append((name, unet_module.dirac_conv_weight(p.shape[0], p.shape[-1],
                                                                (3, 1, 1))))
        elif ".resnets." in name and ".conv" in name and name.endswith("weight") \
                and p.ndim == 5 and p.shape[1:4] == (3, 3, 3):  # a full 3x3x3 kernel
            w = np.array(p)
            w[:, 0] = 0
            w[:, 2] = 0
            updates.append((name, mx.array(w)))
    model.update(tree_unflatten(updates))


def silence_temporal_attention(model: UNet3D) -> None:
    model.update(tree_unflatten([(n, mx.zeros_like(p)) for n, p in tree_flatten(model.parameters())
                                 if ".attn_temp.to_out." in n]))


def silence_text_alignment(model: UNet3D) -> None:
    model.update(tree_unflatten([(n, mx.zeros_like(p)) for n, p in tree_flatten(model.parameters())
                                 if n.endswith(".text_align")]))


def frame_swap_gap(model: UNet3D, config: ModelConfig) -> float:
    """max |model(swap(x)) - swap(model(x))| for swapping frames 1 and 2 (see the torch test:
    without temporal layers the UNet is exactly equivariant to reordering frames)."""
    x, t, context, mask, pooled = inputs(config, size=8)
    order = mx.array([0, 2, 1, 3])
    out = run(model, x, t, context, mask, pooled)
    out_swapped = run(model, x[:, order], t, context, mask, pooled)
    return float(np.abs(out_swapped - out[:, np.array(order)]).max())


@pytest.mark.parametrize("name", ["factorized", "full"])
def test_which_layers_mix_frames(name, monkeypatch):
    config = CONFIGS[name]
    neither = build(config)
    make_convs_per_frame(neither)
    silence_temporal_attention(neither)
    silence_text_alignment(neither)
    assert frame_swap_gap(neither, config) < 1e-5

    attention_only = build(config)
    make_convs_per_frame(attention_only)
    silence_text_alignment(attention_only)
    assert frame_swap_gap(attention_only, config) > 1e-3

    convs_only = build(config)
    silence_temporal_attention(convs_only)
    silence_text_alignment(convs_only)
    assert frame_swap_gap(convs_only, config) > 1e-3

    alignment_only = build(config)  # the text alignment tells each frame which words to read
    make_convs_per_frame(alignment_only)
    silence_temporal_attention(alignment_only)
    assert frame_swap_gap(alignment_only, config) > 1e-3

    # Temporal attention tells frames apart only through the frame-position signal.
    monkeypatch.setattr(unet_module, "sinusoidal_embedding",
                        lambda positions, dim: mx.zeros((positions.shape[0], dim)))
    assert frame_swap_gap(attention_only, config) < 1e-5


def test_text_alignment_at_zero_weight_is_the_model_without_it():
    """The torch test's twin: per-frame cross-attention is the old one, and a zero alignment
    weight removes the bias."""
    config = tiny()
    aligned = build(config)
    plain = UNet3D(tiny(text_alignment=False))
    plain.eval()
    weights = [(k, v) for k, v in tree_flatten(aligned.parameters())
               if not k.endswith(".text_align")]
    plain.load_weights(weights, strict=True)
    args = inputs(config)
    assert np.abs(run(aligned, *args) - run(plain, *args)).max() > 1e-3
    silence_text_alignment(aligned)
    np.testing.assert_allclose(run(aligned, *args), run(plain, *args), atol=1e-6, rtol=0)


def test_token_positions_match_the_torch_formula():
    mask = mx.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    pos = np.array(unet_module.token_positions(mask))
    np.testing.assert_allclose(pos[0, :4], [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(pos[1, :3], [0.0, 0.5, 1.0])
    assert pos[2, 0] == 0.0 and 0.0 <= pos[2, 1] <= 1.0


def test_no_leakage_across_the_batch():
    config = tiny()
    model = build(config)
    x, t, context, mask, pooled = inputs(config)
    rng = np.random.default_rng(9)
    x2 = with_row(x, 1, rng.standard_normal(x.shape[1:]))
    t2 = with_row(t, 1, 999 - int(t[1].item()))
    context2 = with_row(context, 1, rng.standard_normal(context.shape[1:]))
    pooled2 = with_row(pooled, 1, rng.standard_normal(pooled.shape[1:]))
    mask2 = with_row(mask, 1, False)
    a = run(model, x, t, context, mask, pooled)
    b = run(model, x2, t2, context2, mask2, pooled2)
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-6)
    assert np.abs(a[1] - b[1]).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# text conditioning


def test_text_context_and_pooled_embedding_change_the_output():
    config = tiny()
    model = build(config)
    x, t, context, mask, pooled = inputs(config)
    base = run(model, x, t, context, mask, pooled)
    other_context = run(model, x, t, mx.random.normal(context.shape), mask, pooled)
    other_pooled = run(model, x, t, context, mask, mx.random.normal(pooled.shape))
    no_pooled = run(model, x, t, context, mask, None)
    for other in (other_context, other_pooled, no_pooled):
        assert np.abs(base - other).max(axis=(1, 2, 3, 4)).min() > 1e-3


def test_padding_tokens_do_not_influence_the_output():
    config = tiny()
    model = build(config)
    x, t, context, mask, pooled = inputs(config)
    changed = np.array(context)
    pad = ~np.array(mask)
    changed[pad] = 100 * np.random.default_rng(2).standard_normal(changed[pad].shape)
    a = run(model, x, t, context, mask, pooled)
    b = run(model, x, t, mx.array(changed), mask, pooled)
    c = run(model, x, t, mx.array(changed), mask.astype(mx.int32), pooled)  # int mask: the same
    d = run(model, x, t, mx.array(changed), np.array(mask), pooled)  # a numpy mask is accepted
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a, d, rtol=0, atol=1e-6)


def test_an_all_zero_mask_is_finite_and_ignores_every_token():
    config = tiny()
    model = build(config)
    x, t, context, _, pooled = inputs(config)
    empty = mx.zeros((2, TOKENS), dtype=mx.int32)
    a = run(model, x, t, context, empty, pooled)
    b = run(model, x, t, mx.random.normal(context.shape), empty, pooled)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# gradients and checkpointing


def loss_and_grads(model: UNet3D, args) -> tuple[mx.array, dict[str, mx.array]]:
    def loss_fn(*a):
        out = model(*a)
        return mx.mean(out * out), out

    (_, out), grads = nn.value_and_grad(model, loss_fn)(*args)
    mx.eval(out, grads)
    return out, dict(tree_flatten(grads))


@pytest.mark.parametrize("name", ["factorized", "full"])
def test_gradients_reach_every_parameter(name):
    config = CONFIGS[name]
    model = build(config)
    model.train()
    _, grads = loss_and_grads(model, inputs(config))
    assert set(grads) == set(parameter_keys(model))
    missing = [n for n, g in grads.items() if not np.any(np.array(g) != 0)]
    assert not missing, missing
    assert all(np.isfinite(np.array(g)).all() for g in grads.values())


def test_gradient_checkpointing_matches_and_is_used(monkeypatch):
    config = tiny(dropout=0.1)
    plain = build(config)
    plain.train()
    ckpt = UNet3D(replace(config, gradient_checkpointing=True))
    ckpt.update(plain.parameters())
    ckpt.train()
    calls = []
    original = unet_module.checkpoint

    def counting(fn):
        calls.append(fn)
        return original(fn)

    monkeypatch.setattr(unet_module, "checkpoint", counting)
    args = inputs(config)
    mx.random.seed(3)
    out_plain, grads_plain = loss_and_grads(plain, args)
    assert not calls
    mx.random.seed(3)
    out_ckpt, grads_ckpt = loss_and_grads(ckpt, args)
    # 2 down resnets, 1 down transformer, mid 3, 4 up resnets (each joining its skip inside),
    # 2 up transformers, 1 upsample
    assert len(calls) == 13
    np.testing.assert_allclose(np.array(out_ckpt), np.array(out_plain), rtol=0, atol=1e-6)
    for name, g in grads_plain.items():
        np.testing.assert_allclose(np.array(grads_ckpt[name]), np.array(g), rtol=1e-5,
                                   atol=1e-7, err_msg=name)
    # Dropout is live: a different seed gives a different output.
    mx.random.seed(4)
    out_other, _ = loss_and_grads(ckpt, args)
    assert np.abs(np.array(out_other) - np.array(out_plain)).max() > 1e-4
    calls.clear()
    ckpt.eval()
    run(ckpt, *args)
    assert not calls  # never while sampling


# ---------------------------------------------------------------------------------------------
# the parameter-key contract (the same hand-written list as tests/torch/test_unet.py)


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


def test_tiny_key_set_is_exactly_the_contract():
    """The tiny preset (widths 16, 32; one resnet per level; attention on level 1), by hand.
    Conv shapes are in MLX layout (O, kF, kH, kW, I)."""
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
    model = UNet3D(tiny())
    keys = parameter_keys(model)
    assert len(keys) == len(set(keys))
    assert set(keys) == set(expected)
    assert set(dict(tree_flatten(model.trainable_parameters()))) == set(expected)
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    assert shapes["conv_in.weight"] == (16, 1, 3, 3, 3)
    assert shapes["down_blocks.0.resnets.0.conv1.spatial.weight"] == (16, 1, 3, 3, 16)
    assert shapes["down_blocks.0.resnets.0.conv1.temporal.weight"] == (16, 3, 1, 1, 16)
    assert shapes["down_blocks.0.resnets.0.time_emb_proj.weight"] == (32, 64)
    assert shapes["up_blocks.0.resnets.0.conv1.spatial.weight"] == (32, 1, 3, 3, 64)
    assert shapes["up_blocks.0.resnets.1.skip.weight"] == (32, 1, 1, 1, 48)
    assert shapes["up_blocks.1.resnets.0.conv1.spatial.weight"] == (16, 1, 3, 3, 48)
    assert shapes["up_blocks.1.resnets.1.conv1.spatial.weight"] == (16, 1, 3, 3, 32)
    assert shapes["mid_block.attentions.0.attn2.to_k.weight"] == (32, CONTEXT_DIM)
    assert shapes["mid_block.attentions.0.ff.linear_1.weight"] == (128, 32)
    assert shapes["time_embed.linear_1.weight"] == (64, 16)
    assert shapes["text_embed.weight"] == (64, CONTEXT_DIM)
    assert shapes["conv_out.weight"] == (3, 1, 3, 3, 16)
    assert model.num_parameters() == sum(int(np.prod(s)) for s in shapes.values())


def test_full_conv_keys_and_named_contract_keys():
    full = set(parameter_keys(UNet3D(tiny(conv_mode="full"))))
    assert set(resnet_keys("down_blocks.0.resnets.0", factorized=False)) <= full
    assert not any(".spatial." in k or ".temporal." in k for k in full)
    three = dict(tree_flatten(UNet3D(CONFIGS["three_levels"]).parameters()))
    assert three["down_blocks.0.resnets.0.conv1.spatial.weight"].shape == (16, 1, 3, 3, 16)
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


def test_torch_layout_weights_round_trip_and_strict_loading():
    model = build(tiny())
    tensors = torch_layout_weights(model)
    assert tensors["conv_in.weight"].shape == (16, 3, 1, 3, 3)  # torch (O, I, kF, kH, kW)
    other = UNet3D(tiny())
    load_torch_layout_weights(other, tensors)
    for k, v in tree_flatten(model.parameters()):
        np.testing.assert_array_equal(np.array(dict(tree_flatten(other.parameters()))[k]),
                                      np.array(v), err_msg=k)
    with pytest.raises(ValueError, match="missing"):
        load_torch_layout_weights(other, {k: v for k, v in tensors.items() if k != "conv_in.bias"})
    with pytest.raises(ValueError, match="unexpected"):
        load_torch_layout_weights(other, {**tensors, "extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="shapes"):
        load_torch_layout_weights(other, {**tensors, "conv_in.bias": np.zeros(5, np.float32)})


def test_the_mlx_unet_does_not_import_torch():
    code = ("import sys; import t2s_mlx.unet; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ---------------------------------------------------------------------------------------------
# attention and sinusoid maths (the same reference as the torch test)


def reference_attention(attn: Attention, x, context, mask, heads):
    x, context = np.array(x, np.float64), np.array(context, np.float64)
    w = {k: np.array(v, np.float64) for k, v in tree_flatten(attn.parameters())}
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


def test_attention_matches_a_hand_written_softmax():
    mx.random.seed(0)
    heads = 4
    cross = Attention(32, 24, heads)
    self_attn = Attention(32, None, heads)
    cross.to_out.bias = mx.random.normal((32,))
    x, context = mx.random.normal((3, 10, 32)), mx.random.normal((3, 7, 24))
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1, 0, 1, 0, 1, 0, 0]], dtype=bool)

    def close(a, b):
        np.testing.assert_allclose(np.array(a), b, rtol=1e-5, atol=1e-5)

    close(self_attn(x), reference_attention(self_attn, x, x, None, heads))
    close(cross(x, context), reference_attention(cross, x, context, None, heads))
    close(cross(x, context, mx.array(mask)), reference_attention(cross, x, context, mask, heads))
    # A sample with no real token: the attention sum is empty, only to_out's bias remains.
    mask[1] = False
    out = np.array(cross(x, context, mx.array(mask.astype(np.int32))))
    np.testing.assert_array_equal(out[1], np.broadcast_to(np.array(cross.to_out.bias), (10, 32)))
    close(out[0], reference_attention(cross, x, context, mask, heads)[0])


def test_sinusoid_is_cos_then_sin_with_base_10000():
    positions = mx.array([0.0, 1.0, 5.0, 999.0])
    emb = np.array(sinusoidal_embedding(positions, 7))
    half = 3
    expected = np.zeros((4, 7))
    for r, p in enumerate([0.0, 1.0, 5.0, 999.0]):
        for i in range(half):
            w = math.exp(-math.log(10000.0) * i / half)
            expected[r, i] = math.cos(p * w)
            expected[r, half + i] = math.sin(p * w)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)
