"""The TensorBoard logger, read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)
from tensorboard.util import tensor_util  # noqa: E402

from shared.app.tensorboard import TensorBoardLogger  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _load(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={
        "scalars": 0, "images": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    return acc


def _clip(f: int = 5, h: int = 16, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (f, h, w, 3), dtype=np.uint8)


def _gif(encoded: bytes) -> tuple[str, int, tuple[int, int]]:
    with Image.open(io.BytesIO(encoded)) as im:
        return im.format, im.n_frames, im.size


def test_scalars_read_back(tmp_path: Path) -> None:
    with TensorBoardLogger(tmp_path) as tb:
        for step in range(3):
            tb.scalar("train/loss", 1.0 / (step + 1), step)
        tb.scalars({"train/lr": 1e-4, "train/grad_norm": np.float32(2.5)}, step=7)
    acc = _load(tmp_path)
    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/lr", "train/grad_norm"}
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [0, 1, 2]
    np.testing.assert_allclose([e.value for e in loss], [1.0, 0.5, 1 / 3], rtol=1e-6)
    assert [(e.step, e.value) for e in acc.Scalars("train/grad_norm")] == [(7, 2.5)]
    np.testing.assert_allclose(acc.Scalars("train/lr")[0].value, 1e-4, rtol=1e-6)


def test_text_and_config_use_the_text_plugin(tmp_path: Path) -> None:
    with TensorBoardLogger(tmp_path) as tb:
        tb.text("notes", "**hello** sign", step=3)
        tb.log_config({"model": {"preset": "tiny", "channels": 32}, "out": Path("/x")})
    acc = _load(tmp_path)
    assert set(acc.Tags()["tensors"]) == {"notes", "config"}
    for tag in ("notes", "config"):
        assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "text"
    notes = acc.Tensors("notes")
    assert notes[0].step == 3
    assert tensor_util.make_ndarray(notes[0].tensor_proto).item() == b"**hello** sign"
    config = tensor_util.make_ndarray(acc.Tensors("config")[0].tensor_proto).item().decode()
    assert config.startswith("```json\n") and config.endswith("\n```")
    assert '"preset": "tiny"' in config and '"out": "/x"' in config


def test_video_is_an_animated_gif_image(tmp_path: Path) -> None:
    clip = _clip()
    batch = np.stack([_clip(seed=s) for s in range(4)])
    with TensorBoardLogger(tmp_path) as tb:
        tb.video("samples/one", clip, step=10, fps=8)
        tb.video("samples/grid", batch, step=10)
    acc = _load(tmp_path)
    one = acc.Images("samples/one")[0]
    assert one.step == 10 and (one.height, one.width) == (16, 20)
    assert _gif(one.encoded_image_string) == ("GIF", 5, (20, 16))
    with Image.open(io.BytesIO(one.encoded_image_string)) as im:
        assert abs(im.info["duration"] - 125) <= 10  # fps=8; GIF delays are in 1/100 s
    grid = acc.Images("samples/grid")[0]
    fmt, n, (w, h) = _gif(grid.encoded_image_string)
    assert fmt == "GIF" and n == 5
    assert (grid.width, grid.height) == (w, h)
    assert w >= 2 * 20 and h >= 2 * 16  # a 2 x 2 grid of 16 x 20 tiles


def test_image_is_png(tmp_path: Path) -> None:
    img = _clip(1, 12, 9)[0]
    with TensorBoardLogger(tmp_path) as tb:
        tb.image("frame", img, step=1)
        with pytest.raises(ValueError):
            tb.image("bad", img.astype(np.float32), step=1)
    event = _load(tmp_path).Images("frame")[0]
    with Image.open(io.BytesIO(event.encoded_image_string)) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), img)


def test_histogram(tmp_path: Path) -> None:
    values = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    with TensorBoardLogger(tmp_path) as tb:
        tb.histogram("weights", np.append(values, [np.nan, np.inf]), step=2)
        tb.histogram("empty", np.array([]), step=2)
    acc = _load(tmp_path)
    assert acc.Tags()["histograms"] == ["weights"]
    h = acc.Histograms("weights")[0]
    assert h.step == 2
    hv = h.histogram_value
    assert hv.num == 1000 and sum(hv.bucket) == 1000
    np.testing.assert_allclose([hv.min, hv.max], [values.min(), values.max()], rtol=1e-6)
    assert hv.bucket_limit[-1] == pytest.approx(values.max())


def test_flush_makes_events_readable_while_open(tmp_path: Path) -> None:
    tb = TensorBoardLogger(tmp_path)
    tb.scalar("x", 1.0, 0)
    tb.flush()
    assert [e.value for e in _load(tmp_path).Scalars("x")] == [1.0]
    tb.close()
    tb.close()  # idempotent
    with pytest.raises(RuntimeError):
        tb.scalar("x", 2.0, 1)


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    log_dir = tmp_path / "runs"
    with TensorBoardLogger(log_dir, enabled=False) as tb:
        tb.scalar("a", 1.0, 0)
        tb.scalars({"b": 2.0}, 0)
        tb.text("t", "x")
        tb.log_config({"a": 1})
        tb.video("v", _clip(), 0)
        tb.image("i", _clip()[0], 0)
        tb.histogram("h", np.arange(4.0), 0)
        tb.flush()
    assert not log_dir.exists()


def test_import_is_cheap_and_torch_free() -> None:
    code = ("import sys; import shared.app.tensorboard as t; "
            "assert 'tensorboard' not in sys.modules, 'tensorboard imported eagerly'; "
            "import tempfile; t.TensorBoardLogger(tempfile.mkdtemp()).close(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
