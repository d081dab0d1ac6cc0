"""A fine-tuned Tune-A-Video model on disk, and loading it back into a pipeline.

A model folder (the run's `--output_dir`, or one of its `checkpoints/step_N`) holds::

    config.json            what rebuilds the UNet: base model, trainable modules, frames, size
    tav_unet.safetensors   the trainable weights (default) or the whole inflated UNet (--save_full)

Only the trainable weights are needed because everything else is the base model's, unchanged:
a few hundred MB instead of 3.5 GB for SD 2.1. Loading rebuilds the base UNet, inflates it the
same way (the new `attn_temp` layers get their keys from the file) and loads the tensors over it,
refusing any key the inflated UNet does not have.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.io_atomic import atomic_path, write_text_atomic
from shared.model.checkpoint import CONFIG_FILE, CheckpointError, load_json, resolve_checkpoint
from shared.model.safetensors_io import TensorSpec
from t2s_torch.checkpoint import SAFETENSORS_DTYPES, load_tensors, save_tensors

WEIGHTS_FILE = "tav_unet.safetensors"
FORMAT = "text2sign-tav"
VERSION = 1


@dataclass
class TAVModelConfig:
    """What `sample-tav` needs to rebuild a fine-tuned model, saved as config.json."""

    pretrained_model_name_or_path: str
    num_frames: int
    height: int
    width: int
    trainable_modules: list[str]
    prediction_type: str
    weights: str = "trainable"  # "trainable" | "full"
    step: int = 0
    training: dict[str, Any] = field(default_factory=dict)  # the run's TAVConfig, for the record
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> TAVModelConfig:
        data = load_json(path)
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a Tune-A-Video model config (format "
                                  f"{data.get('format')!r}); pass a `finetune-tav` output folder")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def unet_tensors(unet: nn.Module, full: bool = False) -> dict[str, torch.Tensor]:
    """The trainable parameters (those with requires_grad) or, with `full`, the whole state."""
    if full:
        items = unet.state_dict().items()
    else:
        items = ((n, p) for n, p in unet.named_parameters() if p.requires_grad)
    return {k: v.detach().to("cpu").contiguous() for k, v in items}


def write_model(folder: Path, unet: nn.Module, config: TAVModelConfig) -> Path:
    """Write config.json and the weights into `folder`, each through a temporary + rename."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_tensors(tmp, unet_tensors(unet, config.weights == "full"), "tav_unet")
    write_text_atomic(folder / CONFIG_FILE, config.to_json())
    return folder


MODEL_FORMS = ("a `finetune-tav` --output_dir, its checkpoints/ folder, a checkpoints/step_N "
               "folder or checkpoints/latest")


def find_model(path: str | Path) -> Path:
    """A model folder from a run folder (its final model, else its latest checkpoint), a
    checkpoints/ folder, a step_N folder, the `latest` pointer file, or a model folder itself:
    `shared.model.checkpoint.resolve_checkpoint`, looking for this format's weights file."""
    return resolve_checkpoint(path, weights=WEIGHTS_FILE, what="Tune-A-Video model",
                              forms=MODEL_FORMS)


def tensor_specs(unet: nn.Module, full: bool = False) -> dict[str, TensorSpec]:
    """What a saved file of `unet` holds (see `unet_tensors`), for checking it before loading."""
    items = unet.state_dict().items() if full else \
        ((n, p) for n, p in unet.named_parameters() if p.requires_grad)
    return {k: TensorSpec(tuple(v.shape), SAFETENSORS_DTYPES.get(v.dtype, str(v.dtype)))
            for k, v in items}


def load_weights_into(unet: nn.Module, path: Path, full: bool = False) -> None:
    """Load saved tensors over an inflated UNet (the inner 2D module, as saved)."""
    tensors = load_tensors(path)
    state = unet.state_dict()
    unexpected = sorted(set(tensors) - set(state))
    missing = sorted(set(state) - set(tensors)) if full else []
    if unexpected or missing:
        what = [f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})"] * bool(
            unexpected) + [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] * bool(
            missing)
        raise CheckpointError(f"{path}: weights do not fit the inflated base UNet: "
                              f"{'; '.join(what)}; is --pretrained_model_name_or_path the model "
                              "it was fine-tuned from?")
    for key, value in tensors.items():
        if value.shape != state[key].shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)} but the base "
                                  f"UNet's is {tuple(state[key].shape)}; is "
                                  "--pretrained_model_name_or_path the model it was fine-tuned "
                                  "from?")
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value)
