"""The core training loop (shared.app.trainer.BaseTrainer) as each backend's Trainer runs it: a
feature written once in the loop reaches both tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, apply_overrides, preset
from shared.model.checkpoint import list_checkpoints


@pytest.fixture(scope="module")
def toy_data(make_toy_data) -> Path:
    """Four clips of 4 frames: these tests count checkpoints, not learning."""
    return make_toy_data(n=4, num_frames=4)


def steps_saved(backend, data: Path, out: Path, minutes: float) -> list[int]:
    config = apply_overrides(preset("tiny"), [
        f"data.data_dir={data}", f"train.out_dir={out}", "data.val_fraction=0",
        "train.sample_every=0", "train.batch_size=2", "train.steps=4",
        "train.checkpoint_every=1000", "train.keep_last=10",
        f"train.checkpoint_minutes={minutes}"])
    backend.trainer(config).train()
    return [step for step, _ in list_checkpoints(out / "checkpoints")]


@pytest.mark.slow
def test_checkpoint_minutes_saves_on_the_clock_between_step_cadences(backend, toy_data,
                                                                     tmp_path):
    """With the clock overdue after every step, every step is saved; off, only the last one
    (checkpoint_every is far away)."""
    assert steps_saved(backend, toy_data, tmp_path / "off", 0) == [4]
    assert steps_saved(backend, toy_data, tmp_path / "on", 1e-9) == [1, 2, 3, 4]


def test_checkpoint_minutes_must_not_be_negative():
    config = apply_overrides(preset("tiny"), ["train.checkpoint_minutes=-1"])
    with pytest.raises(ConfigError, match="checkpoint_minutes"):
        config.validate()
