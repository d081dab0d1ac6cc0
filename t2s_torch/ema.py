"""The EMA weights in PyTorch: a frozen copy of the model that trails the trained one, and what
samples and checkpoints' `ema.safetensors` are drawn from. The decay schedule is the core's
(`shared.app.trainer.EMACount`), so both backends average alike."""

from __future__ import annotations

import copy

import torch

from shared.app.trainer import EMACount

__all__ = ["EMA"]


class EMA(EMACount):
    """The EMA weights (see `EMACount`)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = self.next_decay()
        ema_params, params = list(self.model.parameters()), list(model.parameters())
        if len(ema_params) != len(params):
            raise ValueError(f"EMA holds {len(ema_params)} tensors, the model {len(params)}")
        # One multi-tensor kernel rather than a Python loop of one small op per parameter.
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
