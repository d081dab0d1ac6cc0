"""The EMA weights in MLX: a copy of the model that trails the trained one, and what samples and
checkpoints' `ema.safetensors` are drawn from. The decay schedule is the core's
(`shared.app.trainer.EMACount`), so both backends average alike."""

from __future__ import annotations

import copy

import mlx.nn as nn
from mlx.utils import tree_map

from shared.app.trainer import EMACount

__all__ = ["EMA"]


class EMA(EMACount):
    """The EMA weights (see `EMACount`)."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(decay)
        self.model = copy.deepcopy(model)
        self.model.eval()

    def update(self, model: nn.Module) -> None:
        decay = self.next_decay()
        self.model.update(tree_map(lambda e, p: e + (1.0 - decay) * (p - e),
                                   self.model.parameters(), model.parameters()))
