"""The pretrained Stable Diffusion 2.x parts, found locally or in the Hugging Face cache.

A base model is a diffusers Stable Diffusion folder (`unet/`, `vae/`, `text_encoder/`,
`tokenizer/`, `scheduler/`), given as a local path or a Hub name. A Hub name is resolved to a
folder first (only the files this project reads: configs, the fp32 safetensors, the tokenizer),
so every component then loads from one local folder by the same code path, whether it came from
the Hub, the cache, or a copy on disk. With HF_HUB_OFFLINE set, or when the download fails, the
cache alone is used, and a miss ends in `BaseModelNotFound`, which says how to get the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from t2s_torch.tav.config import DEFAULT_BASE_MODEL

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# What a download fetches: the fp32 safetensors and configs, not the .ckpt / fp16 / .bin copies.
ALLOW_PATTERNS = [
    "model_index.json", "scheduler/*.json", "tokenizer/*", "text_encoder/config.json",
    "text_encoder/model.safetensors", "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]


class BaseModelNotFound(FileNotFoundError):
    """The base model is neither a usable folder nor in the cache; the message says what to do."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, read now (the library reads it at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
            or Path(name).expanduser().exists())


def _how_to_get(name: str) -> str:
    return (f"download it on a connected machine (`hf download {name}`, or with older "
            f"huggingface_hub `huggingface-cli download {name}`) and copy the Hugging Face "
            "cache (~/.cache/huggingface) here, or pass --pretrained_model_name_or_path "
            "/path/to/folder (a diffusers Stable Diffusion folder with "
            f"{', '.join(s + '/' for s in SUBFOLDERS)})")


def check_model_folder(folder: Path, name: str) -> Path:
    missing = [s for s in SUBFOLDERS if not (folder / s).is_dir()]
    if missing:
        raise BaseModelNotFound(
            f"{name}: {folder} is not a complete diffusers Stable Diffusion folder (no "
            f"{', '.join(s + '/' for s in missing)}); pass the folder that holds "
            f"{', '.join(s + '/' for s in SUBFOLDERS)}")
    return folder


def resolve_base_model(name_or_path: str) -> Path:
    """The local folder of a base model given as a path or a Hub name (downloading if allowed)."""
    name = str(name_or_path)
    if _looks_like_path(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise BaseModelNotFound(f"{name}: no such folder; pass --pretrained_model_name_or_"
                                    "path a diffusers Stable Diffusion folder or a Hub name "
                                    f"such as {DEFAULT_BASE_MODEL}")
        return check_model_folder(folder, name)

    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        folder = snapshot_download(name, allow_patterns=ALLOW_PATTERNS, local_files_only=offline)
    except Exception as first:  # network, auth and cache errors differ by version
        if offline:
            raise BaseModelNotFound(
                f"{name} is not in the local Hugging Face cache and there is no internet "
                f"(HF_HUB_OFFLINE is set): {_how_to_get(name)}") from None
        try:
            folder = snapshot_download(name, allow_patterns=ALLOW_PATTERNS,
                                       local_files_only=True)
        except Exception:
            why = str(first).strip().splitlines()[0] if str(first).strip() else \
                type(first).__name__
            raise BaseModelNotFound(
                f"{name} is not in the local Hugging Face cache and could not be downloaded "
                f"({why}): {_how_to_get(name)}") from None
    return check_model_folder(Path(folder), name)


@dataclass
class BaseModel:
    """Stable Diffusion's parts as diffusers / transformers load them (fp32, on the CPU)."""

    path: Path
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler

    @property
    def scheduler_config(self) -> dict:
        """The folder's scheduler settings as saved (SD ships a PNDM config): DDIM and DDIM
        inversion are built from these, so they keep `set_alpha_to_one`, `steps_offset`, ..."""
        return dict(DDPMScheduler.load_config(str(self.path), subfolder="scheduler"))


def load_unet(folder: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet",
                                                local_files_only=True)


def load_base_model(name_or_path: str) -> BaseModel:
    """Load every part of the base model from its (resolved) local folder."""
    folder = resolve_base_model(name_or_path)
    path = str(folder)
    return BaseModel(
        path=folder,
        unet=load_unet(folder),
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True),
        text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder",
                                                   local_files_only=True),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer",
                                                local_files_only=True),
        noise_scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler",
                                                      local_files_only=True),
    )


def cast_frozen(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Frozen floating-point weights to `dtype` (the mixed-precision one); trainable weights
    stay fp32, straight from the checkpoint rather than rounded through `dtype` and back."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point() and not tensor.requires_grad:
            tensor.data = tensor.data.to(dtype)
