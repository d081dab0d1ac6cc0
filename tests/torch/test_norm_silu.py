"""The fused GroupNorm -> affine -> SiLU (-> conv) node against PyTorch's own ops: values,
gradients (analytic vs PyTorch's autograd of the plain composition, and vs finite differences in
float64), both memory layouts, autocast, and what it keeps for the backward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2s_torch.kernels.norm_silu import GroupNormSiLUFunction, group_norm_silu


def plain(norm: nn.GroupNorm, x: torch.Tensor, scale=None, shift=None) -> torch.Tensor:
    h = norm(x)
    if scale is not None:
        h = h * (1 + scale[:, :, None, None, None]) + shift[:, :, None, None, None]
    return F.silu(h)


def setup(batch: int, channels: int, groups: int, channels_last: bool, dtype=torch.float32,
          seed: int = 0):
    torch.manual_seed(seed)
    norm = nn.GroupNorm(groups, channels, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    # Per-group offsets and spreads differ, so a wrong group reduction shows.
    x = torch.randn(batch, channels, 3, 5, 6, dtype=dtype) * 2 + torch.randn(
        batch, channels, 1, 1, 1, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    scale = (0.5 * torch.randn(batch, channels, dtype=dtype)).requires_grad_()
    shift = torch.randn(batch, channels, dtype=dtype).requires_grad_()
    return norm, x.requires_grad_(), scale, shift


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("modulated", [False, True])
def test_matches_plain_composition_values_and_gradients(channels_last, modulated):
    norm, x, scale, shift = setup(2, 8, 4, channels_last)
    mod = (scale, shift) if modulated else (None, None)
    inputs = [x, norm.weight, norm.bias] + ([scale, shift] if modulated else [])
    expected = plain(norm, x, *mod)
    got = group_norm_silu(norm, x, *mod)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(expected)
    want = torch.autograd.grad(expected, inputs, grad_out)
    have = torch.autograd.grad(got, inputs, grad_out)
    for name, w, h in zip(["x", "weight", "bias", "scale", "shift"], want, have):
        torch.testing.assert_close(h, w, rtol=1e-4, atol=1e-5, msg=name)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    assert got.is_contiguous(memory_format=layout)
    assert have[0].is_contiguous(memory_format=layout)


@pytest.mark.parametrize("modulated", [False, True])
def test_gradients_match_finite_differences(modulated):
    """The node alone, with no conv after it."""
    norm, x, scale, shift = setup(2, 4, 2, channels_last=True, dtype=torch.float64)
    mod = (scale, shift) if modulated else (None, None)

    def fn(x, weight, bias, *mod):
        return GroupNormSiLUFunction.apply(x, weight, bias, 2, 1e-5, *(mod or (None, None)))

    args = (x, norm.weight, norm.bias) + (mod if modulated else ())
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


def test_keeps_less_for_backward_than_the_plain_composition():
    norm, x, scale, shift = setup(1, 8, 4, channels_last=True)
    big = x.numel()

    def saved_full_size(fn) -> int:
        count = 0

        def pack(t):
            nonlocal count
            count += t.numel() == big
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(norm, x, scale, shift)
        return count

    assert saved_full_size(group_norm_silu) == 1  # x alone; the rest is recomputed
    assert saved_full_size(plain) >= 3


def test_autocast_runs_in_float32_like_group_norm():
    norm, x, scale, shift = setup(2, 8, 4, channels_last=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain(norm, x, scale, shift)
        got = group_norm_silu(norm, x.bfloat16(), scale, shift)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


def test_scale_without_shift_is_refused():
    norm, x, scale, _ = setup(1, 8, 4, channels_last=False)
    with pytest.raises(ValueError, match="both scale and shift"):
        group_norm_silu(norm, x, scale, None)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel,padding", [((1, 3, 3), (0, 1, 1)), (3, 1), ((3, 1, 1), (1, 0, 0))])
def test_with_conv_matches_conv_of_the_plain_composition(channels_last, kernel, padding):
    norm, x, scale, shift = setup(2, 8, 4, channels_last)
    torch.manual_seed(1)
    conv = nn.Conv3d(8, 6, kernel, padding=padding)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last_3d)
    inputs = [x, norm.weight, norm.bias, scale, shift, conv.weight, conv.bias]
    expected = conv(plain(norm, x, scale, shift))
    got = group_norm_silu(norm, x, scale, shift, conv=conv)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(expected)
    want = torch.autograd.grad(expected, inputs, grad_out)
    have = torch.autograd.grad(got, inputs, grad_out)
    names = ["x", "weight", "bias", "scale", "shift", "conv.weight", "conv.bias"]
    for name, w, h in zip(names, want, have):
        torch.testing.assert_close(h, w, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_with_conv_gradients_match_finite_differences():
    norm, x, scale, shift = setup(1, 4, 2, channels_last=True, dtype=torch.float64)
    conv = nn.Conv3d(4, 3, (1, 3, 3), padding=(0, 1, 1)).double()

    def fn(x, weight, bias, scale, shift, conv_weight, conv_bias):
        return GroupNormSiLUFunction.apply(x, weight, bias, 2, 1e-5, scale, shift, conv_weight,
                                           conv_bias, (0, 1, 1))

    args = (x, norm.weight, norm.bias, scale, shift, conv.weight, conv.bias)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


def test_with_conv_keeps_only_the_input():
    """The activation between the norm and the conv is recomputed, never kept."""
    norm, x, scale, shift = setup(1, 8, 4, channels_last=True)
    conv = nn.Conv3d(8, 8, (1, 3, 3), padding=(0, 1, 1))
    full_size = []

    def pack(t):
        full_size.append(t.numel() == x.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        group_norm_silu(norm, x, scale, shift, conv=conv)
    assert sum(full_size) == 1
    full_size.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        conv(plain(norm, x, scale, shift))
    assert sum(full_size) >= 4


def test_strided_conv_is_refused():
    norm, x, _, _ = setup(1, 8, 4, channels_last=False)
    with pytest.raises(ValueError, match="stride-1"):
        group_norm_silu(norm, x, conv=nn.Conv3d(8, 8, 3, stride=2, padding=1))
