"""The temporal conv node against PyTorch's own conv3d: values and gradients (vs autograd of
`F.conv3d`, and vs finite differences in float64), the weight gradient's slicing over threads,
and where `temporal_conv` uses the node."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2s_torch.kernels.temporal_conv import TemporalConvFunction, frame_weight_grad, temporal_conv

CL = torch.channels_last_3d


def clip(batch: int, channels: int, frames: int, height: int, width: int,
         dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, channels, frames, height, width, dtype=dtype).contiguous(
        memory_format=CL).requires_grad_()


@pytest.mark.parametrize(("batch", "c_in", "c_out", "frames", "kernel", "threads"), [
    (1, 8, 8, 6, 3, 2),   # batch 1: each sample's rows cut in two
    (2, 5, 7, 4, 3, 2),   # a batch covers the threads
    (3, 4, 6, 1, 3, 4),   # one frame: the outer taps see no frame pair
    (1, 6, 4, 2, 3, 3),   # rows (frames x pixels) not divisible by the threads
    (2, 4, 4, 7, 5, 1),   # a wider kernel, one thread
])
def test_matches_conv3d_values_and_gradients(batch, c_in, c_out, frames, kernel, threads,
                                             monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    torch.manual_seed(0)
    x = clip(batch, c_in, frames, 3, 5)
    weight = torch.randn(c_out, c_in, kernel, 1, 1).contiguous(memory_format=CL)
    weight.requires_grad_()
    bias = torch.randn(c_out, requires_grad=True)
    expected = F.conv3d(x, weight, bias, padding=(kernel // 2, 0, 0))
    got = TemporalConvFunction.apply(x, weight, bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(expected)
    want = torch.autograd.grad(expected, [x, weight, bias], grad_out)
    have = torch.autograd.grad(got, [x, weight, bias], grad_out)
    for name, w, h in zip(["x", "weight", "bias"], want, have):
        torch.testing.assert_close(h, w, rtol=1e-4, atol=1e-4, msg=name)
    assert have[1].is_contiguous(memory_format=CL)  # in the weight's own layout


def test_weight_gradient_is_the_sum_of_frame_pair_products():
    """An independent count: for each tap j, sum over frames t of dy[t] x[t + j - 1]^T."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 2, 2, dtype=torch.float64)
    grad = torch.randn(2, 5, 4, 2, 2, dtype=torch.float64)
    want = torch.zeros(5, 3, 3, dtype=torch.float64)
    for j in range(3):
        for t in range(4):
            if 0 <= t + j - 1 < 4:
                want[:, :, j] += torch.einsum("bohw,bihw->oi", grad[:, :, t], x[:, :, t + j - 1])
    got = frame_weight_grad(grad.contiguous(memory_format=CL), x.contiguous(memory_format=CL), 3)
    assert got.shape == (5, 3, 3, 1, 1)
    torch.testing.assert_close(got[..., 0, 0], want)


def test_gradients_match_finite_differences():
    torch.manual_seed(2)
    x = clip(2, 3, 4, 2, 3, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(TemporalConvFunction.apply, (x, weight, bias))


def test_without_bias_and_frozen_inputs():
    torch.manual_seed(3)
    x = clip(1, 4, 3, 2, 2)
    weight = torch.randn(4, 4, 3, 1, 1, requires_grad=True)
    out = TemporalConvFunction.apply(x.detach(), weight, None)
    (g,) = torch.autograd.grad(out.square().sum(), [weight])
    ref = F.conv3d(x.detach(), weight, None, padding=(1, 0, 0))
    (want,) = torch.autograd.grad(ref.square().sum(), [weight])
    torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-4)


def test_temporal_conv_uses_the_node_only_where_it_is_measured_faster():
    torch.manual_seed(4)
    conv = nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0))
    x = clip(1, 4, 3, 4, 4)
    out = temporal_conv(conv, x)
    assert type(out.grad_fn).__name__ == "TemporalConvFunctionBackward"
    torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-5)
    first = x.detach().contiguous().requires_grad_()  # channels-first: the plain conv
    assert "TemporalConv" not in type(temporal_conv(conv, first).grad_fn).__name__
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "TemporalConv" not in type(temporal_conv(conv, x).grad_fn).__name__
    half = nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0)).to(torch.bfloat16)
    assert "TemporalConv" not in type(temporal_conv(half, x.to(torch.bfloat16)).grad_fn).__name__
