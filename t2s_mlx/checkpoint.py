"""Writing and reading checkpoints from MLX; the directory protocol is `shared.model.checkpoint`.

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

from shared.config import Config
from shared.model.checkpoint import inference_weights, write_checkpoint
from shared.model.checkpoint import load_trainer_state as load_trainer_state  # its old home
from shared.model.resume import check_resume_files
from shared.model.safetensors_io import TensorSpec
from shared.model.tensor_files import read_tensor_file, tensor_metadata

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
    """A tensor file's tensors, checked first (`shared.model.tensor_files.read_tensor_file`)."""
    return read_tensor_file(path, mx.load, expected_layout, expected)


def load_into(module: nn.Module, path: Path) -> None:
    """Load weights into `module`, refusing a mismatch with one message."""
    tensors = load_tensors(path, expected=tensor_specs(module))
    module.update(tree_unflatten(list(tensors.items())))


def check_checkpoint(checkpoint: Path, model: nn.Module) -> None:
    """Everything `--resume` reads, checked against `model` before any of it is loaded."""
    check_resume_files(checkpoint, tensor_specs(model), LAYOUT)


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
    return write_checkpoint(
        run_dir, step, config, save_tensors, lambda: state_tensors(model),
        ema=(lambda: state_tensors(ema)) if ema is not None else None,
        optimizer=(lambda: optimizer_tensors(optimizer)) if optimizer is not None else None,
        trainer_state=trainer_state, keep_last=keep_last)


def load_checkpoint(checkpoint: Path, model: nn.Module, ema: nn.Module,
                    optimizer: optim.Optimizer) -> None:
    """Load what `save_checkpoint` wrote into a training run's model, EMA and optimizer."""
    load_into(model, checkpoint / "model.safetensors")
    load_into(ema, checkpoint / "ema.safetensors")
    load_optimizer_tensors(optimizer, load_tensors(checkpoint / "optimizer.safetensors"))


def load_model(checkpoint: str | Path, use_ema: bool = True) -> tuple[Config, nn.Module, Path]:
    """Build the UNet a checkpoint's config describes and load its (EMA) weights for inference."""
    from t2s_mlx.unet import UNet3D

    config, weights, path = inference_weights(checkpoint, use_ema)
    model = UNet3D(config.model)
    load_into(model, weights)
    model.eval()
    return config, model, path
