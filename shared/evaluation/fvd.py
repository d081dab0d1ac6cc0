"""Fréchet Video Distance: the numpy half (input preparation, statistics, the distance).

FVD compares two sets of clips through the features of an I3D action-recognition network:
each set is summarised by the mean and covariance of its features, and the score is the
Fréchet distance between the two Gaussians. The network itself lives in each backend
(`t2s_torch.i3d`, `t2s_mlx.i3d`, over the shared `i3d_plan`); this module only sees its features,
so it stays framework-free.

FVD figures are only comparable under one protocol (the network's weights, the number of clips,
frames and resolution), so every score carries its `FVDProtocol`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

# The resolution the Kinetics I3D was trained at and FVD is computed at.
I3D_SIZE = 224


class FeatureExtractor(Protocol):
    """What a backend's `load_i3d(path)` returns."""

    sha256: str
    feature_name: str

    def features(self, clips: np.ndarray) -> np.ndarray:
        """float32 (B, F, S, S, 3) in [-1, 1] -> float64 (B, D)."""
        ...


@dataclass(frozen=True)
class FVDProtocol:
    """What an FVD number depends on; written next to it."""

    num_generated: int
    num_reference: int
    frames: int
    resolution: int
    model_file: str
    model_sha256: str
    features: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def i3d_input(clip: np.ndarray, size: int = I3D_SIZE) -> np.ndarray:
    """uint8 (F, H, W, 3) -> float32 (F, size, size, 3) in [-1, 1], bilinear resize: the input
    the Kinetics I3D expects."""
    frames = [np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR))
              for f in clip]
    return np.stack(frames).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def clip_features(extractor: FeatureExtractor, clips: list[np.ndarray],
                  size: int = I3D_SIZE, batch_size: int = 4) -> np.ndarray:
    """I3D features of uint8 clips that share one shape, in batches (memory stays bounded)."""
    out = []
    for start in range(0, len(clips), batch_size):
        batch = np.stack([i3d_input(c, size) for c in clips[start:start + batch_size]])
        out.append(np.asarray(extractor.features(batch), dtype=np.float64))
    return np.concatenate(out)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"FVD needs at least 2 clips per set, got features {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                     cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)).

    tr((C1 C2)^(1/2)) is computed as tr((S C2 S)^(1/2)) with S = C1^(1/2): the same eigenvalues,
    but a symmetric matrix, so the square root is real and stable even for the rank-deficient
    covariances of a few hundred clips.
    """
    s1 = _sqrt_psd(cov1)
    middle = s1 @ cov2 @ s1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_covmean)


def fvd(generated: np.ndarray, reference: np.ndarray) -> float:
    """FVD between two sets of I3D features (N, D) and (M, D)."""
    return frechet_distance(*gaussian_stats(generated), *gaussian_stats(reference))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
