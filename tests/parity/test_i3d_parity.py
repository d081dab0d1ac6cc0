"""The MLX I3D computes the torch I3D's FVD features from the same local file, and needs no torch.

A small I3D (the whole architecture at an eighth of its channels, 8 classes) is built in torch
with random weights and BatchNorm statistics measured on random clips (so every layer carries
signal and the features depend on the clip), and saved the ways real weights come: a
`torch.save` state dict like pytorch-i3d's `rgb_imagenet.pt` (zip and legacy formats) and a
`.safetensors` file. `t2s_torch.i3d.load_i3d` and `t2s_mlx.i3d.load_i3d` each load the file by
path; their features of the same clips must agree within float32 noise. Then the MLX side runs
in a process where `import torch` fails.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")

from t2s_mlx.i3d import load_i3d as mlx_load_i3d  # noqa: E402
from t2s_torch.i3d import InceptionI3d  # noqa: E402
from t2s_torch.i3d import load_i3d as torch_load_i3d  # noqa: E402

# torch on one thread: its OpenMP workers and MLX's threads fight over the cores in one
# process (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
# float32 noise of two convolution orders through ~20 layers, against features of order 100
RELATIVE_TOLERANCE = 1e-4
# file name -> torch.save's options (None: safetensors)
SAVES = {"i3d_zip.pt": {}, "i3d_legacy.pt": {"_use_new_zipfile_serialization": False},
         "i3d.safetensors": None}


@pytest.fixture(scope="module")
def i3d_files(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=8, width=0.125)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    with torch.no_grad():
        for m in norms:  # statistics of the activations themselves: one pass in train mode
            m.reset_running_stats()
            m.momentum = None
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
        model.train()(torch.rand(4, 3, 8, 32, 32) * 2 - 1)
    state = model.state_dict()
    folder = tmp_path_factory.mktemp("i3d")
    files = {}
    for name, options in SAVES.items():
        files[name] = folder / name
        if options is None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(files[name]))
        else:
            torch.save(state, files[name], **options)
    return files


def clips() -> np.ndarray:
    """Five clips that differ in kind: a moving wave, noise, a ramp, two flat greys; 7 frames of
    36 x 36, sizes that leave odd remainders through the strides ('SAME' padding both ends)."""
    f, s = 7, 36
    t, y, x = np.arange(f)[:, None, None, None], np.arange(s)[:, None, None], np.arange(s)[:, None]
    wave = 0.9 * np.sin(0.4 * x + 0.3 * y - 0.8 * t + np.array([0, 2, 4]))
    noise = np.random.default_rng(0).uniform(-1, 1, (f, s, s, 3))
    ramp = np.broadcast_to(np.linspace(-1, 1, s)[:, None] * np.array([1, -0.5, 0.2]), (f, s, s, 3))
    flat = [np.full((f, s, s, 3), v) for v in (-0.8, 0.6)]
    return np.stack([wave, noise, ramp, *flat]).astype(np.float32)


@pytest.mark.parametrize("fmt", SAVES)
def test_mlx_features_match_torch_from_the_same_file(i3d_files, fmt):
    path = i3d_files[fmt]
    reference, port = torch_load_i3d(path), mlx_load_i3d(path)
    assert (port.sha256, port.feature_name) == (reference.sha256, reference.feature_name)
    x = clips()
    want, got = reference.features(x), port.features(x)
    assert got.shape == want.shape == (5, 8) and got.dtype == np.float64
    scale = np.abs(want).max()
    spread = np.abs(want - want.mean(axis=0)).max(axis=1)
    assert spread.min() > 0.05 * scale  # every clip's features are its own
    assert np.abs(got - want).max() <= RELATIVE_TOLERANCE * scale


def test_mlx_i3d_runs_without_torch(i3d_files, tmp_path):
    x = clips()[:2]
    np.save(tmp_path / "clips.npy", x)
    want = torch_load_i3d(i3d_files["i3d_zip.pt"]).features(x)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # `import torch` raises ImportError from here on
        import numpy as np
        from t2s_mlx.backend import BACKEND
        x = np.load({str(tmp_path / "clips.npy")!r})
        for path in {[str(p) for p in i3d_files.values()]!r}:
            np.save(path + ".features.npy", BACKEND.load_i3d(path).features(x))
        print(sorted(m for m in sys.modules if m.partition(".")[0] == "torch"))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['torch']"  # only the blocked entry itself
    for path in i3d_files.values():
        got = np.load(f"{path}.features.npy")
        assert np.abs(got - want).max() <= RELATIVE_TOLERANCE * np.abs(want).max(), path.name
