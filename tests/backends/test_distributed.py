"""Data-parallel training through each backend's real launcher around its real CLI: `torchrun`
(gloo on CPU) around `t2s-torch train`, `mlx.launch --backend ring` (two local ranks over TCP
loopback) around `t2s-mlx train` (the commands: the adapter's `backend.launch`). Two processes
at micro-batch 2 must train exactly as one at batch 4, and a two-process checkpoint must resume
in one process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shared.app.distributed import Distributed
from shared.data.toy import make_toy_dataset

# Small enough that clipping acts on every step: the clip must use the all-reduced norm.
CLIP = 0.05
COMMON = ("--preset", "tiny", "--quiet", "--set", "data.num_frames=2", "--set",
          "data.image_size=8", "--set", "data.val_fraction=0", "--set", "train.sample_every=0",
          "--set", "train.checkpoint_every=2", "--set", "train.lr=1e-3", "--set",
          "train.warmup_steps=1", "--set", f"train.grad_clip={CLIP}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(backend, *args: str, processes: int = 1, launcher: str | None = None,
          ok: bool = True) -> subprocess.CompletedProcess:
    """`t2s-<backend> train`, in one process or under the backend's launcher (torch also runs
    under accelerate's)."""
    launch = [] if processes == 1 else backend.launch(processes, free_port(), launcher)
    result = subprocess.run([*launch, backend.tool, "train", *COMMON, *args],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, **backend.launch_env})
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    return result


def weights(backend, run: Path, step: int, name: str = "model.safetensors"
            ) -> dict[str, np.ndarray]:
    path = run / "checkpoints" / f"step_{step:07d}" / name
    return {k: backend.numpy(v) for k, v in backend.load_safetensors(path).items()}


@pytest.fixture(scope="module")
def runs(backend, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("launched")
    data = root / "data"
    make_toy_dataset(data, n=8, num_prompts=3, num_frames=4, height=36, width=64,
                     progress=False)
    two, one = root / "two", root / "one"
    out = train(backend, "--data", str(data), "--out", str(two), "--steps", "3",
                "--batch-size", "2", processes=2)
    assert "x 2 processes = 4 clips per step" in out.stdout
    assert out.stdout.count("trained to step 3") == 1  # rank 0 alone reports
    train(backend, "--data", str(data), "--out", str(one), "--steps", "3", "--batch-size", "4")
    return {"data": data, "two": two, "one": one}


@pytest.mark.backends("torch")
def test_launcher_environment_is_read(backend):
    launched_world = backend.module("distributed").launched_world
    assert launched_world() == Distributed() or launched_world().world_size > 1
    world = Distributed(rank=1, world_size=2, local_rank=1)
    assert world.enabled and not world.is_main


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_doubled_batch(backend, runs):
    for name in ("model.safetensors", "ema.safetensors"):
        two, one = weights(backend, runs["two"], 3, name), weights(backend, runs["one"], 3, name)
        assert two.keys() == one.keys()
        start = weights(backend, runs["one"], 2, name)
        moved = max(np.abs(one[k] - start[k]).max() for k in one)
        assert moved > 1e-4  # the last step really changed the weights ...
        for k in one:  # ... and both runs changed them the same way
            np.testing.assert_allclose(two[k], one[k], atol=2e-5, rtol=1e-4, err_msg=k)
    state = json.loads((runs["two"] / "checkpoints" / "step_0000003" /
                        "trainer_state.json").read_text())
    assert (state["world_size"], state["micro_batch"], state["grad_accum"]) == (2, 2, 1)
    # Rank 0 alone wrote: one TensorBoard event file, no stray files from rank 1.
    assert len(list((runs["two"] / "tb").glob("events.out.tfevents.*"))) >= 1
    assert sorted(p.name for p in (runs["two"] / "checkpoints").iterdir()) == [
        "latest", "step_0000002", "step_0000003"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["two"] / "tb"), size_guidance={"scalars": 0}).Reload()
    assert min(e.value for e in events.Scalars("train/grad_norm")) > CLIP  # clipping acted


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(backend, runs, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(runs["two"], run)
    out = train(backend, "--out", str(run), "--steps", "5", "--resume", "--data",
                str(runs["data"]))
    assert "resumed from" in out.stdout and "at step 3" in out.stdout
    # The global batch is kept: 2 processes x 2 clips become 1 process x 2 clips x 2 steps.
    assert "micro-batch 2 x 2 accumulation = 4 clips per step" in out.stdout
    state = json.loads((run / "checkpoints" / "step_0000005" / "trainer_state.json").read_text())
    assert (state["step"], state["world_size"], state["grad_accum"]) == (5, 1, 2)
    after, before = weights(backend, run, 5), weights(backend, run, 3)
    assert all(np.isfinite(v).all() for v in after.values())
    assert max(np.abs(after[k] - before[k]).max() for k in after) > 1e-4


@pytest.mark.slow
@pytest.mark.backends("torch")
def test_accelerate_launch_runs_the_same_training(backend, runs, tmp_path):
    run = tmp_path / "accelerate"
    train(backend, "--data", str(runs["data"]), "--out", str(run), "--steps", "3",
          "--batch-size", "2", processes=2, launcher="accelerate")
    ours, reference = weights(backend, run, 3), weights(backend, runs["two"], 3)
    for k in reference:
        np.testing.assert_allclose(ours[k], reference[k], atol=1e-6, err_msg=k)


@pytest.mark.slow
@pytest.mark.backends("torch")
def test_every_rank_stops_on_divergence(backend, runs, tmp_path):
    out = train(backend, "--data", str(runs["data"]), "--out", str(tmp_path / "nan"),
                "--steps", "6", "--batch-size", "2", "--set", "train.lr=1e30", "--set",
                "train.grad_clip=0", processes=2, ok=False)
    # both ranks stop at the same step (the loss is all-reduced) with the one-line error of a
    # user-facing failure; none hangs, none dies with a traceback of its own
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2 and "became nan at step" in errors[0], out.stderr
    assert errors[0] == errors[1]  # the same step on both ranks
