"""Preemption and damaged checkpoints, on both backends: a real `t2s-<backend> train` stopped by
a signal (SIGTERM on torch; SIGUSR1, what SLURM's --signal sends, on MLX) keeps the step it
stopped at and resumes bit-identically; a truncated newest checkpoint is skipped by --resume
with one warning and refused by name everywhere else; on torch, a second signal while stopping
leaves every checkpoint intact and every checkpoint path form loads. MLX runs are kept small
(MLX on a CPU is slow): 2 frames of 8 x 8 (`backend.small_clips`) and batch 2. The batch size
and the stop signal are the adapter's `backend.preemption` (tests/backends/conftest.py)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shared.config import Config, apply_overrides, preset
from shared.model.checkpoint import CheckpointError, list_checkpoints, load_json, step_dir_name
from shared.model.safetensors_io import ConvertError

FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")


def tiny_config(backend, data: Path, out: Path, *overrides: str) -> Config:
    return apply_overrides(preset("tiny"), [
        f"data.data_dir={data}", f"train.out_dir={out}", "data.val_fraction=0",
        "train.sample_every=0", "train.checkpoint_every=1000",
        f"train.batch_size={backend.preemption.batch_size}", *backend.small_clips, *overrides])


def start_training(backend, data: Path, run_dir: Path) -> subprocess.Popen:
    """A long run (the LR schedule planned for 1000 steps) that checkpoints every 2 steps."""
    sets = [x for o in ("train.checkpoint_every=2", "train.sample_every=0",
                        "data.val_fraction=0", *backend.small_clips) for x in ("--set", o)]
    return subprocess.Popen(
        [backend.tool, "train", "--data", str(data), "--preset", "tiny", "--out", str(run_dir),
         "--steps", "1000", "--batch-size", str(backend.preemption.batch_size), "--device",
         backend.device, "--quiet", *sets],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_checkpoint(proc: subprocess.Popen, run_dir: Path) -> None:
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "latest").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint appeared: {proc.communicate()[1]}")
        time.sleep(0.05)


def same_files(backend, a: Path, b: Path) -> None:
    """The checkpoints' weights, EMA and optimizer files hold the same keys (at least one),
    dtypes and values."""
    for name in FILES:
        x, y = backend.load_safetensors(a / name), backend.load_safetensors(b / name)
        assert x.keys() == y.keys() and x, name
        assert all(x[k].dtype == y[k].dtype and backend.equal(x[k], y[k]) for k in x), name


@pytest.mark.slow
def test_a_stop_signal_saves_the_step_it_stopped_at_and_resume_is_exact(backend, toy_data,
                                                                        tmp_path):
    stop = backend.preemption.stop
    run_dir = tmp_path / "run"
    proc = start_training(backend, toy_data, run_dir)
    wait_for_first_checkpoint(proc, run_dir)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + stop, err
    assert "Traceback" not in err
    found = re.search(rf"^stopped by {stop.name} at step (\d+): saved (\S+); continue with "
                      r"--resume$", err, re.MULTILINE)
    assert found, err
    stopped = int(found.group(1))
    ckpts = run_dir / "checkpoints"
    assert stopped >= 2 and Path(found.group(2)) == ckpts / step_dir_name(stopped)
    assert (ckpts / "latest").read_text().strip() == step_dir_name(stopped)
    assert load_json(ckpts / step_dir_name(stopped) / "trainer_state.json")["step"] == stopped

    # One more step from the saved one equals the same steps run without a stop.
    config = Config.load(run_dir / "config.json")
    resumed = backend.trainer(config).train(resume=True, until=stopped + 1)
    straight = backend.trainer(apply_overrides(config, [f"train.out_dir={tmp_path / 'straight'}"]))
    reference = straight.train(until=stopped + 1)
    assert resumed.step == reference.step == stopped + 1
    assert resumed.losses == reference.losses[-1:]
    same_files(backend, resumed.checkpoint, reference.checkpoint)


@pytest.mark.backends("torch")
def test_a_second_signal_while_stopping_leaves_every_checkpoint_intact(backend, toy_data,
                                                                       tmp_path):
    checkpoint = backend.module("checkpoint")
    run_dir = tmp_path / "run"
    proc = start_training(backend, toy_data, run_dir)
    wait_for_first_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # "now": whatever it was doing, saving included
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    found = list_checkpoints(run_dir / "checkpoints")
    assert found
    model = backend.module("unet").UNet3D(Config.load(run_dir / "config.json").model)
    for _, path in found:
        checkpoint.check_checkpoint(path, model)
    _, _, latest = checkpoint.load_model(run_dir / "checkpoints" / "latest")
    assert latest in [p for _, p in found]


@pytest.mark.slow
def test_a_truncated_newest_step_is_skipped_on_resume_and_named_elsewhere(backend, toy_data,
                                                                          tmp_path):
    load_model = backend.module("checkpoint").load_model
    run_dir = tmp_path / "run"
    extra = ("train.steps=6", "train.checkpoint_every=1", "train.lr=1e-3")
    backend.trainer(tiny_config(backend, toy_data, run_dir, *extra)).train(until=2)
    damaged = run_dir / "checkpoints" / "step_0000002" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-1000])  # a copy cut short

    # sample and convert refuse it in one line naming the file
    attempts = [lambda: load_model(run_dir, use_ema=False),
                lambda: load_model(run_dir / "checkpoints" / "latest", use_ema=False),
                lambda: backend.convert_away(run_dir / "checkpoints" / "latest",
                                             tmp_path / "converted")]
    for attempt in attempts:
        with pytest.raises(CheckpointError) as info:
            attempt()
        assert str(info.value).startswith(f"{damaged}: damaged or not a safetensors file")
    assert isinstance(info.value, ConvertError)

    with pytest.raises(CheckpointError, match=r"step 2 cannot be used .*newest intact "
                                              r"checkpoint is step 1: resume from it with "
                                              r"`--resume \S+step_0000001`"):
        backend.trainer(tiny_config(backend, toy_data, run_dir, *extra, "data.strict=true")
                        ).train(resume=True)
    lines: list[str] = []
    resumed = backend.trainer(tiny_config(backend, toy_data, run_dir, *extra),
                              lines.append).train(resume=True, until=3)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and str(damaged) in warnings[0]
    assert "step 2 cannot be used" in warnings[0] and "resuming from step 1" in warnings[0]
    assert resumed.step == 3
    backend.module("checkpoint").check_checkpoint(  # rewritten whole
        run_dir / "checkpoints" / "step_0000002",
        backend.module("unet").UNet3D(Config.load(run_dir / "config.json").model))
    straight = backend.trainer(tiny_config(backend, toy_data, tmp_path / "straight", *extra)
                               ).train(until=3)
    same_files(backend, resumed.checkpoint, straight.checkpoint)


@pytest.mark.backends("torch")
def test_every_checkpoint_path_form_loads_and_converts(backend, toy_data, tmp_path):
    from shared.model.convert import torch_to_mlx

    load_model = backend.module("checkpoint").load_model
    run_dir = tmp_path / "run"
    result = backend.trainer(tiny_config(backend, toy_data, run_dir, "train.steps=2",
                                         "train.checkpoint_every=1")).train()
    ckpts = run_dir / "checkpoints"
    for form in (run_dir, ckpts, ckpts / "latest", result.checkpoint, str(ckpts / "latest")):
        assert load_model(form)[2] == result.checkpoint, form
    assert load_model(ckpts / "step_0000001")[2] == ckpts / "step_0000001"
    report = torch_to_mlx(ckpts / "latest", tmp_path / "mlx")
    assert (tmp_path / "mlx" / "model.safetensors").exists() and report.converted
    torch_to_mlx(result.checkpoint / "ema.safetensors", tmp_path / "ema_mlx.safetensors")
    with pytest.raises(CheckpointError, match="one weights file, but this needs a whole "
                                              f"checkpoint.*pass the folder that holds it, "
                                              f"{result.checkpoint}"):
        load_model(result.checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"holds no checkpoint \(found ema_mlx.safetensors, "
                                              r"mlx/, run/\); pass a training run's folder"):
        load_model(tmp_path)
