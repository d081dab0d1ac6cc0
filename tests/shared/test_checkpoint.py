"""The checkpoint directory protocol: atomic commit, `latest`, pruning, resolving, refusing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from shared.checkpoint import (
    MLX_TO_TORCH_AXES,
    TORCH_TO_MLX_AXES,
    CheckpointError,
    abort_checkpoint,
    begin_checkpoint,
    check_layout,
    commit_checkpoint,
    compare_keys,
    list_checkpoints,
    resolve_checkpoint,
    tensor_metadata,
)
from shared.config import preset


def fake_checkpoint(checkpoints: Path, step: int, keep_last: int | None = None) -> Path:
    tmp = begin_checkpoint(checkpoints, step)
    preset("tiny").save(tmp / "config.json")
    save_file({"w": np.full(3, step, np.float32)}, str(tmp / "model.safetensors"),
              metadata=tensor_metadata("torch"))
    return commit_checkpoint(tmp, step, keep_last)


def test_commit_renames_points_latest_and_prunes(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    for step in (1, 2, 3, 4):
        fake_checkpoint(ckpts, step, keep_last=2)
    assert [s for s, _ in list_checkpoints(ckpts)] == [3, 4]
    assert (ckpts / "latest").read_text().strip() == "step_0000004"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_0000003", "step_0000004"]


def test_an_unfinished_checkpoint_is_never_latest(tmp_path):
    ckpts = tmp_path / "checkpoints"
    good = fake_checkpoint(ckpts, 1)
    crashed = begin_checkpoint(ckpts, 2)  # a crash after this: half-written, never committed
    (crashed / "config.json").write_text("{")
    assert resolve_checkpoint(tmp_path) == good
    assert [s for s, _ in list_checkpoints(ckpts)] == [1]
    abort_checkpoint(crashed)
    assert not crashed.exists()


def test_recommitting_a_step_replaces_it_whole(tmp_path):
    ckpts = tmp_path / "checkpoints"
    fake_checkpoint(ckpts, 5)
    tmp = begin_checkpoint(ckpts, 5)
    preset("tiny").save(tmp / "config.json")
    save_file({"w": np.zeros(3, np.float32)}, str(tmp / "model.safetensors"),
              metadata=tensor_metadata("torch"))
    final = commit_checkpoint(tmp, 5)
    assert load_file(str(final / "model.safetensors"))["w"].tolist() == [0, 0, 0]
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_0000005"]


def test_resolve_accepts_run_checkpoints_or_step_folder(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    fake_checkpoint(ckpts, 1)
    newest = fake_checkpoint(ckpts, 2)
    assert resolve_checkpoint(tmp_path / "run") == newest
    assert resolve_checkpoint(ckpts) == newest
    assert resolve_checkpoint(ckpts / "step_0000001") == ckpts / "step_0000001"
    (ckpts / "latest").unlink()  # without the pointer, the newest complete step
    assert resolve_checkpoint(tmp_path / "run") == newest
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resolve_checkpoint(tmp_path / "empty")


def test_layout_refusal_names_the_converter(tmp_path):
    check_layout({"t2s_layout": "mlx"}, "mlx", tmp_path)
    with pytest.raises(CheckpointError, match="convert/torch_to_mlx.py"):
        check_layout({"t2s_layout": "torch"}, "mlx", tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a text2sign file"):
        check_layout({"format": "pt"}, "torch", tmp_path)


def test_key_mismatch_message_counts_and_names_keys(tmp_path):
    compare_keys({"a", "b"}, {"b", "a"}, tmp_path)
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. a\); 1 unexpected \(e.g. c\)"):
        compare_keys({"a", "b"}, {"b", "c"}, tmp_path)


def test_layout_axes_invert_each_other():
    w = np.arange(2 * 3 * 4 * 5 * 6).reshape(2, 3, 4, 5, 6)
    mlx = w.transpose(TORCH_TO_MLX_AXES[5])
    assert mlx.shape == (2, 4, 5, 6, 3)  # (O, I, kF, kH, kW) -> (O, kF, kH, kW, I)
    assert np.array_equal(mlx.transpose(MLX_TO_TORCH_AXES[5]), w)
