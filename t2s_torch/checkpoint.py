"""Writing and reading checkpoints from PyTorch; the directory protocol is
`shared.model.checkpoint`.

Weights go through `safetensors.torch` (never pickle), so bf16 tensors keep their dtype.
Optimizer moments are keyed by parameter name (`<param key>.exp_avg`), not by position, so
they survive a change of parameter order and can be carried to the MLX backend.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from shared.config import Config
from shared.model.checkpoint import inference_weights, write_checkpoint
from shared.model.checkpoint import load_trainer_state as load_trainer_state  # its old home
from shared.model.resume import check_resume_files
from shared.model.safetensors_io import TensorSpec
from shared.model.tensor_files import read_tensor_file, tensor_metadata

LAYOUT = "torch"


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of a module's parameters and buffers, by their keys."""
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], kind: str) -> None:
    save_file(tensors, str(path), metadata=tensor_metadata(LAYOUT, kind))


# torch dtypes by their safetensors names, for comparing a module with a file's header.
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                      torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
                      torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def tensor_specs(module: torch.nn.Module) -> dict[str, TensorSpec]:
    """What a checkpoint of `module` must hold: every state key with its shape and dtype."""
    return {k: TensorSpec(tuple(v.shape), SAFETENSORS_DTYPES.get(v.dtype, str(v.dtype)))
            for k, v in module.state_dict().items()}


def load_tensors(path: Path, expected_layout: str = LAYOUT,
                 expected: dict[str, TensorSpec] | None = None) -> dict[str, torch.Tensor]:
    """A tensor file's tensors, checked first (`shared.model.tensor_files.read_tensor_file`)."""
    return read_tensor_file(path, load_file, expected_layout, expected)


def load_into(module: torch.nn.Module, path: Path) -> None:
    """Load weights into `module`, refusing a mismatch with one message (not a torch dump)."""
    module.load_state_dict(load_tensors(path, expected=tensor_specs(module)))


def check_checkpoint(checkpoint: Path, model: torch.nn.Module) -> None:
    """Everything `--resume` reads, checked against `model` before any of it is loaded."""
    check_resume_files(checkpoint, tensor_specs(model), LAYOUT)


def optimizer_tensors(optimizer: torch.optim.Optimizer,
                      names: dict[torch.nn.Parameter, str]) -> dict[str, torch.Tensor]:
    out = {}
    for param, state in optimizer.state.items():
        for moment, value in state.items():
            if torch.is_tensor(value):
                out[f"{names[param]}.{moment}"] = value.detach().to("cpu").contiguous()
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           names: dict[torch.nn.Parameter, str]) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            prefix = names[param] + "."
            state = {k[len(prefix):]: _like(param, v) for k, v in tensors.items()
                     if k.startswith(prefix) and "." not in k[len(prefix):]}
            if state:
                if "step" in state and not (group.get("fused") or group.get("capturable")):
                    state["step"] = state["step"].to("cpu")  # AdamW's place for it, unfused
                optimizer.state[param] = state


def _like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A moment in its parameter's memory layout (channels-last conv weights included): the
    fused AdamW kernel walks parameter, gradient and moments as one flat buffer each."""
    if value.shape != param.shape:
        return value.to(param.device)
    return torch.empty_like(param, dtype=value.dtype).copy_(value)


def encode_bytes(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def decode_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, str]:
    """The random streams a resumed run continues: the trainer's generator, torch's global one
    (dropout) and, on CUDA, the device's; JSON-safe for trainer_state.json."""
    state = {"generator": encode_bytes(generator.get_state()),
             "torch_rng": encode_bytes(torch.get_rng_state())}
    if device.type == "cuda":
        state["cuda_rng"] = encode_bytes(torch.cuda.get_rng_state(device))
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device,
                      fresh_seed: int) -> None:
    """Put back what `rng_state` saved. A checkpoint converted from MLX carries none: the
    streams then start from `fresh_seed`."""
    if "generator" in state:
        generator.set_state(decode_bytes(state["generator"]))
        torch.set_rng_state(decode_bytes(state["torch_rng"]))
    else:
        generator.manual_seed(fresh_seed)
        torch.manual_seed(fresh_seed)
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(decode_bytes(state["cuda_rng"]), device)


def save_checkpoint(run_dir: Path, step: int, config: Config, model: torch.nn.Module,
                    ema: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    trainer_state: dict[str, Any] | None = None,
                    keep_last: int | None = None) -> Path:
    """Write `run_dir/checkpoints/step_N` atomically and point `latest` at it."""
    def moments() -> dict[str, torch.Tensor]:
        return optimizer_tensors(optimizer, {p: n for n, p in model.named_parameters()})

    return write_checkpoint(
        run_dir, step, config, save_tensors, lambda: state_tensors(model),
        ema=(lambda: state_tensors(ema)) if ema is not None else None,
        optimizer=moments if optimizer is not None else None,
        trainer_state=trainer_state, keep_last=keep_last)


def load_checkpoint(checkpoint: Path, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> None:
    """Load what `save_checkpoint` wrote into a training run's model, EMA and optimizer."""
    load_into(model, checkpoint / "model.safetensors")
    load_into(ema, checkpoint / "ema.safetensors")
    load_optimizer_tensors(optimizer, load_tensors(checkpoint / "optimizer.safetensors"),
                           {p: n for n, p in model.named_parameters()})


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu",
               use_ema: bool = True) -> tuple[Config, torch.nn.Module, Path]:
    """Build the UNet a checkpoint's config describes and load its (EMA) weights for inference."""
    from t2s_torch.device import prefers_channels_last
    from t2s_torch.unet import UNet3D

    config, weights, path = inference_weights(checkpoint, use_ema)
    model = UNet3D(config.model)
    load_into(model, weights)
    model = model.to(device).use_channels_last(prefers_channels_last(device))
    return config, model.eval(), path
