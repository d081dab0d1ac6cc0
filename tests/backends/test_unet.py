"""t2s_torch.unet and t2s_mlx.unet, one suite over both backends: shapes, zero start, frame
mixing, batch isolation, text conditioning, gradients and checkpointing (the key contract and
the attention maths: test_unet_contract.py; the cases and helpers: tests/support/unet_cases.py).
Videos are (B, C, F, H, W) on torch and channels-last (B, F, H, W, C) on MLX; conv weights
(O, I, kF, kH, kW) on torch and (O, kF, kH, kW, I) on MLX. Inputs are drawn in numpy and handed
to each backend. Tiny shapes throughout: MLX runs on the CPU here."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from unet_cases import (  # tests/support/unet_cases.py
    CONFIGS,
    FRAMES,
    SIZE,
    TOKENS,
    build,
    dirac,
    inputs,
    load_weights_strict,
    loss_and_grads,
    normal,
    parameter_keys,
    params,
    run,
    set_params,
    tiny,
    to_bfloat16,
    torch_conv_shape,
    train,
    unet_module,
)

from shared.config import ModelConfig

# ---------------------------------------------------------------------------------------------
# shapes and the zero start


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("in_ch, out_ch", [(4, 4), (3, 6)])
def test_output_shape_and_dtype(backend, name, in_ch, out_ch):
    config = replace(CONFIGS[name], in_channels=in_ch, out_channels=out_ch)
    model = build(backend, config)
    x, t, context, mask, pooled = inputs(backend, config)
    with backend.no_grad():
        out = model(x, t, context, mask, pooled)
    assert out.shape == backend.video_shape(2, out_ch, FRAMES, SIZE, SIZE)
    assert out.dtype == backend.float32
    assert np.isfinite(backend.numpy(out)).all()


def test_three_levels_output_shape(backend):
    config = CONFIGS["three_levels"]
    out = run(backend, build(backend, config), *inputs(backend, config, batch=1))
    assert out.shape == backend.video_shape(1, 3, FRAMES, SIZE, SIZE) and np.isfinite(out).all()


def test_bfloat16_model_keeps_its_dtype_and_single_frames_work(backend):
    config = tiny()
    model = to_bfloat16(backend, build(backend, config))
    x, t, context, mask, pooled = inputs(backend, config, frames=1)
    with backend.no_grad():
        out = model(backend.astype(x, backend.bfloat16), t, context, mask, pooled)
    assert out.shape == backend.video_shape(2, 3, 1, SIZE, SIZE) and out.dtype == backend.bfloat16
    assert np.isfinite(backend.numpy(out)).all()


def test_timesteps_may_be_int_float_or_scalar_and_matter(backend):
    config = tiny()
    model = build(backend, config)
    x, _, context, mask, pooled = inputs(backend, config)
    a = run(backend, model, x, backend.array(np.array([7, 7])), context, mask, pooled)
    b = run(backend, model, x, backend.array(np.array([7.0, 7.0], np.float32)), context, mask,
            pooled)
    c = run(backend, model, x, 7, context, mask, pooled)
    # MLX also takes numpy timesteps.
    t_d = backend.as_input(np.array([7, 900]))
    d = run(backend, model, x, t_d, context, mask, pooled)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert np.abs(a[1] - d[1]).max() > 1e-3


@pytest.mark.parametrize("name", ["factorized", "full"])
def test_untrained_model_predicts_exactly_zero(backend, name):
    config = CONFIGS[name]
    model = build(backend, config, randomize=False)
    args = inputs(backend, config)
    assert np.count_nonzero(run(backend, model, *args)) == 0
    weight = params(backend, model)["conv_out.weight"]
    set_params(backend, model, {"conv_out.weight": 0.02 * normal(tuple(weight.shape), 0)})
    assert np.abs(run(backend, model, *args)).max() > 0


def test_fresh_factorized_conv_is_a_per_frame_2d_conv(backend):
    conv = unet_module(backend).FactorizedConv3d(8, 8)
    x = backend.array(normal(backend.video_shape(1, 8, 5, 6, 6), 0))
    np.testing.assert_allclose(run(backend, conv, x), run(backend, conv.spatial, x), rtol=0,
                               atol=1e-6)


@pytest.mark.backends("mlx")
def test_zero_and_dirac_initialisation(backend):
    model = unet_module(backend).UNet3D(tiny())
    named = params(backend, model)
    zero = [k for k, v in named.items() if not np.any(np.array(v))]
    for k in ["conv_out.weight", "down_blocks.0.resnets.0.conv2.spatial.weight",
              "mid_block.attentions.0.proj_out.weight", "mid_block.attentions.0.proj_out.bias"]:
        assert k in zero, k
    assert "down_blocks.0.resnets.0.conv2.temporal.weight" not in zero  # only the spatial half
    w = np.array(named["down_blocks.0.resnets.0.conv1.temporal.weight"])  # (O, 3, 1, 1, I)
    expected = np.zeros_like(w)
    expected[:, 1, 0, 0, :] = np.eye(16)
    np.testing.assert_array_equal(w, expected)


# ---------------------------------------------------------------------------------------------
# mixing across frames, and no mixing across the batch


@pytest.mark.parametrize("name", ["factorized", "full"])
def test_changing_frame_zero_changes_every_other_frame(backend, name):
    config = CONFIGS[name]
    model = build(backend, config)
    x, t, context, mask, pooled = inputs(backend, config)
    changed = backend.numpy(x).copy()
    frame0 = [slice(None)] * changed.ndim
    frame0[backend.frame_axis] = 0
    changed[tuple(frame0)] = normal(changed[tuple(frame0)].shape, 5)
    diff = np.abs(run(backend, model, x, t, context, mask, pooled)
                  - run(backend, model, backend.array(changed), t, context, mask, pooled))
    per_frame = diff.max(axis=tuple(a for a in range(5) if a != backend.frame_axis))
    assert (per_frame[1:] > 1e-3).all(), per_frame


def make_convs_per_frame(backend, model) -> None:
    """Cut every temporal tap of every ResBlock conv, keeping the per-frame (centre) part."""
    updates = {}
    for name, p in params(backend, model).items():
        shape = torch_conv_shape(backend, tuple(p.shape))  # (O, I, kF, kH, kW)
        if name.endswith(".temporal.weight"):  # each FactorizedConv3d's
            updates[name] = dirac(backend, shape[0], shape[1], (3, 1, 1))
        elif ".resnets." in name and ".conv" in name and name.endswith("weight") \
                and len(shape) == 5 and shape[2:] == (3, 3, 3):  # a full 3x3x3 kernel
            w = np.array(backend.numpy(p))
            taps = np.moveaxis(w, backend.frame_axis, 0)  # a view, kF first (as in a video)
            taps[0] = 0
            taps[2] = 0
            updates[name] = w
    set_params(backend, model, updates)


def _silence(backend, model, keep) -> None:
    set_params(backend, model, {n: np.zeros(tuple(p.shape), np.float32)
                                for n, p in params(backend, model).items() if keep(n)})


def silence_temporal_attention(backend, model) -> None:
    _silence(backend, model, lambda n: ".attn_temp.to_out." in n)


def silence_text_alignment(backend, model) -> None:
    _silence(backend, model, lambda n: n.endswith(".text_align"))


def frame_swap_gap(backend, model, config: ModelConfig) -> float:
    """max |model(swap(x)) - swap(model(x))| for swapping frames 1 and 2.

    Without temporal layers the UNet is a per-frame 2D network whose only link between frames
    is GroupNorm statistics, which are sums over all frames; it is then exactly equivariant to
    reordering frames. A temporal conv breaks that, and so does temporal attention, but only
    because of its frame-position signal: attention over a set of frames alone is equivariant.
    The text alignment breaks it too: it tells each frame which words to read.
    """
    x, t, context, mask, pooled = inputs(backend, config, size=8)
    order = [0, 2, 1, 3]
    out = run(backend, model, x, t, context, mask, pooled)
    swapped = backend.array(np.take(backend.numpy(x), order, axis=backend.frame_axis))
    out_swapped = run(backend, model, swapped, t, context, mask, pooled)
    return float(np.abs(out_swapped - np.take(out, order, axis=backend.frame_axis)).max())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["factorized", "full", "three_levels"])
def test_which_layers_mix_frames(backend, name, monkeypatch):
    config = CONFIGS[name]
    base = build(backend, config)

    neither = build(backend, config)
    make_convs_per_frame(backend, neither)
    silence_temporal_attention(backend, neither)
    silence_text_alignment(backend, neither)
    assert frame_swap_gap(backend, neither, config) < 1e-5

    attention_only = build(backend, config)
    make_convs_per_frame(backend, attention_only)
    silence_text_alignment(backend, attention_only)
    assert frame_swap_gap(backend, attention_only, config) > 1e-3

    convs_only = build(backend, config)
    silence_temporal_attention(backend, convs_only)
    silence_text_alignment(backend, convs_only)
    assert frame_swap_gap(backend, convs_only, config) > 1e-3

    alignment_only = build(backend, config)  # the text alignment tells each frame which words
    make_convs_per_frame(backend, alignment_only)
    silence_temporal_attention(backend, alignment_only)
    assert frame_swap_gap(backend, alignment_only, config) > 1e-3

    assert frame_swap_gap(backend, base, config) > 1e-3

    # Temporal attention tells frames apart only through the frame-position signal.
    monkeypatch.setattr(unet_module(backend), "sinusoidal_embedding",
                        lambda positions, dim: backend.xp.zeros((positions.shape[0], dim)))
    assert frame_swap_gap(backend, attention_only, config) < 1e-5


def test_text_alignment_at_zero_weight_is_the_model_without_it(backend):
    """Per-frame cross-attention computes exactly what the (B, F*H*W) one did; the bias is the
    only difference, and a zero weight removes it."""
    config = tiny()
    aligned = build(backend, config)
    plain = unet_module(backend).UNet3D(tiny(text_alignment=False))
    plain.eval()
    load_weights_strict(backend, plain, {k: v for k, v in params(backend, aligned).items()
                                         if not k.endswith(".text_align")})
    args = inputs(backend, config)
    assert np.abs(run(backend, aligned, *args) - run(backend, plain, *args)).max() > 1e-3
    silence_text_alignment(backend, aligned)
    np.testing.assert_allclose(run(backend, aligned, *args), run(backend, plain, *args),
                               atol=1e-6, rtol=0)


def test_token_positions_put_markers_at_the_ends_and_words_in_their_slots(backend):
    unet = unet_module(backend)
    mask = backend.array(np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1],
                                   [1, 1, 0, 0, 0, 0]]))
    pos = backend.numpy(unet.token_positions(mask))
    assert pos.dtype == np.float32
    # [CLS] w1 w2 [SEP]: words at the middles of the halves of the clip.
    np.testing.assert_allclose(pos[0, :4], [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(pos[1, :3], [0.0, 0.5, 1.0])  # one word: middle
    np.testing.assert_allclose(pos[2], [0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
    assert pos[3, 0] == 0.0 and 0.0 <= pos[3, 1] <= 1.0  # the empty caption: two markers
    bias = backend.numpy(unet.text_alignment_bias(backend.array(np.ones(2, np.float32)), 8,
                                                  mask[:1]))  # (8, 2, 1, L)
    # Each frame leans most towards the token whose position is nearest its time.
    nearest = bias[:, 0, 0, :4].argmax(axis=-1)
    assert nearest.tolist() == [0, 1, 1, 1, 2, 2, 2, 3]


def test_no_leakage_across_the_batch(backend):
    config = tiny()
    model = build(backend, config)
    x, t, context, mask, pooled = inputs(backend, config)
    x2, t2, context2, mask2, pooled2 = (backend.numpy(a).copy()
                                        for a in (x, t, context, mask, pooled))
    x2[1], t2[1] = normal(x2.shape[1:], 9), 999 - t2[1]
    context2[1], pooled2[1] = normal(context2.shape[1:], 10), normal(pooled2.shape[1:], 11)
    mask2[1] = False
    a = run(backend, model, x, t, context, mask, pooled)
    b = run(backend, model, *(backend.array(v) for v in (x2, t2, context2, mask2, pooled2)))
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-6)
    assert np.abs(a[1] - b[1]).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# text conditioning


def test_text_context_and_pooled_embedding_change_the_output(backend):
    config = tiny()
    model = build(backend, config)
    x, t, context, mask, pooled = inputs(backend, config)
    base = run(backend, model, x, t, context, mask, pooled)
    other_context = run(backend, model, x, t, backend.array(normal(tuple(context.shape), 3)),
                        mask, pooled)
    other_pooled = run(backend, model, x, t, context, mask,
                       backend.array(normal(tuple(pooled.shape), 4)))
    no_pooled = run(backend, model, x, t, context, mask, None)
    for other in (other_context, other_pooled, no_pooled):
        assert np.abs(base - other).max(axis=(1, 2, 3, 4)).min() > 1e-3


def test_padding_tokens_do_not_influence_the_output(backend):
    config = tiny()
    model = build(backend, config)
    x, t, context, mask, pooled = inputs(backend, config)
    changed = backend.numpy(context).copy()
    pad = ~backend.numpy(mask)
    changed[pad] = 100 * normal(changed[pad].shape, 2)
    changed = backend.array(changed)
    a = run(backend, model, x, t, context, mask, pooled)
    b = run(backend, model, x, t, changed, mask, pooled)
    int_mask = backend.array(backend.numpy(mask).astype(backend.np_index_dtype))
    c = run(backend, model, x, t, changed, int_mask, pooled)  # an integer mask means the same
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-6)
    # MLX accepts a numpy mask.
    d = run(backend, model, x, t, changed, backend.as_input(backend.numpy(mask)), pooled)
    np.testing.assert_allclose(a, d, rtol=0, atol=1e-6)


def test_text_fit_to_the_longest_caption_changes_no_output(backend):
    # Training and sampling cut the text to its longest real caption (`TextBatch.fit`, called
    # through `fit_text`); padding it back out must not matter either.
    from shared.app.sampling_driver import fit_text

    TextBatch = backend.module("diffusion").TextBatch
    config = tiny()
    model = build(backend, config)
    x, t, context, mask, pooled = inputs(backend, config)
    text = TextBatch(context, mask, pooled)
    (short,) = fit_text(text)
    longer = text.fit(TOKENS + 3)
    assert (text.real_length, short.states.shape[1], longer.mask.shape[1]) == \
        (TOKENS - 2, TOKENS - 2, TOKENS + 3)
    full = run(backend, model, x, t, context, mask, pooled)
    for fitted in (short, longer):
        out = run(backend, model, x, t, fitted.states, fitted.mask, fitted.pooled)
        np.testing.assert_allclose(out, full, rtol=0, atol=1e-5)
    cut = text.fit(TOKENS - 3)  # one real token too few: the output must change
    out = run(backend, model, x, t, cut.states, cut.mask, cut.pooled)
    assert np.abs(out - full).max() > 1e-4


def test_an_all_zero_mask_is_finite_and_ignores_every_token(backend):
    config = tiny()
    model = build(backend, config)
    x, t, context, _, pooled = inputs(backend, config)
    empty = backend.array(np.zeros((2, TOKENS), dtype=backend.np_index_dtype))
    a = run(backend, model, x, t, context, empty, pooled)
    b = run(backend, model, x, t, backend.array(normal(tuple(context.shape), 6)), empty, pooled)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# gradients and checkpointing



@pytest.mark.parametrize("name", ["factorized", "full"])
def test_gradients_reach_every_parameter(backend, name):
    config = CONFIGS[name]
    model = train(backend, build(backend, config))
    _, grads = loss_and_grads(backend, model, inputs(backend, config))
    assert set(grads) == set(parameter_keys(backend, model))
    missing = [n for n, g in grads.items() if g is None or not np.any(g != 0)]
    assert not missing, missing
    assert all(np.isfinite(g).all() for g in grads.values())


@pytest.mark.backends("torch")
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", ["factorized", "full", "three_levels"])
def test_channels_last_computes_the_same_model(backend, name, batch):
    """The CPU default layout: same outputs and gradients as channels-first, the same weights
    (keys and values), and activations really laid out channels-last (batch 1 included, where
    oneDNN picks channels-first for conv_in's 3-channel input)."""
    torch = backend.xp
    config = CONFIGS[name]
    first = build(backend, config).train()
    last = build(backend, config).train().use_channels_last()
    for key, value in first.state_dict().items():
        torch.testing.assert_close(last.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert last.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
    layouts = []
    last.down_blocks[0].resnets[0].register_forward_hook(
        lambda _m, _args, out: layouts.append(
            out.is_contiguous(memory_format=torch.channels_last_3d) and not out.is_contiguous()))
    args = inputs(backend, config, batch=batch)
    out_first, grads_first = loss_and_grads(backend, first, args)
    out_last, grads_last = loss_and_grads(backend, last, args)
    assert layouts == [True]
    np.testing.assert_allclose(out_last, out_first, rtol=0, atol=2e-5)
    for key, g in grads_first.items():
        np.testing.assert_allclose(grads_last[key], g, rtol=1e-4, atol=1e-5, err_msg=key)
    last.use_channels_last(False)
    assert last.conv_in.weight.is_contiguous()


@pytest.mark.backends("torch")
def test_gradient_checkpointing_matches_and_is_used_torch(backend, monkeypatch):
    torch = backend.xp
    unet = unet_module(backend)
    config = tiny(dropout=0.1)
    plain = build(backend, config).train()
    ckpt = unet.UNet3D(replace(config, gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    original = unet.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    monkeypatch.setattr(unet, "checkpoint", counting)
    args = inputs(backend, config)
    torch.manual_seed(3)
    out_plain, grads_plain = loss_and_grads(backend, plain, args)
    assert not calls
    torch.manual_seed(3)
    out_ckpt, grads_ckpt = loss_and_grads(backend, ckpt, args)
    # 2 down resnets, 1 down transformer, mid 3, 4 up resnets (each joining its skip inside),
    # 2 up transformers, 1 upsample
    assert calls == [False] * 13
    np.testing.assert_allclose(out_ckpt, out_plain, rtol=0, atol=1e-6)
    for name, g in grads_plain.items():
        np.testing.assert_allclose(grads_ckpt[name], g, rtol=1e-5, atol=1e-7, err_msg=name)
    calls.clear()
    with torch.no_grad():
        ckpt.eval()(*args)
    assert not calls  # never while sampling


@pytest.mark.backends("mlx")
def test_gradient_checkpointing_matches_and_is_used_mlx(backend, monkeypatch):
    mx = backend.xp
    unet = unet_module(backend)
    config = tiny(dropout=0.1)
    plain = train(backend, build(backend, config))
    ckpt = unet.UNet3D(replace(config, gradient_checkpointing=True))
    ckpt.update(plain.parameters())
    ckpt.train()
    calls = []
    original = unet.checkpoint

    def counting(fn):
        calls.append(fn)
        return original(fn)

    monkeypatch.setattr(unet, "checkpoint", counting)
    args = inputs(backend, config)
    mx.random.seed(3)
    out_plain, grads_plain = loss_and_grads(backend, plain, args)
    assert not calls
    mx.random.seed(3)
    out_ckpt, grads_ckpt = loss_and_grads(backend, ckpt, args)
    # 2 down resnets, 1 down transformer, mid 3, 4 up resnets (each joining its skip inside),
    # 2 up transformers, 1 upsample
    assert len(calls) == 13
    np.testing.assert_allclose(out_ckpt, out_plain, rtol=0, atol=1e-6)
    for name, g in grads_plain.items():
        np.testing.assert_allclose(grads_ckpt[name], g, rtol=1e-5, atol=1e-7, err_msg=name)
    # Dropout is live: a different seed gives a different output.
    mx.random.seed(4)
    out_other, _ = loss_and_grads(backend, ckpt, args)
    assert np.abs(out_other - out_plain).max() > 1e-4
    calls.clear()
    ckpt.eval()
    run(backend, ckpt, *args)
    assert not calls  # never while sampling


@pytest.mark.slow
@pytest.mark.backends("torch")
def test_checkpointed_backward_releases_free_memory_once_per_segment(backend, monkeypatch):
    unet = unet_module(backend)
    config = replace(tiny(), gradient_checkpointing=True)
    model = unet.UNet3D(config).train()
    released = []
    monkeypatch.setattr(unet, "release_free_memory", lambda keep: released.append(keep))
    out = model(*inputs(backend, config))
    assert not released  # the forward pass leaves the heap alone
    out.square().mean().backward()
    # as each checkpointed segment's backward begins, with the slack it tolerates
    assert released == [unet.CHECKPOINT_HEAP_SLACK] * 13
    released.clear()
    loss_and_grads(backend, unet.UNet3D(replace(config, gradient_checkpointing=False)).train(),
                   inputs(backend, config))
    assert not released
