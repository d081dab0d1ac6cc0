"""The trainer's one-off time estimate (`shared.app.trainer.StepPace`) and `doctor`'s estimate
of the demo's training from the matmul speed."""

from __future__ import annotations

import re

import pytest

from shared.app.doctor import demo_training_minutes, speed_detail
from shared.app.trainer import ESTIMATE_PREFIX, StepPace


def test_estimate_comes_once_after_warmup_from_the_median_step():
    pace = StepPace(step=100, last_step=1100)
    # Warm-up steps are slow and ignored; one outlier among the timed ones moves no median.
    times = [9.0] * StepPace.WARMUP + [0.5] * (StepPace.TIMED - 1) + [30.0] + [0.5] * 50
    said = [m for m in (pace.tick(t) for t in times) if m]
    assert len(said) == 1
    steps_left = 1000 - StepPace.WARMUP - StepPace.TIMED
    assert said[0].startswith(ESTIMATE_PREFIX)
    assert f"{steps_left} steps to go" in said[0]
    assert f"{steps_left * 0.5 / 60:.0f} min" in said[0]


def test_no_estimate_for_a_run_that_ends_within_a_minute():
    pace = StepPace(step=0, last_step=100)
    assert not any(pace.tick(0.2) for _ in range(100))


def test_demo_estimate_scales_inversely_with_matmul_speed():
    slow, fast = demo_training_minutes(60.0), demo_training_minutes(180.0)
    assert slow == pytest.approx(3 * fast)
    # On the machine the docs measured (about 180 GFLOP/s) the toy demo trained in ~9-10 min.
    assert 5 < fast < 15
    minutes = int(re.search(r"about (\d+) min", speed_detail(180.0, 2)).group(1))
    assert minutes == round(fast) and "(2 threads)" in speed_detail(180.0, 2)
