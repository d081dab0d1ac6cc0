"""Inflation of a (tiny) Stable Diffusion UNet: per-frame image model, sparse-causal attention,
temporal attention through hooks, trainable modules."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from t2s_torch.tav.inflate import (
    FrameContext,
    InflatedUNet,
    SparseCausalAttnProcessor,
    set_trainable,
    sparse_causal_index,
)
from t2s_torch.tav.models import load_unet


@pytest.fixture
def unets(tiny_sd) -> tuple[torch.nn.Module, InflatedUNet]:
    """The 2D UNet and an inflated copy, both loaded from the tiny model's folder."""
    return load_unet(tiny_sd).eval(), InflatedUNet(load_unet(tiny_sd)).eval()


def inputs(frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, frames, 8, 8, generator=g), torch.tensor([10, 700]),
            torch.randn(2, 16, 32, generator=g))


@torch.no_grad()
def test_fresh_inflation_is_the_image_unet_frame_by_frame(unets):
    image, video = unets
    x, t, text = inputs(4)
    out = video(x, t, text)
    assert out.shape == x.shape
    frame0 = image(x[:, :, 0], t, text).sample
    assert (out[:, :, 0] - frame0).abs().max() <= 1e-5
    # identical frames: every frame attends to copies of itself, so each is the image output
    same = video(x[:, :, :1].expand(-1, -1, 4, -1, -1), t, text)
    assert (same - frame0[:, :, None]).abs().max() <= 1e-5
    # ... while different frames really are different videos, not independent images
    assert (out[:, :, 2] - image(x[:, :, 2], t, text).sample).abs().max() > 1e-3


@torch.no_grad()
def test_temporal_attention_runs_in_every_transformer_block(unets):
    _, video = unets
    x, t, text = inputs(4)
    before = video(x, t, text)
    temporal = [m for n, m in video.unet.named_modules() if n.endswith("attn_temp")]
    blocks = [m for m in video.unet.modules() if isinstance(m, BasicTransformerBlock)]
    assert len(temporal) == len(blocks) == 4  # down 1, mid 1, up 2 (layers_per_block + 1)
    for layer in temporal:
        torch.nn.init.normal_(layer.attn.to_out[0].weight, std=0.2)
    after = video(x, t, text)
    assert (after[:, :, 0] - before[:, :, 0]).abs().max() > 1e-3
    changed = x.clone()
    changed[:, :, 3] += 1.0
    # temporal attention mixes all frames: frame 0 now sees frame 3
    assert (video(changed, t, text)[:, :, 0] - after[:, :, 0]).abs().max() > 1e-4


@torch.no_grad()
def test_sparse_causal_attention_only_looks_back(unets):
    _, video = unets
    x, t, text = inputs(5)
    out = video(x, t, text)
    changed = x.clone()
    changed[:, :, 3] = torch.randn_like(changed[:, :, 3])
    diff = (video(changed, t, text) - out).abs().amax(dim=(0, 1, 3, 4))
    assert diff[:3].max() <= 1e-6, diff  # frames 0-2 attend to frames 0 and i-1 < 3 only
    assert diff[3] > 1e-3 and diff[4] > 1e-3  # frame 4 attends to frame 3


def test_sparse_causal_index():
    assert sparse_causal_index(4).tolist() == [[0, 0], [0, 0], [0, 1], [0, 2]]


@torch.no_grad()
def test_processor_is_attention_over_frame_zero_and_the_previous_frame():
    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    frames = FrameContext(num_frames=3)
    x = torch.randn(2 * 3, 5, 8)  # two videos of three frames of five tokens
    attn.set_processor(SparseCausalAttnProcessor(frames))
    out = attn(x).view(2, 3, 5, 8)
    attn.set_processor(AttnProcessor2_0())
    videos = x.view(2, 3, 5, 8)
    for i, previous in enumerate([0, 0, 1]):
        context = torch.cat([videos[:, 0], videos[:, previous]], dim=1)
        expected = attn(videos[:, i], encoder_hidden_states=context)
        assert torch.allclose(out[:, i], expected, atol=1e-6)


def test_trainable_modules(tiny_sd):
    unet = InflatedUNet(load_unet(tiny_sd)).unet
    names = set(set_trainable(unet, ["attn1.to_q", "attn2.to_q", "attn_temp"]))
    assert names == {n for n, p in unet.named_parameters() if p.requires_grad}
    assert all(".attn1.to_q." in n or ".attn2.to_q." in n or ".attn_temp." in n for n in names)
    blocks = [n for n, _ in unet.named_modules() if n.endswith("transformer_blocks.0")]
    for block in blocks:  # every block contributes its queries and its whole temporal layer
        assert f"{block}.attn1.to_q.weight" in names and f"{block}.attn2.to_q.weight" in names
        assert f"{block}.attn_temp.norm.weight" in names
        assert f"{block}.attn_temp.attn.to_out.0.weight" in names
        assert f"{block}.attn1.to_k.weight" not in names
    assert not any(p.requires_grad for n, p in unet.named_parameters() if "conv" in n)
    with pytest.raises(ValueError, match="attn3.to_q matches no module"):
        set_trainable(unet, ["attn1.to_q", "attn3.to_q"])


def test_gradient_checkpointing_recomputes_the_same_video_graph(tiny_sd):
    x, t, text = inputs(4)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)  # the new temporal layers' initialisation
        video = InflatedUNet(load_unet(tiny_sd)).train()
        for n, p in video.unet.named_parameters():
            if n.endswith("attn_temp.attn.to_out.0.weight"):
                torch.nn.init.normal_(p, std=0.1)
        set_trainable(video.unet, ["attn_temp", "attn1.to_q"])
        if checkpointing:
            video.unet.enable_gradient_checkpointing()
        video(x, t, text).square().mean().backward()
        grads.append({n: p.grad for n, p in video.unet.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert grad is not None and torch.allclose(grad, grads[1][name], atol=1e-6), name
    assert any(g.abs().max() > 0 for g in grads[0].values())


def test_inflated_layers_refuse_to_run_outside_the_video_forward(tiny_sd):
    video = InflatedUNet(load_unet(tiny_sd))
    with pytest.raises(RuntimeError, match="outside InflatedUNet.forward"):
        video.unet(torch.randn(1, 4, 8, 8), 1, torch.randn(1, 16, 32))
    with pytest.raises(ValueError, match="already inflated"):
        InflatedUNet(video.unet)
