"""The UNet's block plan: which blocks exist, their widths, levels, attention and skips.

Written once, from `ModelConfig` alone, so the four walkers of the UNet cannot drift apart: both
backends' `unet.py` build their modules from it, `shared.model.layouts.parameter_shapes` lists the
parameter keys and shapes from it, and `shared.model.flops` counts its FLOPs from it.

The skip stack is the contract of the torch docstring: conv_in's output, then every resnet (or
resnet + transformer) output of each down level and every downsample output, in that order; each
up block's resnets pop from its end and concatenate `[h, skip]` along channels, so a resnet's
input width is the width of `h` plus that of its skip.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import ModelConfig


@dataclass(frozen=True)
class BlockPlan:
    """One top-level block: `down_blocks.i`, `mid_block` or `up_blocks.i`."""

    name: str
    # The resolution it runs at: level l sees the input side / 2**l.
    level: int
    # (in, out) channels of each ResBlock3D, in order; an up block's `in` includes its skip.
    resnets: tuple[tuple[int, int], ...]
    # Widths of the skips an up block's resnets concatenate, one per resnet, in pop order; empty
    # for down and mid blocks.
    skips: tuple[int, ...]
    # SpatioTemporalTransformers: one after each resnet at an attention level (down / up), one
    # between the two resnets in the mid block.
    transformers: int
    # Ends in a 2x downsample (down block) or a 2x upsample (up block).
    resample: bool

    @property
    def kind(self) -> str:
        """"down", "mid" or "up"."""
        return self.name.split("_")[0]

    @property
    def out_channels(self) -> int:
        return self.resnets[-1][1]

    @property
    def out_level(self) -> int:
        """The level of the block's output: one lower after a downsample, one higher after an
        upsample."""
        if not self.resample:
            return self.level
        return self.level + 1 if self.kind == "down" else self.level - 1


@dataclass(frozen=True)
class UNetPlan:
    """Every block between conv_in (`in_channels` wide out) and norm_out (`out_channels`)."""

    in_channels: int
    down: tuple[BlockPlan, ...]
    mid: BlockPlan
    up: tuple[BlockPlan, ...]

    @property
    def blocks(self) -> tuple[BlockPlan, ...]:
        """All blocks in forward order."""
        return (*self.down, self.mid, *self.up)

    @property
    def out_channels(self) -> int:
        return self.up[-1].out_channels


def unet_plan(model: ModelConfig) -> UNetPlan:
    """The block plan `model` builds (see the module docstring)."""
    chs, n, last = model.level_channels(), model.num_res_blocks, model.num_levels - 1
    skips, prev = [chs[0]], chs[0]
    down = []
    for i, ch in enumerate(chs):
        attention = i in model.attention_levels
        down.append(BlockPlan(f"down_blocks.{i}", i,
                              tuple((prev if j == 0 else ch, ch) for j in range(n)), (),
                              n if attention else 0, i < last))
        skips += [ch] * n + ([ch] if i < last else [])
        prev = ch

    mid = BlockPlan("mid_block", last, ((prev, prev), (prev, prev)), (), 1, False)

    up = []
    for u, level in enumerate(reversed(range(model.num_levels))):
        ch = chs[level]
        popped = tuple(skips.pop() for _ in range(n + 1))
        attention = level in model.attention_levels
        up.append(BlockPlan(f"up_blocks.{u}", level,
                            tuple(((prev if j == 0 else ch) + s, ch) for j, s in enumerate(popped)),
                            popped, n + 1 if attention else 0, level > 0))
        prev = ch
    return UNetPlan(chs[0], tuple(down), mid, tuple(up))
