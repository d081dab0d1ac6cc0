"""Data-parallel training through the real launcher: `mlx.launch --backend ring` (two local
ranks over TCP loopback) around the real `t2s-mlx train`. Two processes at micro-batch 2 must
train exactly as one at batch 4, and a two-process checkpoint must resume in one process. The
mirror of tests/torch/test_distributed.py."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from shared.toy import make_toy_dataset  # noqa: E402

BIN = Path(sys.executable).parent
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


def train(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    tool = str(BIN / "t2s-mlx")
    command = [str(BIN / "mlx.launch"), "-n", str(processes), "--backend", "ring",
               "--starting-port", str(free_port()), tool] if processes > 1 else [tool]
    result = subprocess.run([*command, "train", *COMMON, *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def weights(run: Path, step: int, name: str = "model.safetensors") -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in
            mx.load(str(run / "checkpoints" / f"step_{step:07d}" / name)).items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ring")
    data = root / "data"
    make_toy_dataset(data, n=8, num_prompts=3, num_frames=4, height=36, width=64,
                     progress=False)
    two, one = root / "two", root / "one"
    out = train("--data", str(data), "--out", str(two), "--steps", "3", "--batch-size", "2",
                processes=2)
    assert "x 2 processes = 4 clips per step" in out.stdout
    assert out.stdout.count("trained to step 3") == 1  # rank 0 alone reports
    train("--data", str(data), "--out", str(one), "--steps", "3", "--batch-size", "4")
    return {"data": data, "two": two, "one": one}


@pytest.mark.slow
def test_two_ranks_train_as_one_with_the_doubled_batch(runs):
    for name in ("model.safetensors", "ema.safetensors"):
        two, one = weights(runs["two"], 3, name), weights(runs["one"], 3, name)
        assert two.keys() == one.keys()
        start = weights(runs["one"], 2, name)
        assert max(np.abs(one[k] - start[k]).max() for k in one) > 1e-4
        for k in one:
            np.testing.assert_allclose(two[k], one[k], atol=2e-5, rtol=1e-4, err_msg=k)
    state = json.loads((runs["two"] / "checkpoints" / "step_0000003" /
                        "trainer_state.json").read_text())
    assert (state["world_size"], state["micro_batch"], state["grad_accum"]) == (2, 2, 1)
    assert sorted(p.name for p in (runs["two"] / "checkpoints").iterdir()) == [
        "latest", "step_0000002", "step_0000003"]


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_in_one_process(runs, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(runs["two"], run)
    out = train("--out", str(run), "--steps", "5", "--resume", "--data", str(runs["data"]))
    assert "at step 3" in out.stdout
    assert "micro-batch 2 x 2 accumulation = 4 clips per step" in out.stdout
    state = json.loads((run / "checkpoints" / "step_0000005" / "trainer_state.json").read_text())
    assert (state["step"], state["world_size"], state["grad_accum"]) == (5, 1, 2)
    after, before = weights(run, 5), weights(run, 3)
    assert all(np.isfinite(v).all() for v in after.values())
    assert max(np.abs(after[k] - before[k]).max() for k in after) > 1e-4
