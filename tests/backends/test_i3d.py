"""t2s_torch.i3d and t2s_mlx.i3d, one suite over both backends: FVD's I3D loads a checkpoint of
the shared plan (`shared.evaluation.i3d_plan.parameter_shapes`, written here with numpy, so the
MLX run needs no torch), turns clips into float64 features one clip at a time as in a batch, and
refuses a file that is not an I3D in one line that says what to pass. That the two backends give
the same features from the same torch-saved file: tests/parity/test_i3d_parity.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from shared.data.clips import DataError
from shared.evaluation.fvd import file_sha256
from shared.evaluation.i3d_plan import parameter_shapes

NUM_CLASSES, WIDTH = 8, 0.125  # the whole architecture, an eighth of its channels


def random_state(seed: int = 0) -> dict[str, np.ndarray]:
    """A checkpoint of the plan whose features depend on the clip: He-initialised convs (the
    signal keeps its scale through the ReLUs) and BatchNorm statistics near 0 and 1."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in parameter_shapes(NUM_CLASSES, WIDTH).items():
        if name.endswith(".weight") and len(shape) == 5:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0, np.sqrt(2 / fan_in), shape)
        elif name.endswith("running_var") or name.endswith("bn.weight"):
            value = rng.uniform(0.8, 1.2, shape)
        else:  # BatchNorm's bias and mean, the logits' bias
            value = rng.uniform(-0.1, 0.1, shape)
        state[name] = value.astype(np.float32)
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("i3d") / "tiny_i3d.safetensors"
    safetensors.numpy.save_file(random_state(), str(path))
    return path


def clips(n: int, frames: int = 8, size: int = 32) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (n, frames, size, size, 3)).astype(np.float32)


def test_a_checkpoint_of_the_plan_gives_features_clip_by_clip(backend, checkpoint):
    extractor = backend.module("i3d").load_i3d(checkpoint)
    assert extractor.sha256 == file_sha256(checkpoint)
    assert extractor.feature_name == f"i3d logits ({NUM_CLASSES}), global average pooled"
    batch = clips(3)
    batch[1] = 0.5 * batch[1] - 0.3  # a dimmer, darker clip
    features = extractor.features(batch)
    assert features.shape == (3, NUM_CLASSES) and features.dtype == np.float64
    assert np.isfinite(features).all()
    spread = np.abs(features - features.mean(axis=0)).max()
    assert spread > 1e-2 * np.abs(features).max()  # the clip matters, not only the biases
    alone = np.concatenate([extractor.features(batch[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(alone, features, rtol=1e-5, atol=1e-5 * np.abs(features).max())


def test_a_wrong_i3d_file_is_refused_with_the_fix(backend, tmp_path):
    load_i3d = backend.module("i3d").load_i3d
    good = random_state()
    wrong_shape = dict(good)
    wrong_shape["Mixed_4c.b1b.conv3d.weight"] = np.zeros((3, 3, 3, 3, 3), np.float32)
    files = {
        "resnet.safetensors": {"conv1.weight": np.zeros((4, 3, 3, 3), np.float32)},
        "missing.safetensors": {k: v for k, v in good.items() if k != "Mixed_5c.b0.bn.bias"},
        "extra.safetensors": {**good, "fc.weight": np.zeros((2, 2), np.float32)},
        "shape.safetensors": wrong_shape,
    }
    for name, tensors in files.items():
        safetensors.numpy.save_file(tensors, str(tmp_path / name))
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    (tmp_path / "notes.safetensors").write_text("not a checkpoint either")
    reasons = {"resnet.safetensors": "missing key 'Conv3d_1a_7x7.conv3d.weight'",
               "missing.safetensors": "keys differ", "extra.safetensors": "keys differ",
               "shape.safetensors": "shapes differ"}
    for path in sorted(tmp_path.iterdir()):
        with pytest.raises(DataError) as refused:
            load_i3d(path)
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"{path}: not an I3D checkpoint (")
        assert reasons.get(path.name, "") in message
        assert message.endswith("as .pt or .safetensors")
        assert "Conv3d_1a_7x7.conv3d.weight" in message  # the fix names what to pass
    with pytest.raises(DataError, match="no such I3D checkpoint"):
        load_i3d(tmp_path / "absent.pt")
