"""`TAVConfig`: every setting of a Tune-A-Video fine-tuning run, in one place.

Field names are upstream Tune-A-Video's (and diffusers' training scripts') argument names, so a
command line from there reads the same here; the CLI only parses into this dataclass. Pure
Python on purpose: the CLI builds its options from these defaults without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from shared.config import ConfigError

DEFAULT_BASE_MODEL = "stabilityai/stable-diffusion-2-1-base"
DEFAULT_TRAINABLE_MODULES = ("attn1.to_q", "attn2.to_q", "attn_temp")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TAVConfig:
    pretrained_model_name_or_path: str = DEFAULT_BASE_MODEL
    data_root: str = "data/toy"
    output_dir: str = "runs/tav"
    # TensorBoard events and validation GIFs (<logging_dir>/samples); None: <output_dir>/logs.
    logging_dir: str | None = None
    train_batch_size: int = 1
    num_frames: int = 16
    width: int = 512
    height: int = 512
    learning_rate: float = 3e-5
    max_train_steps: int = 500
    # Validate (DDIM samples -> GIF grid + TensorBoard) every N steps and at the end; 0: never.
    validation_steps: int = 100
    # Prompts to validate on; empty: up to four distinct training captions.
    validation_prompts: tuple[str, ...] = ()
    validation_num_inference_steps: int = 50
    validation_guidance_scale: float = 7.5
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    seed: int = 0
    # "latest" or a checkpoints/step_N folder of this run.
    resume_from_checkpoint: str | None = None
    trainable_modules: tuple[str, ...] = DEFAULT_TRAINABLE_MODULES
    checkpointing_steps: int = 100
    checkpoints_total_limit: int | None = 3
    gradient_checkpointing: bool = False
    # Save the whole inflated UNet instead of the trainable weights alone.
    save_full: bool = False
    # Captions replaced by "" with this probability, so classifier-free guidance works.
    caption_dropout: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    # Any bad clip in data_root is an error instead of a warning.
    strict: bool = False

    @property
    def logs(self) -> str:
        return self.logging_dir or f"{self.output_dir}/logs"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["validation_prompts"] = list(self.validation_prompts)
        data["trainable_modules"] = list(self.trainable_modules)
        return data

    def validate(self) -> TAVConfig:
        """Catch impossible settings before any model is loaded; returns self."""
        positive = ("train_batch_size", "num_frames", "width", "height", "max_train_steps",
                    "gradient_accumulation_steps", "validation_num_inference_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, not {getattr(self, name)}")
        for name in ("validation_steps", "checkpointing_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be 0 (off) or positive")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning_rate must be positive, not {self.learning_rate}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"--caption_dropout must be in [0, 1), not {self.caption_dropout}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"--mixed_precision must be one of {', '.join(MIXED_PRECISION)}")
        if self.height % 8 or self.width % 8:
            raise ConfigError(f"--height and --width must be multiples of 8 (64 for Stable "
                              f"Diffusion's UNet), not {self.height} x {self.width}")
        if not [m for m in self.trainable_modules if m.strip()]:
            raise ConfigError("--trainable_modules is empty; e.g. "
                              f"{' '.join(DEFAULT_TRAINABLE_MODULES)}")
        return self
