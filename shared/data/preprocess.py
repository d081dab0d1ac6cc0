"""The training transform of a decoded clip, as pure numpy functions.

Every clip is resampled to `num_frames`, centre-cropped to a square and resized to `image_size`
(`preprocess_clip`), once, before it is cached (`shared.data.decode_cache`); what had to be
papered over on the way (one frame, grayscale, too small) is `repair_notes`'. The reference
clips of evaluation go through the same functions, so they are compared at the generated size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Bump when preprocessing changes in a way that invalidates every cached clip.
PREPROCESS_VERSION = 1


def resample_frames(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """Uniformly pick `num_frames` across a long clip; pad a short one with its last frame."""
    n = len(frames)
    if n >= num_frames:
        index = np.round(np.linspace(0, n - 1, num_frames)).astype(int)
    else:
        index = np.concatenate([np.arange(n), np.full(num_frames - n, n - 1)])
    return frames[index]


def center_crop_square(frames: np.ndarray) -> np.ndarray:
    h, w = frames.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return frames[:, top:top + side, left:left + side]


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bicubic resize of square frames to `size` x `size`."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC))
                     for f in frames])


def preprocess_clip(frames: np.ndarray, num_frames: int, image_size: int) -> np.ndarray:
    """Decoded RGB uint8 (F', H, W, 3) -> training clip uint8 (num_frames, S, S, 3)."""
    return resize_frames(center_crop_square(resample_frames(frames, num_frames)), image_size)


def to_model_range(clip: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1], the range the diffusion model works in (the numpy
    reference of what each backend does on its device)."""
    out = np.multiply(clip, np.float32(1 / 127.5), dtype=np.float32)
    out -= np.float32(1.0)
    return out


def repair_notes(frames: np.ndarray, num_frames: int, image_size: int) -> list[str]:
    """What preprocessing had to paper over for this decoded clip (empty for a clean clip)."""
    notes = []
    if len(frames) < num_frames:
        notes.append(f"only {len(frames)} frame(s): padded to {num_frames} by repeating the last")
    if np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 1],
                                                                           frames[..., 2]):
        notes.append("grayscale: converted to RGB")
    if min(frames.shape[1:3]) < image_size:
        h, w = frames.shape[1:3]
        notes.append(f"{w}x{h} is smaller than image_size {image_size}: upscaled")
    return notes
