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
    TensorSpec,
    abort_checkpoint,
    begin_checkpoint,
    check_tensor_file,
    commit_checkpoint,
    load_checkpoint_config,
    load_json,
    resolve_checkpoint,
    save_json,
    tensor_metadata,
    verify_checkpoint,
)
from shared.config import Config

LAYOUT = "mlx"


def state_tensors(module: nn.Module) -> dict[str, mx.array]:
    """A module's parameters by their flattened keys (the torch state_dict keys)."""
    return dict(tree_flatten(module.parameters()))


def save_tensors(path: Path, tensors: dict[str, mx.array], kind: str) -> None:
    mx.save_safetensors(str(path), tensors, metadata=tensor_metadata(LAYOUT, kind))


# MLX dtypes by their safetensors names, for comparing a module with a file's header.
SAFETENSORS_DTYPES = {mx.float32: "F32", mx.float16: "F16", mx.bfloat16: "BF16",
                      mx.int64: "I64", mx.int32: "I32", mx.int16: "I16", mx.int8: "I8",
                      mx.uint8: "U8", mx.bool_: "BOOL"}


def tensor_specs(module: nn.Module) -> dict[str, TensorSpec]:
    """What a checkpoint of `module` must hold: every parameter key with its shape and dtype."""
    return {k: TensorSpec(tuple(v.shape), SAFETENSORS_DTYPES.get(v.dtype, str(v.dtype)))
            for k, v in state_tensors(module).items()}


def load_tensors(path: Path, expected_layout: str = LAYOUT,
                 expected: dict[str, TensorSpec] | None = None) -> dict[str, mx.array]:
    """A tensor file's tensors, after `check_tensor_file` (intact, this layout, `expected`'s
    keys and shapes), so a damaged file is refused by name instead of by the reader's error."""
    check_tensor_file(path, expected, expected_layout)
    try:
        return mx.load(str(path))
    except Exception as e:  # a bit flip the header check cannot see; still one line
        raise CheckpointError(f"{path}: cannot be read ({e}); copy it again or use another "
                              "checkpoint") from None


def load_into(module: nn.Module, path: Path) -> None:
    """Load weights into `module`, refusing a mismatch with one message."""
    tensors = load_tensors(path, expected=tensor_specs(module))
    module.update(tree_unflatten(list(tensors.items())))


def check_checkpoint(checkpoint: Path, model: nn.Module) -> None:
    """Everything `--resume` reads from `checkpoint`, checked before any of it is loaded:
    model and EMA weights against `model`, the optimizer file's header, the JSON files."""
    specs = tensor_specs(model)
    verify_checkpoint(checkpoint, {MODEL_FILE: specs, EMA_FILE: specs, OPTIMIZER_FILE: None},
                      LAYOUT)


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
