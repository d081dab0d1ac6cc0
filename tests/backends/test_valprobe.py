"""train.eval_every on both backends: real-sign metrics of EMA samples on the validation split
of a folder of real-person clips, read back from the run's TensorBoard event file. MLX's run is
kept tiny (its CPU backend is slow): 2 x 16 x 16 clips of two captions, one evaluation after
two steps; torch's is the tiny preset's clips of three captions, evaluated at steps 2 and 4."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("mediapipe", reason='pose metrics need ".[pose]"')
pytest.importorskip("skimage", reason='the person clips need ".[pose]"')

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from benchmarks import personclips as pc  # noqa: E402
from shared.config import Config, apply_overrides, preset  # noqa: E402

PIXEL_TAGS = ("val/psnr", "val/psnr_shuffled", "val/ssim", "val/ssim_shuffled")
# backend.valprobe (tests/backends/conftest.py): the captions' motions, frames per clip,
# overrides, and the evaluated steps.
MOTIONS = {"sway": pc.sway, "bow": pc.bow, "still": lambda p: pc.Pose2D()}


def person_folder(backend, root: Path) -> Path:
    """Two wide MP4 "signers" per caption: real pixels MediaPipe reads."""
    names, frames, _, _ = backend.valprobe
    return pc.write_two_take_set(root, {n: MOTIONS[n] for n in names}, frames, height=72,
                                 width=128)


def probe_config(backend, data: Path, out: Path, *overrides: str) -> Config:
    return apply_overrides(preset("tiny"), [
        f"data.data_dir={data}", f"train.out_dir={out}", "data.val_fraction=0.5",
        "train.batch_size=2", "train.sample_every=0", "train.checkpoint_every=1000",
        "train.eval_every=2", "train.eval_clips=2", *backend.valprobe[2], *overrides])


def scalars(run: Path) -> EventAccumulator:
    return EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0}).Reload()


@pytest.mark.slow
def test_eval_every_logs_real_sign_metrics_beside_the_baseline(backend, tmp_path):
    notes: list[str] = []
    config = probe_config(backend, person_folder(backend, tmp_path / "clips"), tmp_path / "run")
    backend.trainer(config, notes.append).train()
    events = scalars(tmp_path / "run")
    for tag in (*PIXEL_TAGS, "val/body_frames", "val/hand_frames"):
        values = events.Scalars(tag)
        assert [e.step for e in values] == backend.valprobe[3], tag
        assert all(math.isfinite(e.value) for e in values), tag
    for e in events.Scalars("val/psnr") + events.Scalars("val/psnr_shuffled"):
        assert 3 < e.value < 40  # dB of a barely trained model against real frames
    for e in events.Scalars("val/ssim") + events.Scalars("val/ssim_shuffled"):
        assert -1 <= e.value <= 1
    # a few steps of training draw no signer: no body, so no DTW-MJE, and one note saying so
    assert all(e.value == 0 for e in events.Scalars("val/body_frames"))
    assert "val/dtw_mje" not in events.Tags()["scalars"]
    assert sum("DTW-MJE is not logged" in n for n in notes) == 1


def test_eval_every_off_logs_no_val_metrics(backend, tmp_path):
    config = probe_config(backend, person_folder(backend, tmp_path / "clips"), tmp_path / "run",
                          "train.eval_every=0", "train.steps=2")
    backend.trainer(config).train()
    assert not [t for t in scalars(tmp_path / "run").Tags()["scalars"] if t.startswith("val/")]
