"""A per-block view of the UNet: parameters, output shapes and forward FLOPs.

FLOPs are counted by torch's own FlopCounterMode on a real forward pass at the config's data
size, so the table shows what the hardware will actually be asked to do, block by block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from shared.config import Config
from t2s_torch.unet import UNet3D


@dataclass
class BlockRow:
    name: str
    parameters: int
    output_shape: tuple[int, ...]
    gflops: float  # forward, for the whole batch


def top_level_blocks(model: UNet3D) -> list[tuple[str, torch.nn.Module]]:
    """The blocks a reader thinks in: embeddings, conv_in, each down/up level, mid, output."""
    rows = []
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleList):
            rows.extend((f"{name}.{i}", c) for i, c in enumerate(child))
        else:
            rows.append((name, child))
    return rows


@torch.no_grad()
def summarize(config: Config, batch: int = 1, text_length: int | None = None,
              device: str | torch.device = "cpu") -> tuple[list[BlockRow], float]:
    """Rows for every top-level block and the total forward GFLOPs of one batch."""
    model = UNet3D(config.model).to(device).eval()
    m, d = config.model, config.data
    length = text_length or config.text.max_length
    x = torch.zeros(batch, m.in_channels, d.num_frames, d.image_size, d.image_size, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    context = torch.zeros(batch, length, m.context_dim, device=device)
    mask = torch.ones(batch, length, dtype=torch.long, device=device)
    pooled = torch.zeros(batch, m.context_dim, device=device)

    shapes: dict[str, tuple[int, ...]] = {}
    blocks = top_level_blocks(model)
    def record(name: str):
        def hook(_module, _inputs, output) -> None:  # returning None keeps the output
            first = output[0] if isinstance(output, (tuple, list)) else output
            shapes.setdefault(name, tuple(first.shape))
        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in blocks]
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with counter:
            model(x, t, context, mask, pooled)
    finally:
        for h in hooks:
            h.remove()
    per_module = counter.get_flop_counts()
    rows = []
    for name, module in blocks:
        flops = sum(per_module.get(f"UNet3D.{name}", {}).values())
        rows.append(BlockRow(name, sum(p.numel() for p in module.parameters()),
                             shapes.get(name, ()), flops / 1e9))
    return rows, counter.get_total_flops() / 1e9


def format_table(rows: list[BlockRow], total_gflops: float) -> str:
    lines = [f"{'block':<22} {'params':>12} {'output shape':<28} {'fwd GFLOPs':>11}"]
    for r in rows:
        shape = "x".join(str(s) for s in r.output_shape)
        lines.append(f"{r.name:<22} {r.parameters:>12,} {shape:<28} {r.gflops:>11.3f}")
    total_params = sum(r.parameters for r in rows)
    lines.append(f"{'total':<22} {total_params:>12,} {'':<28} {total_gflops:>11.3f}")
    return "\n".join(lines)
