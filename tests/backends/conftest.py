"""The `backend` fixture for suites that run once per backend (t2s_torch and t2s_mlx), in the
style of diffusers' shared model tests: a test takes `backend`, a small adapter that supplies
what differs between the backends (the module under test, arrays to and from numpy, dtypes,
the video layout, random generators), and is collected as `test_x[torch]` and `test_x[mlx]`.

`backend.device` is where the backend's device-taking tests run: torch's is the session's
`--device` (tests/conftest.py; the CPU by default), MLX's the CPU.

A backend whose library is missing is skipped, the way tests/torch and tests/mlx skip
(pytest.importorskip). `@pytest.mark.backends("mlx")` runs a test on the named backends only;
a test that parametrizes "backend" itself (with indirect=["backend"]) pairs each backend with
its own values.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import device_choice
import numpy as np
import pytest

BACKENDS = ("torch", "mlx")


class Backend:
    """What a shared test needs to know about one backend."""

    name: str
    channels_last: bool
    device: str

    def __repr__(self) -> str:
        return f"<backend {self.name}>"

    def module(self, name: str) -> ModuleType:
        """t2s_<backend>.<name>, e.g. backend.module("diffusion")."""
        return importlib.import_module(f"t2s_{self.name}.{name}")

    def video_shape(self, b: int, c: int, f: int, h: int, w: int) -> tuple[int, ...]:
        """The backend's layout of a video batch: (B, C, F, H, W) or channels-last."""
        return (b, f, h, w, c) if self.channels_last else (b, c, f, h, w)

    @property
    def frame_axis(self) -> int:
        """The axis of F in a video batch."""
        return 1 if self.channels_last else 2

    def to_device(self, x):
        """`x` where a model built on `self.device` can take it (MLX: as it is)."""
        return x


class TorchBackend(Backend):
    name = "torch"
    channels_last = False

    def __init__(self) -> None:
        import torch

        self.xp = torch
        self.nn = torch.nn
        self.float32, self.bfloat16 = torch.float32, torch.bfloat16
        self.index_dtype = torch.int64  # what randint and integer masks give
        self.np_index_dtype = np.int64
        self.device = device_choice.chosen()

    def to_device(self, x):
        return x.to(self.device)

    def array(self, a, dtype=None):
        out = self.xp.from_numpy(np.ascontiguousarray(a))
        return out if dtype is None else out.to(dtype)

    def numpy(self, x) -> np.ndarray:
        x = x.detach().cpu()
        return (x.float() if x.dtype == self.bfloat16 else x).numpy()

    def astype(self, x, dtype):
        return x.to(dtype)

    def generator(self, seed: int):
        return self.xp.Generator().manual_seed(seed)


class MLXBackend(Backend):
    name = "mlx"
    channels_last = True

    def __init__(self) -> None:
        import mlx.core as mx
        import mlx.nn as nn

        self.xp = mx
        self.nn = nn
        self.float32, self.bfloat16 = mx.float32, mx.bfloat16
        self.index_dtype = mx.int32  # what randint and integer masks give
        self.np_index_dtype = np.int32
        self.device = "cpu"

    def array(self, a, dtype=None):
        out = self.xp.array(np.asarray(a))
        return out if dtype is None else out.astype(dtype)

    def numpy(self, x) -> np.ndarray:
        return np.array(x.astype(self.float32) if x.dtype == self.bfloat16 else x)

    def astype(self, x, dtype):
        return x.astype(dtype)

    def generator(self, seed: int):
        return self.xp.random.key(seed)


_REQUIRES = {"torch": ("torch", TorchBackend), "mlx": ("mlx.core", MLXBackend)}
_LOADED: dict[str, Backend] = {}


def load_backend(name: str) -> Backend:
    """The adapter for `name`; skips the test when its library is not installed."""
    if name not in _LOADED:
        library, cls = _REQUIRES[name]
        pytest.importorskip(library)
        _LOADED[name] = cls()
    return _LOADED[name]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "backends(*names): run a tests/backends test only on these backends")


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "backend" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return  # the test pairs backends with its own values (indirect=["backend"])
    marker = metafunc.definition.get_closest_marker("backends")
    names = list(marker.args) if marker else list(BACKENDS)
    unknown = set(names) - set(BACKENDS)
    assert not unknown, f"unknown backends {unknown}"
    metafunc.parametrize("backend", names, ids=names, indirect=True)


@pytest.fixture(scope="module")
def backend(request) -> Backend:
    """Module-scoped (the adapter holds no state), so module-scoped fixtures may build on it."""
    return load_backend(request.param)
