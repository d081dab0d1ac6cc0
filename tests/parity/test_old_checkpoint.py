"""A checkpoint written before the backends shared one training loop, sampling driver and
checkpoint code (issue #22; written by commit a1a32e4's `t2s-torch train`, tiny model, 2 steps)
still loads, samples the same video on both backends, converts, and resumes training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.data.toy import make_toy_dataset
from shared.data.video import read_video
from shared.evaluation.metrics import psnr

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OLD_RUN = REPO / "tests" / "data" / "run_2026-12-07"


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*args], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_old_checkpoint_loads_with_every_key_on_both_backends(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("mlx.core")
    from mlx.utils import tree_flatten
    from safetensors.numpy import load_file

    from shared.model.convert import torch_to_mlx
    from t2s_mlx.checkpoint import load_model as mlx_load
    from t2s_torch.checkpoint import load_model as torch_load

    saved = load_file(OLD_RUN / "checkpoints" / "step_0000002" / "ema.safetensors")
    _, model, _ = torch_load(OLD_RUN, "cpu")
    state = model.state_dict()
    assert set(state) == set(saved)
    for key, value in saved.items():
        assert np.array_equal(state[key].numpy(), value), key  # the EMA weights, unchanged
    torch_to_mlx(OLD_RUN / "checkpoints" / "latest", tmp_path / "mlx")
    config, twin, _ = mlx_load(tmp_path / "mlx")
    assert config.model.base_channels == 8
    assert sum(v.size for _, v in tree_flatten(twin.parameters())) == \
        sum(v.size for v in saved.values())


@pytest.mark.slow
def test_the_old_checkpoint_samples_the_same_video_on_both_backends(tmp_path):
    converted = tmp_path / "mlx"
    run(sys.executable, str(REPO / "convert" / "torch_to_mlx.py"),
        str(OLD_RUN / "checkpoints" / "latest"), str(converted))
    args = ("--steps", "6", "--seed", "2", "--guidance", "2", "--quiet", "hello friend")
    run(str(BIN / "t2s-torch"), "sample", "--checkpoint", str(OLD_RUN), "--out",
        str(tmp_path / "a"), *args)
    run(str(BIN / "t2s-mlx"), "sample", "--checkpoint", str(converted), "--out",
        str(tmp_path / "b"), *args)
    (name,) = [p.name for p in (tmp_path / "a").glob("0*.gif")]
    a, _ = read_video(tmp_path / "a" / name)
    b, _ = read_video(tmp_path / "b" / name)
    assert a.shape == (4, 16, 16, 3) and a.std() > 1.0  # a clip, not a flat frame
    assert psnr(a, b) >= 40.0


@pytest.mark.slow
def test_the_old_run_resumes_from_its_checkpoint(tmp_path):
    data = tmp_path / "toy"
    make_toy_dataset(data, n=4, num_prompts=2, num_frames=4, height=36, width=64,
                     progress=False)
    run_dir = tmp_path / "run"
    shutil.copytree(OLD_RUN, run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["data"]["data_dir"] = str(data)
    config["train"]["out_dir"] = str(run_dir)
    (run_dir / "config.json").write_text(json.dumps(config))
    result = run(str(BIN / "t2s-torch"), "train", "--out", str(run_dir), "--steps", "3",
                 "--resume", "--quiet")
    assert "resumed from" in result.stdout + result.stderr
    state = json.loads((run_dir / "checkpoints" / "step_0000003" / "trainer_state.json")
                       .read_text())
    assert state["step"] == 3
