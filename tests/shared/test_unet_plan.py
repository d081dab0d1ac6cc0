"""`shared.model.unet_plan`: the block plan of the default model written out by hand, and the skip
stack consumed exactly (the real models, the shape table and the FLOP counter are checked against
each other in tests/parity/test_convert.py and tests/shared/test_flops.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.config import ModelConfig
from shared.model.unet_plan import unet_plan


def test_default_plan_by_hand():
    plan = unet_plan(ModelConfig())  # widths 64, 128, 128, 256; attention at levels 2 and 3
    assert [b.name for b in plan.blocks] == [
        "down_blocks.0", "down_blocks.1", "down_blocks.2", "down_blocks.3", "mid_block",
        "up_blocks.0", "up_blocks.1", "up_blocks.2", "up_blocks.3"]
    assert plan.in_channels == plan.out_channels == 64
    d0, d1, _, d3 = plan.down
    assert d0.resnets == ((64, 64), (64, 64)) and d0.transformers == 0 and d0.resample
    assert d1.resnets == ((64, 128), (128, 128)) and d1.out_level == 2
    assert d3.transformers == 2 and not d3.resample and d3.out_level == 3
    assert plan.mid.resnets == ((256, 256), (256, 256)) and plan.mid.transformers == 1
    assert plan.mid.level == 3 and plan.mid.kind == "mid"
    u0, u1, u2, u3 = plan.up
    assert u0.skips == (256, 256, 128)
    assert u0.resnets == ((512, 256), (512, 256), (384, 256)) and u0.transformers == 3
    assert u1.resnets == ((384, 128), (256, 128), (256, 128)) and u1.level == 2
    assert u2.skips == (128, 128, 64) and u2.transformers == 0 and u2.out_level == 0
    assert u3.resnets == ((192, 64), (128, 64), (128, 64)) and not u3.resample


@pytest.mark.parametrize("mult,blocks", [((1,), 1), ((1, 2, 2), 2), ((1, 2, 3, 4), 3)])
def test_every_skip_pushed_is_popped_once(mult, blocks):
    model = replace(ModelConfig(), channel_mult=mult, num_res_blocks=blocks, attention_levels=())
    plan = unet_plan(model)
    pushed = 1 + sum(len(b.resnets) + b.resample for b in plan.down)
    assert sum(len(b.skips) for b in plan.up) == pushed
    assert all(len(b.skips) == len(b.resnets) == blocks + 1 for b in plan.up)
    assert [b.level for b in plan.up] == list(reversed(range(len(mult))))
