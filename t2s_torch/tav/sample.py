"""Generating with a fine-tuned Tune-A-Video model: `t2s-torch sample-tav`.

`load_finetuned` rebuilds the pipeline from a `finetune-tav` output (base model + the saved
weights); `sample_to_folder` writes one GIF per sample with its caption and a grid, optionally
starting every sample from the DDIM inversion of a reference clip (Tune-A-Video's editing mode:
the motion and layout of the clip, the content of the prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from shared.data.video import write_sample_folder
from t2s_torch.device import select_device
from t2s_torch.tav.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    TAVModelConfig,
    find_model,
    load_weights_into,
)
from t2s_torch.tav.data import load_clip
from t2s_torch.tav.inflate import InflatedUNet
from t2s_torch.tav.models import cast_frozen, load_base_model
from t2s_torch.tav.pipeline import TAVPipeline

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_finetuned(model: str | Path, pretrained_model_name_or_path: str | None = None,
                   device: str | torch.device | None = None, precision: str = "fp32"
                   ) -> tuple[TAVPipeline, TAVModelConfig]:
    """The pipeline of a fine-tuned model: its base model (or the one given, e.g. a local copy
    on another machine), inflated, with the saved weights loaded over it; in eval mode."""
    folder = find_model(model)
    config = TAVModelConfig.load(folder / CONFIG_FILE)
    base = load_base_model(pretrained_model_name_or_path or config.pretrained_model_name_or_path)
    unet = InflatedUNet(base.unet)
    load_weights_into(unet.unet, folder / WEIGHTS_FILE, full=config.weights == "full")
    dtype, device = DTYPES[precision], select_device(device)
    for part in (unet, base.vae, base.text_encoder):
        cast_frozen(part.requires_grad_(False).to(device).eval(), dtype)
    return TAVPipeline(unet, base.vae, base.text_encoder, base.tokenizer,
                       base.scheduler_config), config


@dataclass
class SampleSettings:
    num_frames: int | None = None  # None: as trained
    height: int | None = None
    width: int | None = None
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0
    eta: float = 0.0
    num_samples: int = 1
    invert: str | None = None  # a reference clip to start from (DDIM inversion)
    invert_prompt: str = ""


def sample_to_folder(pipeline: TAVPipeline, config: TAVModelConfig, prompts: list[str],
                     out_dir: str | Path, settings: SampleSettings,
                     progress: bool = True) -> list[Path]:
    """GIFs (+ .txt captions) and grid.gif for every prompt x sample; one seed per sample."""
    s = settings
    height, width = s.height or config.height, s.width or config.width
    num_frames = s.num_frames or config.num_frames
    start = None
    if s.invert:
        clip = load_clip(s.invert, num_frames, height, width)
        start = pipeline.invert(pipeline.encode_video(clip[None]), s.invert_prompt, s.steps,
                                progress=progress)
    captions = [p for p in prompts for _ in range(s.num_samples)]
    videos = []
    for i, caption in enumerate(captions):
        seed = s.seed + i % s.num_samples
        videos.extend(pipeline.generate([caption], num_frames, height, width, steps=s.steps,
                                        guidance=s.guidance, seed=seed, eta=s.eta,
                                        latents=start, progress=progress))
    return write_sample_folder(out_dir, videos, captions)
