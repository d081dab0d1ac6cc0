"""FVD's I3D for `t2s-mlx eval --i3d`: there is no MLX port of the network, so the PyTorch one
(`t2s_torch.i3d`) is used when torch is installed; without it, one line names the extra.

Only FVD needs this; every other metric of `eval` runs without torch.
"""

from __future__ import annotations

from pathlib import Path

from shared.data.dataset import DataError


def load_i3d(path: str | Path):
    """The FVD feature network from a local checkpoint (see `t2s_torch.i3d.load_i3d`)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise DataError('FVD runs its I3D network on PyTorch: pip install ".[torch]" (the other '
                        "metrics need no torch; drop --i3d to skip FVD)") from e
    from t2s_torch.i3d import load_i3d as torch_load_i3d

    return torch_load_i3d(path)
