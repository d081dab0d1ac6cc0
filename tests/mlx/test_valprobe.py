"""train.eval_every on t2s-mlx: the mirror of tests/torch/test_valprobe.py, kept tiny (MLX's
CPU backend is slow): 2 x 16 x 16 clips, one evaluation after two steps."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mediapipe", reason='pose metrics need ".[pose]"')
pytest.importorskip("skimage", reason='the person clips need ".[pose]"')

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from shared import personclips as pc  # noqa: E402
from shared.config import apply_overrides, preset  # noqa: E402
from t2s_mlx.train import Trainer  # noqa: E402


def test_eval_every_logs_real_sign_metrics_beside_the_baseline(tmp_path):
    data = pc.write_two_take_set(tmp_path / "clips", {"sway": pc.sway, "bow": pc.bow}, 6,
                                 height=72, width=128)
    config = apply_overrides(preset("tiny"), [
        f"data.data_dir={data}", f"train.out_dir={tmp_path / 'run'}", "data.num_frames=2",
        "data.image_size=16", "data.val_fraction=0.5", "train.steps=2", "train.batch_size=2",
        "train.sample_every=0", "train.checkpoint_every=1000", "train.eval_every=2",
        "train.eval_clips=2", "train.eval_steps=1"])
    Trainer(config, device="cpu", progress=False, log=lambda _: None).train()
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"scalars": 0}).Reload()
    for tag in ("val/psnr", "val/psnr_shuffled", "val/ssim", "val/ssim_shuffled",
                "val/body_frames"):
        (event,) = events.Scalars(tag)
        assert event.step == 2 and math.isfinite(event.value), tag
    assert 3 < events.Scalars("val/psnr")[0].value < 40
    assert -1 <= events.Scalars("val/ssim")[0].value <= 1
