"""Writing and reading checkpoints from MLX; the directory protocol is `shared.checkpoint`.

The twin of `t2s_torch/checkpoint.py`. Weights go through MLX's own safetensors writer (bf16
keeps its dtype) with `t2s_layout = mlx`; the same keys as torch, conv weights channels-last.
Optimizer moments are keyed by parameter name (`<param key>.m`, `.v`, as mlx.optimizers names
them) plus the optimizer's `step`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from shared.checkpoint import (
    CONFIG_FILE,
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    CheckpointError,
    abort_checkpoint,
    begin_checkpoint,
    check_layout,
    commit_checkpoint,
    compare_keys,
    load_checkpoint_config,
    load_json,
    resolve_checkpoint,
    save_json,
    tensor_metadata,
)
from shared.config import Config

LAYOUT = "mlx"


def state_tensors(module: nn.Module) -> dict[str, mx.array]:
    """A module's parameters by their flattened keys (the torch state_dict keys)."""
    return dict(tree_flatten(module.parameters()))


def save_tensors(path: Path, tensors: dict[str, mx.array], kind: str) -> None:
    mx.save_safetensors(str(path), tensors, metadata=tensor_metadata(LAYOUT, kind))


def load_tensors(path: Path, expected_layout: str = LAYOUT) -> dict[str, mx.array]:
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete")
    tensors, metadata = mx.load(str(path), return_metadata=True)
    check_layout(metadata, expected_layout, path)
    return tensors


def load_into(module: nn.Module, path: Path) -> None:
    """Load weights into `module`, refusing a mismatch with one message."""
    tensors = load_tensors(path)
    expected = state_tensors(module)
    compare_keys(set(expected), set(tensors), path)
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)} but the model "
                                  f"needs {tuple(expected[key].shape)}; was it written by "
                                  "another model config?")
    module.update(tree_unflatten(list(tensors.items())))


def optimizer_tensors(optimizer: optim.Optimizer) -> dict[str, mx.array]:
    return {k: v for k, v in tree_flatten(optimizer.state) if k != "learning_rate"}


def load_optimizer_tensors(optimizer: optim.Optimizer, tensors: dict[str, mx.array]) -> None:
    state = tree_unflatten(list(tensors.items()))
    state["learning_rate"] = optimizer.state.get("learning_rate", mx.array(0.0))
    optimizer.state = state


def save_checkpoint(run_dir: Path, step: int, config: Config, model: nn.Module,
                    ema: nn.Module | None = None, optimizer: optim.Optimizer | None = None,
                    trainer_state: dict[str, Any] | None = None,
                    keep_last: int | None = None) -> Path:
    """Write `run_dir/checkpoints/step_N` atomically and point `latest` at it."""
    tmp = begin_checkpoint(run_dir / "checkpoints", step)
    try:
        config.save(tmp / CONFIG_FILE)
        save_tensors(tmp / MODEL_FILE, state_tensors(model), "model")
        if ema is not None:
            save_tensors(tmp / EMA_FILE, state_tensors(ema), "ema")
        if optimizer is not None:
            save_tensors(tmp / OPTIMIZER_FILE, optimizer_tensors(optimizer), "optimizer")
        save_json(tmp / TRAINER_STATE_FILE, {"step": step, **(trainer_state or {})})
    except BaseException:
        abort_checkpoint(tmp)
        raise
    return commit_checkpoint(tmp, step, keep_last)


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return load_json(checkpoint / TRAINER_STATE_FILE)


def load_model(checkpoint: str | Path, use_ema: bool = True) -> tuple[Config, nn.Module, Path]:
    """Build the UNet a checkpoint's config describes and load its (EMA) weights for inference."""
    from t2s_mlx.unet import UNet3D

    path = resolve_checkpoint(checkpoint)
    config = load_checkpoint_config(path)
    model = UNet3D(config.model)
    weights = path / EMA_FILE if use_ema and (path / EMA_FILE).exists() else path / MODEL_FILE
    load_into(model, weights)
    model.eval()
    return config, model, path
