"""The PyTorch 3D UNet: shapes, zero start, frame mixing, batch isolation, text conditioning,
gradients, checkpointing, the parameter-key contract shared with MLX, and attention maths."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from shared.config import ModelConfig, preset
from t2s_torch import unet as unet_module
from t2s_torch.unet import Attention, FactorizedConv3d, UNet3D, sinusoidal_embedding

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
    """A model in eval mode; `randomize` nudges every parameter so no layer is zero or identity.

    Zero-initialised layers (conv_out, conv2, proj_out) would hide every path behind them, and
    dirac temporal convs would not mix frames, so the behavioural tests perturb all weights.
    """
    torch.manual_seed(seed)
    model = UNet3D(config).eval()
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


def inputs(config: ModelConfig, batch: int = 2, seed: int = 1, frames: int = FRAMES,
           size: int = SIZE):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, frames, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    context = torch.randn(batch, TOKENS, config.context_dim, generator=g)
    mask = torch.ones(batch, TOKENS, dtype=torch.bool)
    mask[:, TOKENS - 2:] = False  # the last two tokens are padding
    pooled = torch.randn(batch, config.context_dim, generator=g)
    return x, t, context, mask, pooled


def run(model: UNet3D, x, t, context, mask, pooled) -> torch.Tensor:
    with torch.no_grad():
        return model(x, t, context, mask, pooled)


# ---------------------------------------------------------------------------------------------
# shapes and the zero start


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("in_ch, out_ch", [(4, 4), (3, 6)])
def test_output_shape_and_dtype(name, in_ch, out_ch):
    config = replace(CONFIGS[name], in_channels=in_ch, out_channels=out_ch)
    model = build(config)
    x, t, context, mask, pooled = inputs(config)
    out = run(model, x, t, context, mask, pooled)
    assert out.shape == (2, out_ch, FRAMES, SIZE, SIZE)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_bfloat16_model_keeps_its_dtype_and_single_frames_work():
    config = tiny()
    model = build(config).to(torch.bfloat16)
    x, t, context, mask, pooled = inputs(config, frames=1)
    out = run(model, x.bfloat16(), t, context, mask, pooled)
    assert out.shape == (2, 3, 1, SIZE, SIZE) and out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


def test_timesteps_may_be_int_float_or_scalar_and_matter():
    config = tiny()
    model = build(config)
    x, _, context, mask, pooled = inputs(config)
    a = run(model, x, torch.tensor([7, 7]), context, mask, pooled)
    b = run(model, x, torch.tensor([7.0, 7.0]), context, mask, pooled)
    c = run(model, x, 7, context, mask, pooled)
    d = run(model, x, torch.tensor([7, 900]), context, mask, pooled)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert (a[1] - d[1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["factorized", "full"])
def test_untrained_model_predicts_exactly_zero(name):
    config = CONFIGS[name]
    model = build(config, randomize=False)
    args = inputs(config)
    assert torch.count_nonzero(run(model, *args)) == 0
    with torch.no_grad():
        model.conv_out.weight.normal_(0, 0.02)
    assert run(model, *args).abs().max() > 0


def test_fresh_factorized_conv_is_a_per_frame_2d_conv():
    conv = FactorizedConv3d(8, 8)
    x = torch.randn(1, 8, 5, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), conv.spatial(x))


# ---------------------------------------------------------------------------------------------
# mixing across frames, and no mixing across the batch


@pytest.mark.parametrize("name", ["factorized", "full"])
def test_changing_frame_zero_changes_every_other_frame(name):
    config = CONFIGS[name]
    model = build(config)
    x, t, context, mask, pooled = inputs(config)
    changed = x.clone()
    changed[:, :, 0] = torch.randn_like(changed[:, :, 0])
    diff = (run(model, x, t, context, mask, pooled)
            - run(model, changed, t, context, mask, pooled)).abs()
    per_frame = diff.amax(dim=(0, 1, 3, 4))
    assert (per_frame[1:] > 1e-3).all(), per_frame


def make_convs_per_frame(model: UNet3D) -> None:
    """Cut every temporal tap of every ResBlock conv, keeping the per-frame (centre) part."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FactorizedConv3d):
                torch.nn.init.dirac_(module.temporal.weight)
        for name, p in model.named_parameters():
            if ".resnets." in name and ".conv" in name and name.endswith("weight") \
                    and p.shape[2] == 3 and p.shape[3] == 3:  # a full 3x3x3 kernel
                p[:, :, 0].zero_()
                p[:, :, 2].zero_()


def silence_temporal_attention(model: UNet3D) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".attn_temp.to_out." in name:
                p.zero_()


def silence_text_alignment(model: UNet3D) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".text_align"):
                p.zero_()


def frame_swap_gap(model: UNet3D, config: ModelConfig) -> float:
    """max |model(swap(x)) - swap(model(x))| for swapping frames 1 and 2.

    Without temporal layers the UNet is a per-frame 2D network whose only link between frames
    is GroupNorm statistics, which are sums over all frames; it is then exactly equivariant to
    reordering frames. A temporal conv breaks that, and so does temporal attention, but only
    because of its frame-position signal: attention over a set of frames alone is equivariant.
    The text alignment breaks it too: it tells each frame which words to read.
    """
    x, t, context, mask, pooled = inputs(config, size=8)
    order = [0, 2, 1, 3]
    out = run(model, x, t, context, mask, pooled)
    out_swapped = run(model, x[:, :, order], t, context, mask, pooled)
    return (out_swapped - out[:, :, order]).abs().max().item()


@pytest.mark.parametrize("name", ["factorized", "full", "three_levels"])
def test_which_layers_mix_frames(name, monkeypatch):
    config = CONFIGS[name]
    base = build(config)

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

    alignment_only = build(config)
    make_convs_per_frame(alignment_only)
    silence_temporal_attention(alignment_only)
    assert frame_swap_gap(alignment_only, config) > 1e-3

    assert frame_swap_gap(base, config) > 1e-3

    # Temporal attention tells frames apart only through the frame-position signal.
    monkeypatch.setattr(unet_module, "sinusoidal_embedding",
                        lambda positions, dim: torch.zeros(len(positions), dim))
    assert frame_swap_gap(attention_only, config) < 1e-5


def test_text_alignment_at_zero_weight_is_the_model_without_it():
    """Per-frame cross-attention computes exactly what the (B, F*H*W) one did; the bias is the
    only difference, and a zero weight removes it."""
    config = tiny()
    aligned = build(config)
    plain = UNet3D(tiny(text_alignment=False)).eval()
    state = {k: v for k, v in aligned.state_dict().items() if not k.endswith(".text_align")}
    plain.load_state_dict(state, strict=True)
    args = inputs(config)
    assert (run(aligned, *args) - run(plain, *args)).abs().max() > 1e-3
    silence_text_alignment(aligned)
    torch.testing.assert_close(run(aligned, *args), run(plain, *args), atol=1e-6, rtol=0)


def test_token_positions_put_markers_at_the_ends_and_words_in_their_slots():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1],
                         [1, 1, 0, 0, 0, 0]])
    pos = unet_module.token_positions(mask)
    # [CLS] w1 w2 [SEP]: words at the middles of the halves of the clip.
    torch.testing.assert_close(pos[0, :4], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    torch.testing.assert_close(pos[1, :3], torch.tensor([0.0, 0.5, 1.0]))  # one word: middle
    torch.testing.assert_close(pos[2], torch.tensor([0.0, 0.125, 0.375, 0.625, 0.875, 1.0]))
    assert pos[3, 0] == 0.0 and 0.0 <= pos[3, 1] <= 1.0  # the empty caption: two markers
    bias = unet_module.text_alignment_bias(torch.ones(2), 8, mask[:1])  # (8, 2, 1, L)
    # Each frame leans most towards the token whose position is nearest its time.
    nearest = bias[:, 0, 0, :4].argmax(dim=-1)
    assert nearest.tolist() == [0, 1, 1, 1, 2, 2, 2, 3]


def test_no_leakage_across_the_batch():
    config = tiny()
    model = build(config)
    x, t, context, mask, pooled = inputs(config)
    x2, t2, context2, mask2, pooled2 = x.clone(), t.clone(), context.clone(), mask.clone(), \
        pooled.clone()
    x2[1], t2[1], context2[1], pooled2[1] = torch.randn_like(x[1]), 999 - t[1], \
        torch.randn_like(context[1]), torch.randn_like(pooled[1])
    mask2[1] = False
    a = run(model, x, t, context, mask, pooled)
    b = run(model, x2, t2, context2, mask2, pooled2)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)
    assert (a[1] - b[1]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# text conditioning


def test_text_context_and_pooled_embedding_change_the_output():
    config = tiny()
    model = build(config)
    x, t, context, mask, pooled = inputs(config)
    base = run(model, x, t, context, mask, pooled)
    other_context = run(model, x, t, torch.randn_like(context), mask, pooled)
    other_pooled = run(model, x, t, context, mask, torch.randn_like(pooled))
    no_pooled = run(model, x, t, context, mask, None)
    for other in (other_context, other_pooled, no_pooled):
        assert (base - other).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-3


def test_padding_tokens_do_not_influence_the_output():
    config = tiny()
    model = build(config)
    x, t, context, mask, pooled = inputs(config)
    changed = context.clone()
    changed[~mask] = 100 * torch.randn_like(changed[~mask])
    a = run(model, x, t, context, mask, pooled)
    b = run(model, x, t, changed, mask, pooled)
    c = run(model, x, t, changed, mask.long(), pooled)  # an integer mask means the same
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a, c, rtol=0, atol=1e-6)


def test_an_all_zero_mask_is_finite_and_ignores_every_token():
    config = tiny()
    model = build(config)
    x, t, context, _, pooled = inputs(config)
    empty = torch.zeros(2, TOKENS, dtype=torch.long)
    a = run(model, x, t, context, empty, pooled)
    b = run(model, x, t, torch.randn_like(context), empty, pooled)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# gradients and checkpointing


def loss_and_grads(model: UNet3D, args) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(*args)
    out.square().mean().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["factorized", "full"])
def test_gradients_reach_every_parameter(name):
    config = CONFIGS[name]
    model = build(config).train()
    _, grads = loss_and_grads(model, inputs(config))
    missing = [n for n, g in grads.items() if g is None or not torch.any(g != 0)]
    assert not missing, missing
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", ["factorized", "full", "three_levels"])
def test_channels_last_computes_the_same_model(name, batch):
    """The CPU default layout: same outputs and gradients as channels-first, the same weights
    (keys and values), and activations really laid out channels-last (batch 1 included, where
    oneDNN picks channels-first for conv_in's 3-channel input)."""
    config = CONFIGS[name]
    first = build(config).train()
    last = build(config).train().use_channels_last()
    for key, value in first.state_dict().items():
        torch.testing.assert_close(last.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert last.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
    layouts = []
    last.down_blocks[0].resnets[0].register_forward_hook(
        lambda _m, _args, out: layouts.append(
            out.is_contiguous(memory_format=torch.channels_last_3d) and not out.is_contiguous()))
    args = inputs(config, batch=batch)
    out_first, grads_first = loss_and_grads(first, args)
    out_last, grads_last = loss_and_grads(last, args)
    assert layouts == [True]
    torch.testing.assert_close(out_last, out_first, rtol=0, atol=2e-5)
    for key, g in grads_first.items():
        torch.testing.assert_close(grads_last[key], g, rtol=1e-4, atol=1e-5, msg=key)
    last.use_channels_last(False)
    assert last.conv_in.weight.is_contiguous()


def test_gradient_checkpointing_matches_and_is_used(monkeypatch):
    config = tiny(dropout=0.1)
    plain = build(config).train()
    ckpt = UNet3D(replace(config, gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    original = unet_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    monkeypatch.setattr(unet_module, "checkpoint", counting)
    args = inputs(config)
    torch.manual_seed(3)
    out_plain, grads_plain = loss_and_grads(plain, args)
    assert not calls
    torch.manual_seed(3)
    out_ckpt, grads_ckpt = loss_and_grads(ckpt, args)
    # 2 down resnets, 1 down transformer, mid 3, 4 up resnets (each joining its skip inside),
    # 2 up transformers, 1 upsample
    assert calls == [False] * 13
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=1e-6)
    for name, g in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], g, rtol=1e-5, atol=1e-7, msg=name)
    calls.clear()
    with torch.no_grad():
        ckpt.eval()(*args)
    assert not calls  # never while sampling


def test_checkpointed_backward_releases_free_memory_once_per_segment(monkeypatch):
    config = replace(tiny(), gradient_checkpointing=True)
    model = UNet3D(config).train()
    released = []
    monkeypatch.setattr(unet_module, "release_free_memory", lambda keep: released.append(keep))
    out = model(*inputs(config))
    assert not released  # the forward pass leaves the heap alone
    out.square().mean().backward()
    # as each checkpointed segment's backward begins, with the slack it tolerates
    assert released == [unet_module.CHECKPOINT_HEAP_SLACK] * 13
    released.clear()
    loss_and_grads(UNet3D(replace(config, gradient_checkpointing=False)).train(),
                   inputs(config))
    assert not released


# ---------------------------------------------------------------------------------------------
# the parameter-key contract


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
    model = UNet3D(tiny())
    state = model.state_dict()
    assert set(state) == set(expected)
    assert set(state) == {n for n, _ in model.named_parameters()}  # no buffers in checkpoints
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["conv_in.weight"] == (16, 3, 1, 3, 3)
    assert shapes["down_blocks.0.resnets.0.conv1.spatial.weight"] == (16, 16, 1, 3, 3)
    assert shapes["down_blocks.0.resnets.0.conv1.temporal.weight"] == (16, 16, 3, 1, 1)
    assert shapes["down_blocks.0.resnets.0.time_emb_proj.weight"] == (32, 64)
    assert shapes["up_blocks.0.resnets.0.conv1.spatial.weight"] == (32, 64, 1, 3, 3)
    assert shapes["up_blocks.0.resnets.1.skip.weight"] == (32, 48, 1, 1, 1)
    assert shapes["up_blocks.1.resnets.0.conv1.spatial.weight"] == (16, 48, 1, 3, 3)
    assert shapes["up_blocks.1.resnets.1.conv1.spatial.weight"] == (16, 32, 1, 3, 3)
    assert shapes["mid_block.attentions.0.attn2.to_k.weight"] == (32, CONTEXT_DIM)
    assert shapes["mid_block.attentions.0.ff.linear_1.weight"] == (128, 32)
    assert shapes["time_embed.linear_1.weight"] == (64, 16)
    assert shapes["text_embed.weight"] == (64, CONTEXT_DIM)
    assert shapes["conv_out.weight"] == (3, 16, 1, 3, 3)


def test_full_conv_keys_and_named_contract_keys():
    full = set(UNet3D(tiny(conv_mode="full")).state_dict())
    assert set(resnet_keys("down_blocks.0.resnets.0", factorized=False)) <= full
    assert not any(".spatial." in k or ".temporal." in k for k in full)
    three = UNet3D(CONFIGS["three_levels"]).state_dict()
    assert three["down_blocks.0.resnets.0.conv1.spatial.weight"].shape == (16, 16, 1, 3, 3)
    for key in ["down_blocks.0.resnets.0.conv1.spatial.weight",
                "mid_block.attentions.0.attn_temp.to_q.weight", "time_embed.linear_1.weight",
                "text_embed.weight", "up_blocks.0.upsample.conv.weight",
                "up_blocks.1.upsample.conv.weight", "down_blocks.0.attentions.0.attn2.to_v.weight",
                "up_blocks.2.attentions.1.proj_out.bias", "down_blocks.1.downsample.conv.weight"]:
        assert key in three, key
    assert not any(k.startswith("down_blocks.1.attentions") for k in three)
    assert not any(k.startswith(("down_blocks.2.downsample", "up_blocks.2.upsample"))
                   for k in three)


# ---------------------------------------------------------------------------------------------
# attention and sinusoid maths (what the MLX twin must reproduce)


def reference_attention(attn: Attention, x, context, mask, heads):
    q, k, v = x @ attn.to_q.weight.T, context @ attn.to_k.weight.T, context @ attn.to_v.weight.T
    b, n, c = q.shape
    d = c // heads

    def split(t):
        return t.reshape(b, -1, heads, d).permute(0, 2, 1, 3)

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = (scores.softmax(dim=-1) @ v).permute(0, 2, 1, 3).reshape(b, n, c)
    return out @ attn.to_out.weight.T + attn.to_out.bias


def test_attention_matches_a_hand_written_softmax():
    torch.manual_seed(0)
    heads = 4
    cross = Attention(32, 24, heads)
    self_attn = Attention(32, None, heads)
    x, context = torch.randn(3, 10, 32), torch.randn(3, 7, 24)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1, 0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(self_attn(x), reference_attention(self_attn, x, x, None, heads))
        torch.testing.assert_close(cross(x, context),
                                   reference_attention(cross, x, context, None, heads))
        torch.testing.assert_close(cross(x, context, mask),
                                   reference_attention(cross, x, context, mask, heads))
        # A sample with no real token: the attention sum is empty, only to_out's bias remains.
        mask[1] = False
        out = cross(x, context, mask.int())
        torch.testing.assert_close(out[1], cross.to_out.bias.expand(10, 32))
        torch.testing.assert_close(out[0], reference_attention(cross, x, context, mask,
                                                               heads)[0])


def test_sinusoid_is_cos_then_sin_with_base_10000():
    positions = torch.tensor([0.0, 1.0, 5.0, 999.0])
    emb = sinusoidal_embedding(positions, 7)
    half = 3
    expected = torch.zeros(4, 7)
    for r, p in enumerate(positions.tolist()):
        for i in range(half):
            w = math.exp(-math.log(10000.0) * i / half)
            expected[r, i] = math.cos(p * w)
            expected[r, half + i] = math.sin(p * w)
    torch.testing.assert_close(emb, expected)
