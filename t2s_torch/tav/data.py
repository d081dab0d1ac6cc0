"""Sign clips for Tune-A-Video: the shared loader's clips at --num_frames x --height x --width.

The shared loader (`shared.data.dataset`) decodes, resamples to `num_frames`, centre-crops to a
square and caches each clip once. Here its square side is max(height, width) and a centre crop takes
(height, width) out of it, so a non-square size keeps the aspect ratio of the pixels (no
stretching) and the cache is shared by every run of that size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.config import DataConfig
from shared.data.dataset import ClipDataset
from shared.data.preprocess import preprocess_clip
from shared.data.video import read_video


def data_config(data_root: str, num_frames: int, height: int, width: int, seed: int = 0,
                strict: bool = False) -> DataConfig:
    """The shared loader's settings for clips of (num_frames, height, width); no split."""
    return DataConfig(data_dir=str(data_root), num_frames=num_frames,
                      image_size=max(height, width), val_fraction=0.0, seed=seed, strict=strict)


def load_dataset(data_root: str, num_frames: int, height: int, width: int, seed: int = 0,
                 strict: bool = False, progress: bool = True) -> ClipDataset:
    return ClipDataset(data_config(data_root, num_frames, height, width, seed, strict),
                       split="all", progress=progress)


def center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop (..., S, S, 3) frames to (..., height, width, 3)."""
    h, w = frames.shape[-3:-1]
    top, left = (h - height) // 2, (w - width) // 2
    return frames[..., top:top + height, left:left + width, :]


def load_clip(path: str | Path, num_frames: int, height: int, width: int) -> np.ndarray:
    """One clip file as uint8 (num_frames, height, width, 3), preprocessed like training data."""
    frames, _ = read_video(path)
    square = preprocess_clip(frames, num_frames, max(height, width))
    return np.ascontiguousarray(center_crop(square, height, width))


def to_pixels(video: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> (B*F, 3, H, W) in [-1, 1]: frames as a batch of images."""
    x = torch.from_numpy(np.ascontiguousarray(video)).to(device, non_blocking=True)
    b, f, h, w, c = x.shape
    x = x.reshape(b * f, h, w, c).permute(0, 3, 1, 2)
    return x.to(dtype).mul_(1 / 127.5).sub_(1.0)
