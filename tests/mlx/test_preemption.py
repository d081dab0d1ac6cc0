"""Preemption and damaged checkpoints, MLX: the mirror of tests/torch/test_preemption.py, kept
small (MLX on a CPU is slow): a real `t2s-mlx train` stopped by SIGUSR1 (what SLURM's --signal
sends) keeps the step it stopped at and resumes bit-identically; a truncated newest checkpoint
is skipped by --resume with one warning and refused by name when sampling."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from shared.checkpoint import CheckpointError, load_json, step_dir_name  # noqa: E402
from shared.config import Config, apply_overrides, preset  # noqa: E402
from shared.toy import make_toy_dataset  # noqa: E402
from t2s_mlx.checkpoint import load_model  # noqa: E402
from t2s_mlx.train import Trainer  # noqa: E402

TOOL = str(Path(sys.executable).parent / "t2s-mlx")
SMALL = ("data.num_frames=2", "data.image_size=8")
FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy")
    make_toy_dataset(folder, n=8, num_prompts=2, num_frames=8, height=36, width=64,
                     progress=False)
    return folder


def tiny_config(data: Path, out: Path, *overrides: str) -> Config:
    return apply_overrides(preset("tiny"), [
        f"data.data_dir={data}", f"train.out_dir={out}", "data.val_fraction=0",
        "train.sample_every=0", "train.checkpoint_every=1000", "train.batch_size=2", *SMALL,
        *overrides])


def quiet(config: Config, log=lambda _: None) -> Trainer:
    return Trainer(config, device="cpu", progress=False, log=log)


def same_files(a: Path, b: Path) -> None:
    for name in FILES:
        x, y = mx.load(str(a / name)), mx.load(str(b / name))
        assert x.keys() == y.keys() and x, name
        assert all(x[k].dtype == y[k].dtype and np.array(x[k]).tobytes() == np.array(y[k])
                   .tobytes() for k in x), name


def test_sigusr1_saves_the_step_it_stopped_at_and_resume_is_exact(toy_data, tmp_path):
    run_dir = tmp_path / "run"
    sets = [x for o in ("train.checkpoint_every=2", "train.sample_every=0",
                        "data.val_fraction=0", *SMALL) for x in ("--set", o)]
    proc = subprocess.Popen(
        [TOOL, "train", "--data", str(toy_data), "--preset", "tiny", "--out", str(run_dir),
         "--steps", "1000", "--batch-size", "2", "--device", "cpu", "--quiet", *sets],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "latest").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint appeared: {proc.communicate()[1]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGUSR1, err
    found = re.search(r"^stopped by SIGUSR1 at step (\d+): saved (\S+); continue with --resume$",
                      err, re.MULTILINE)
    assert found and "Traceback" not in err, err
    stopped = int(found.group(1))
    ckpts = run_dir / "checkpoints"
    assert stopped >= 2 and Path(found.group(2)) == ckpts / step_dir_name(stopped)
    assert (ckpts / "latest").read_text().strip() == step_dir_name(stopped)
    assert load_json(ckpts / step_dir_name(stopped) / "trainer_state.json")["step"] == stopped

    config = Config.load(run_dir / "config.json")
    resumed = quiet(config).train(resume=True, until=stopped + 1)
    reference = quiet(apply_overrides(config, [f"train.out_dir={tmp_path / 'straight'}"])
                      ).train(until=stopped + 1)
    assert resumed.step == reference.step == stopped + 1
    assert resumed.losses == reference.losses[-1:]
    same_files(resumed.checkpoint, reference.checkpoint)


def test_a_truncated_newest_step_is_skipped_on_resume_and_named_elsewhere(toy_data, tmp_path):
    run_dir = tmp_path / "run"
    extra = ("train.steps=6", "train.checkpoint_every=1", "train.lr=1e-3")
    quiet(tiny_config(toy_data, run_dir, *extra)).train(until=2)
    damaged = run_dir / "checkpoints" / "step_0000002" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-1000])
    with pytest.raises(CheckpointError) as info:
        load_model(run_dir / "checkpoints" / "latest", use_ema=False)
    assert str(info.value).startswith(f"{damaged}: damaged or not a safetensors file")
    with pytest.raises(CheckpointError, match=r"newest intact checkpoint is step 1"):
        quiet(tiny_config(toy_data, run_dir, *extra, "data.strict=true")).train(resume=True)
    lines: list[str] = []
    resumed = quiet(tiny_config(toy_data, run_dir, *extra), lines.append).train(resume=True,
                                                                               until=3)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and str(damaged) in warnings[0]
    assert "step 2 cannot be used" in warnings[0] and "resuming from step 1" in warnings[0]
    straight = quiet(tiny_config(toy_data, tmp_path / "straight", *extra)).train(until=3)
    same_files(resumed.checkpoint, straight.checkpoint)
