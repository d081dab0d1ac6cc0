"""`t2s-demo`: the README's main job on the backend that suits this machine."""

from __future__ import annotations

import importlib.util
import platform
import sys

from shared.app.backend import Backend
from shared.app.cli import make_group


def default_backend() -> Backend:
    """MLX on Apple Silicon, PyTorch elsewhere (MLX's Linux CPU build is for correctness)."""
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    if apple and importlib.util.find_spec("mlx") is not None:
        from t2s_mlx.backend import BACKEND
    else:
        from t2s_torch.backend import BACKEND
    return BACKEND


def demo_main() -> None:
    """`t2s-demo [OPTIONS]`: `demo` of the default backend's tool, with the same options."""
    backend = default_backend()
    tool = make_group("t2s-demo", f"text2sign demo on {backend.name}", backend)
    tool(["demo", *sys.argv[1:]], prog_name="t2s-demo")
