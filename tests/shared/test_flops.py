"""shared.model.flops against independent references: torch's FlopCounterMode on the real UNet3D,
the real model's parameter counts, and a hand count of a very small config.

FlopCounterMode has no formula for the CPU SDPA kernel
(`_scaled_dot_product_flash_attention_for_cpu`), so CPU runs here add one with torch's own SDPA
formula (`sdpa_flop_count`). On the meta device SDPA takes the math path (two bmm), which the
stock counter counts: the presets run there, as shapes only, in well under a second.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import Config, ConfigError, apply_overrides, preset
from shared.model.flops import (
    BlockFlops,
    block_flops,
    forward_flops,
    num_parameters,
    training_flops_per_sample,
)

try:  # the hand counts below need no framework; the comparisons need torch
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from t2s_torch.unet import UNet3D
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
REPO = Path(__file__).resolve().parents[2]


# These forwards are tiny; on a busy machine several threads make them 100x slower.
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def top_level_blocks(model) -> list:
    """The rows `visualize` prints: embeddings, conv_in, each down/up level, mid, output."""
    rows = []
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleList):
            rows.extend((f"{name}.{i}", c) for i, c in enumerate(child))
        else:
            rows.append((name, child))
    return rows


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa() -> dict:
    return {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


def _inputs(config: Config, batch: int, length: int):
    m, d = config.model, config.data
    x = torch.zeros(batch, m.in_channels, d.num_frames, d.image_size, d.image_size)
    return (x, torch.zeros(batch, dtype=torch.long), torch.zeros(batch, length, m.context_dim),
            torch.ones(batch, length, dtype=torch.long), torch.zeros(batch, m.context_dim))


def _measure(config: Config, batch: int = 1, text_length: int | None = None,
             device: str = "cpu", count_cpu_sdpa: bool = True,
             fused: bool = False) -> tuple[list[BlockFlops], int]:
    """Rows measured on the real torch model: FlopCounterMode per block, hooks for shapes.

    The output head (norm_out -> SiLU -> conv_out) runs on the CPU as one fused autograd node
    that calls neither module, so neither would get its row; unless `fused`, the model runs the
    plain composition (the same ops; `test_fused_node_counts_the_same_flops` checks that).
    """
    from t2s_torch.kernels import norm_silu

    length = config.text.max_length if text_length is None else text_length
    saved = norm_silu.FUSED_DEVICE_TYPES
    norm_silu.FUSED_DEVICE_TYPES = saved if fused else ()
    with torch.device(device):
        model = UNet3D(config.model).eval()
        args = _inputs(config, batch, length)
    blocks = top_level_blocks(model)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module, _inputs, output) -> None:
            first = output[0] if isinstance(output, (tuple, list)) else output
            shapes.setdefault(name, tuple(first.shape))
        return hook

    hooks = [mod.register_forward_hook(record(name)) for name, mod in blocks]
    counter = FlopCounterMode(display=False, depth=None,
                              custom_mapping=_cpu_sdpa() if count_cpu_sdpa else None)
    try:
        with torch.no_grad(), counter:
            model(*args)
    finally:
        norm_silu.FUSED_DEVICE_TYPES = saved
        for h in hooks:
            h.remove()
    per_module = counter.get_flop_counts()
    rows = [BlockFlops(name, sum(p.numel() for p in mod.parameters()), shapes.get(name, ()),
                       sum(per_module.get(f"UNet3D.{name}", {}).values()))
            for name, mod in blocks]
    return rows, counter.get_total_flops()


def _variant(**model_fields) -> Config:
    config = preset("tiny")
    config.model = dataclasses.replace(config.model, **model_fields)
    return config.validate()


def _three_level() -> Config:
    config = _variant(channel_mult=(1, 2, 2), num_res_blocks=2,
                      attention_levels=(0, 2))
    config.data.num_frames = 3
    return config


CASES = {
    "tiny": (lambda: preset("tiny"), 1, None),
    "full-conv": (lambda: _variant(conv_mode="full"), 1, None),
    "3-level-2-res": (_three_level, 1, None),
    "batch-2": (lambda: preset("tiny"), 2, None),
    "text-length-7": (lambda: preset("tiny"), 1, 7),
    "latent-channels": (lambda: _variant(in_channels=4, out_channels=8), 1, 5),
    "frame-text": (lambda: _variant(frame_text=True), 2, 7),
}


def _assert_rows_equal(ours: list[BlockFlops], ref: list[BlockFlops]) -> None:
    assert [r.name for r in ours] == [r.name for r in ref]
    for a, b in zip(ours, ref):
        assert (a.name, a.forward_flops, a.parameters, a.output_shape) == \
            (b.name, b.forward_flops, b.parameters, b.output_shape), a.name


@needs_torch
@pytest.mark.parametrize("case", list(CASES))
def test_blocks_equal_flop_counter_on_the_torch_model(case: str) -> None:
    make, batch, length = CASES[case]
    config = make()
    ref, ref_total = _measure(config, batch, length)
    ours = block_flops(config, batch=batch, text_length=length)
    _assert_rows_equal(ours, ref)
    assert forward_flops(config, batch, length) == ref_total == sum(r.forward_flops for r in ref)
    assert num_parameters(config) == UNet3D(config.model).num_parameters()


@needs_torch
@pytest.mark.parametrize("name", ["small", "base"])
def test_presets_equal_flop_counter_on_meta(name: str) -> None:
    config = preset(name)
    ref, ref_total = _measure(config, device="meta", count_cpu_sdpa=False)
    _assert_rows_equal(block_flops(config), ref)
    assert forward_flops(config) == ref_total


@needs_torch
@pytest.mark.parametrize("case", ["tiny", "full-conv"])
def test_fused_node_counts_the_same_flops(case: str) -> None:
    """The fused GroupNorm-SiLU-conv node runs the same convs as the composition."""
    make, batch, length = CASES[case]
    config = make()
    _, fused_total = _measure(config, batch, length, fused=True)
    assert fused_total == forward_flops(config, batch, length)


@needs_torch
def test_stock_cpu_counter_misses_exactly_the_attention() -> None:
    """torch's stock counter on a CPU sees everything but the fused SDPA kernels."""
    config = preset("tiny")
    _, stock_total = _measure(config, count_cpu_sdpa=False)
    ours = block_flops(config)
    attention = sum(r.attention_flops for r in ours)
    assert attention > 0
    assert stock_total == forward_flops(config) - attention


@needs_torch
@pytest.mark.parametrize("name", ["tiny", "small"])
def test_training_flops_against_autograd(name: str) -> None:
    """3 x forward, minus exactly the input gradients autograd never computes: those of layers
    fed only by tensors that need no gradient (conv_in, time_embed.linear_1, text_embed, and the
    cross-attention to_k / to_v on the text states). That gap is ~1% for tiny, <0.03% for small."""
    config = preset(name)
    m, length = config.model, config.text.max_length
    with torch.device("meta"):
        model = UNet3D(m).train()
        args = _inputs(config, 1, length)
    counter = FlopCounterMode(display=False)
    with counter:
        model(*args).sum().backward()
    rows = {r.name: r for r in block_flops(config)}
    cross_kv = sum(2 * (2 * length * m.context_dim * mod.to_k.out_features)
                   for key, mod in model.named_modules() if key.endswith("attn2"))
    no_input_grad = (rows["conv_in"].forward_flops + 2 * m.base_channels * m.time_embed_dim
                     + rows["text_embed"].forward_flops + cross_kv)
    predicted = training_flops_per_sample(config)
    assert predicted == 3 * forward_flops(config)
    assert counter.get_total_flops() == predicted - no_input_grad
    assert no_input_grad / predicted < (0.02 if name == "tiny" else 3e-4)


@pytest.mark.parametrize("case", ["tiny", "full-conv", "3-level-2-res", "latent-channels"])
def test_parameters_equal_the_mlx_model(case: str) -> None:
    pytest.importorskip("mlx.core")
    from mlx.utils import tree_flatten

    from t2s_mlx.unet import UNet3D as MlxUNet3D

    config = CASES[case][0]()
    model = MlxUNet3D(config.model)

    def block(name: str):
        attr, _, index = name.partition(".")
        return getattr(model, attr)[int(index)] if index else getattr(model, attr)

    for row in block_flops(config):
        assert row.parameters == sum(v.size for _, v in tree_flatten(block(row.name).parameters()))
    assert num_parameters(config) == model.num_parameters()


def test_hand_count_of_a_very_small_config() -> None:
    config = Config()
    config.model = dataclasses.replace(
        config.model, in_channels=3, out_channels=3, base_channels=8, channel_mult=(1,),
        num_res_blocks=1, attention_levels=(), num_heads=2, norm_groups=4, context_dim=6)
    config.data.num_frames, config.data.image_size = 2, 4
    config.validate()
    rows = {r.name: r for r in block_flops(config, batch=1, text_length=5)}
    assert list(rows) == ["time_embed", "text_embed", "conv_in", "down_blocks.0", "mid_block",
                          "up_blocks.0", "norm_out", "conv_out"]
    positions = 1 * 2 * 4 * 4  # B * F * H * W = 32
    temb = 4 * 8
    # time_embed: Linear(8, 32) -> Linear(32, 32) on one vector.
    assert rows["time_embed"] == BlockFlops(
        "time_embed", (8 * 32 + 32) + (32 * 32 + 32), (1, 32), 2 * 8 * 32 + 2 * 32 * 32)
    assert rows["time_embed"].forward_flops == 2560
    # text_embed: Linear(6, 32) on the pooled embedding.
    assert rows["text_embed"] == BlockFlops("text_embed", 6 * 32 + 32, (1, 32), 384)
    # conv_in: (1, 3, 3) conv 3 -> 8 at every one of the 32 positions.
    assert rows["conv_in"] == BlockFlops("conv_in", 8 * 3 * 9 + 8, (1, 8, 2, 4, 4),
                                         2 * positions * 3 * 8 * 9)
    assert rows["conv_in"].forward_flops == 13824
    # mid_block: two factorized ResBlocks (8 -> 8) and one transformer, text length 5.
    resblock = (2 * positions * 8 * 8 * 9 + 2 * positions * 8 * 8 * 3) * 2 + 2 * temb * 16
    assert resblock == 99328
    n = positions  # tokens
    linear_cc = 2 * n * 8 * 8  # 4096
    spatial = 4 * linear_cc + 2 * 2 * (1 * 2) * 16 * 16 * 8  # q k v out + SDPA over B*F frames
    cross = 2 * linear_cc + 2 * (2 * 5 * 6 * 8) + 2 * 2 * 1 * 32 * 5 * 8  # q out, k v on text
    temporal = 4 * linear_cc + 2 * 2 * (1 * 16) * 2 * 2 * 8  # SDPA over B*H*W pixels
    transformer = linear_cc + spatial + cross + temporal + 2 * (2 * n * 8 * 32) + linear_cc
    assert transformer == 106432
    assert rows["mid_block"].forward_flops == 2 * resblock + transformer == 305088
    assert rows["mid_block"].attention_flops == 16384 + 5120 + 2048
    assert rows["mid_block"].output_shape == (1, 8, 2, 4, 4)
    # norm_out: parameters only; conv_out: (1, 3, 3) conv 8 -> 3.
    assert rows["norm_out"] == BlockFlops("norm_out", 16, (1, 8, 2, 4, 4), 0)
    assert rows["conv_out"] == BlockFlops("conv_out", 3 * 8 * 9 + 3, (1, 3, 2, 4, 4),
                                          2 * positions * 8 * 3 * 9)


def test_totals_scale_and_defaults() -> None:
    config = preset("tiny")
    one = forward_flops(config)
    assert forward_flops(config, batch=3) == 3 * one
    assert forward_flops(config, text_length=config.text.max_length) == one
    assert training_flops_per_sample(config) == 3 * one
    assert training_flops_per_sample(config, text_length=7) == 3 * forward_flops(config, 1, 7)
    assert all(isinstance(r.forward_flops, int) and isinstance(r.parameters, int)
               for r in block_flops(config))


def test_bad_arguments_are_refused() -> None:
    config = preset("tiny")
    with pytest.raises(ValueError):
        block_flops(config, batch=0)
    with pytest.raises(ValueError):
        block_flops(config, text_length=0)
    config.data.image_size = 17  # two levels need a multiple of 2
    with pytest.raises(ConfigError):
        block_flops(config)


def test_import_pulls_in_no_framework() -> None:
    code = ("import sys, shared.model.flops; "
            "bad = [m for m in ('torch', 'mlx') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_latent_mode_counts_the_latent_size() -> None:
    # 128 px frames through an 8x VAE: the UNet sees 16 x 16 x 4, and so must the count.
    latent = apply_overrides(preset("small"), ["data.vae=some/vae", "data.vae_downsample=8",
                                               "model.in_channels=4", "model.out_channels=4"])
    pixels_of_that_size = apply_overrides(preset("small"), [
        "data.image_size=16", "model.in_channels=4", "model.out_channels=4"])
    assert forward_flops(latent) == forward_flops(pixels_of_that_size)
    assert forward_flops(latent) < forward_flops(preset("small")) / 50
