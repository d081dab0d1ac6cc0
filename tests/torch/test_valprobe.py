"""train.eval_every on t2s-torch: real-sign metrics of EMA samples on the validation split of a
folder of real-person clips, read back from the run's TensorBoard event file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("mediapipe", reason='pose metrics need ".[pose]"')
pytest.importorskip("skimage", reason='the person clips need ".[pose]"')

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from shared import personclips as pc  # noqa: E402
from shared.config import Config, apply_overrides, preset  # noqa: E402
from t2s_torch.train import Trainer  # noqa: E402

PIXEL_TAGS = ("val/psnr", "val/psnr_shuffled", "val/ssim", "val/ssim_shuffled")


def person_folder(root: Path) -> Path:
    """Three captions, two wide MP4 "signers" each: real pixels MediaPipe reads."""
    paths = {"sway": pc.sway, "bow": pc.bow, "still": lambda p: pc.Pose2D()}
    return pc.write_two_take_set(root, paths, 8, height=72, width=128)


def probe_config(data: Path, out: Path, *overrides: str) -> Config:
    return apply_overrides(preset("tiny"), [
        f"data.data_dir={data}", f"train.out_dir={out}", "data.val_fraction=0.5",
        "train.steps=4", "train.batch_size=2", "train.sample_every=0",
        "train.checkpoint_every=1000", "train.eval_every=2", "train.eval_clips=2",
        "train.eval_steps=2", *overrides])


def scalars(run: Path) -> EventAccumulator:
    return EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0}).Reload()


def test_eval_every_logs_real_sign_metrics_beside_the_baseline(tmp_path):
    notes: list[str] = []
    config = probe_config(person_folder(tmp_path / "clips"), tmp_path / "run")
    Trainer(config, progress=False, log=notes.append).train()
    events = scalars(tmp_path / "run")
    for tag in (*PIXEL_TAGS, "val/body_frames", "val/hand_frames"):
        values = events.Scalars(tag)
        assert [e.step for e in values] == [2, 4], tag
        assert all(math.isfinite(e.value) for e in values), tag
    for e in events.Scalars("val/psnr") + events.Scalars("val/psnr_shuffled"):
        assert 3 < e.value < 40  # dB of a barely trained model against real frames
    for e in events.Scalars("val/ssim") + events.Scalars("val/ssim_shuffled"):
        assert -1 <= e.value <= 1
    # four steps of training draw no signer: no body, so no DTW-MJE, and one note saying so
    assert all(e.value == 0 for e in events.Scalars("val/body_frames"))
    assert "val/dtw_mje" not in events.Tags()["scalars"]
    assert sum("DTW-MJE is not logged" in n for n in notes) == 1


def test_eval_every_off_logs_no_val_metrics(tmp_path):
    config = probe_config(person_folder(tmp_path / "clips"), tmp_path / "run",
                          "train.eval_every=0", "train.steps=2")
    Trainer(config, progress=False, log=lambda _: None).train()
    assert not [t for t in scalars(tmp_path / "run").Tags()["scalars"] if t.startswith("val/")]
