"""The checkpoint directory protocol: atomic commit, `latest`, pruning, resolving, refusing."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from shared.config import preset
from shared.model.checkpoint import (
    CHECKSUMS_FILE,
    CheckpointError,
    abort_checkpoint,
    begin_checkpoint,
    commit_checkpoint,
    list_checkpoints,
    resolve_checkpoint,
)
from shared.model.layouts import MLX_TO_TORCH_AXES, TORCH_TO_MLX_AXES
from shared.model.resume import pick_resume_checkpoint, resume_checkpoint, verify_checkpoint
from shared.model.safetensors_io import TensorSpec, read_header
from shared.model.tensor_files import check_layout, check_tensor_file, compare_keys, tensor_metadata


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
    with pytest.raises(CheckpointError, match="no such checkpoint \\(no such file or folder\\)"):
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


# ------------------------------------------------------------------ every path a user would try


def test_resolve_accepts_every_form_a_user_would_try(tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    fake_checkpoint(ckpts, 1)
    newest = fake_checkpoint(ckpts, 2)
    (run / "config.json").write_text("{}")  # a run folder holds more than checkpoints/
    (run / "tb").mkdir()
    assert resolve_checkpoint(run) == newest
    assert resolve_checkpoint(ckpts) == newest
    assert resolve_checkpoint(ckpts / "latest") == newest  # the pointer file itself
    assert resolve_checkpoint(str(ckpts / "step_0000001")) == ckpts / "step_0000001"
    weights = ckpts / "step_0000001" / "model.safetensors"
    assert resolve_checkpoint(weights, allow_file=True) == weights
    (ckpts / "latest").write_text("step_0000001\n")  # `latest` wins over the newest by name
    assert resolve_checkpoint(run) == ckpts / "step_0000001"
    assert resolve_checkpoint(ckpts / "latest") == ckpts / "step_0000001"


def test_resolve_refusals_say_what_was_found_and_what_to_pass(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    step = fake_checkpoint(ckpts, 3)
    forms = "a training run's folder, its checkpoints/ folder"
    with pytest.raises(CheckpointError, match="one weights file.*pass the folder that holds "
                                              f"it, {step}"):
        resolve_checkpoint(step / "model.safetensors")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(CheckpointError, match=f"a file of 5 bytes, not a checkpoint or a "
                                              f"`latest` pointer; pass {forms}"):
        resolve_checkpoint(notes)
    (ckpts / "latest").write_text("step_0000009\n")
    with pytest.raises(CheckpointError, match=f"points at step_0000009, which does not exist; "
                                              f"pass {ckpts} to use its newest complete step"):
        resolve_checkpoint(ckpts / "latest")
    assert resolve_checkpoint(ckpts) == step  # a stale pointer: the newest complete step
    half = ckpts / "step_0000004"
    half.mkdir()
    (half / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"an incomplete checkpoint \(holds config.json; "
                                              r"needs config.json \+ model.safetensors\)"):
        resolve_checkpoint(half)
    other = tmp_path / "other"
    (other / "samples").mkdir(parents=True)
    (other / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"holds no checkpoint \(found notes.txt, samples/\); "
                                              f"pass {forms}"):
        resolve_checkpoint(other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"found an empty folder"):
        resolve_checkpoint(tmp_path / "empty")


# ------------------------------------------------------------------ damaged files


def write_weights(path: Path, **arrays: np.ndarray) -> Path:
    save_file(arrays, str(path), metadata=tensor_metadata("torch"))
    return path


def test_header_check_refuses_a_cut_short_file_by_name(tmp_path):
    path = write_weights(tmp_path / "model.safetensors", w=np.ones((4, 3), np.float32),
                         b=np.zeros(3, np.float32))
    specs, meta = read_header(path)
    assert specs == {"w": TensorSpec((4, 3), "F32"), "b": TensorSpec((3,), "F32")}
    assert meta["t2s_layout"] == "torch"
    data = path.read_bytes()
    for cut in (len(data) - 4, 100, 9, 3):  # the data, the header, the length itself
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as info:
            read_header(path)
        message = str(info.value)
        assert message.startswith(f"{path}: damaged or not a safetensors file (")
        assert "\n" not in message
    path.write_bytes(data + b"\0" * 8)  # a longer file is as wrong as a shorter one
    with pytest.raises(CheckpointError, match=f"{len(data) + 8} bytes where its header "
                                              f"describes {len(data)}"):
        read_header(path)
    with pytest.raises(CheckpointError, match="missing; the checkpoint is incomplete"):
        read_header(tmp_path / "nope.safetensors")


def test_tensor_file_check_names_keys_shapes_and_dtypes(tmp_path):
    path = write_weights(tmp_path / "model.safetensors", w=np.ones((4, 3), np.float32))
    check_tensor_file(path, {"w": TensorSpec((4, 3), "F32")}, "torch")
    check_tensor_file(path, {"w": TensorSpec((4, 3), "BF16")})  # floats load into floats
    with pytest.raises(CheckpointError, match="convert/torch_to_mlx.py"):
        check_tensor_file(path, layout="mlx")
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. v\)"):
        check_tensor_file(path, {"w": TensorSpec((4, 3), "F32"), "v": TensorSpec((1,), "F32")})
    with pytest.raises(CheckpointError, match=r"w has shape \(4, 3\) but the model needs "
                                              r"\(3, 4\)"):
        check_tensor_file(path, {"w": TensorSpec((3, 4), "F32")})
    with pytest.raises(CheckpointError, match="w is F32 but the model needs I64"):
        check_tensor_file(path, {"w": TensorSpec((4, 3), "I64")})


def train_steps(run: Path, *steps: int) -> None:
    """Checkpoints as a trainer leaves them: weights, EMA, optimizer, trainer state."""
    for step in steps:
        tmp = begin_checkpoint(run / "checkpoints", step)
        preset("tiny").save(tmp / "config.json")
        for name in ("model", "ema", "optimizer"):
            write_weights(tmp / f"{name}.safetensors", w=np.full(3, step, np.float32))
        (tmp / "trainer_state.json").write_text(f'{{"step": {step}}}')
        commit_checkpoint(tmp, step)


def verify(checkpoint: Path) -> None:
    spec = {"w": TensorSpec((3,), "F32")}
    verify_checkpoint(checkpoint, {"model.safetensors": spec, "ema.safetensors": spec,
                                   "optimizer.safetensors": None}, "torch")


def test_resume_falls_back_past_a_damaged_newest_step(tmp_path):
    run = tmp_path / "run"
    train_steps(run, 1, 2, 3)
    assert pick_resume_checkpoint(run, verify) == run / "checkpoints" / "step_0000003"
    damaged = run / "checkpoints" / "step_0000003" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-5])
    warnings: list[str] = []
    chosen = pick_resume_checkpoint(run, verify, warn=warnings.append)
    assert chosen == run / "checkpoints" / "step_0000002"
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"warning: step 3 cannot be used ({damaged}: damaged")
    assert warnings[0].endswith("resuming from step 2, the newest intact checkpoint")
    with pytest.raises(CheckpointError, match="step 3 cannot be used .*the newest intact "
                                              "checkpoint is step 2: resume from it with "
                                              f"`--resume {chosen}`"):
        pick_resume_checkpoint(run, verify, strict=True)
    (run / "checkpoints" / "step_0000002" / "trainer_state.json").write_text("{")
    assert pick_resume_checkpoint(run, verify, warn=warnings.append).name == "step_0000001"
    assert "resuming from step 1" in warnings[-1]
    # the step asked for by name: no fallback, and it must be this run's
    assert resume_checkpoint(run, str(chosen.parent / "step_0000001"), verify) == \
        chosen.parent / "step_0000001"
    with pytest.raises(CheckpointError, match=str(damaged)):
        resume_checkpoint(run, str(run / "checkpoints" / "latest"), verify)
    train_steps(tmp_path / "other", 1)
    with pytest.raises(CheckpointError, match=f"not a checkpoint of the run in {run}"):
        resume_checkpoint(run, str(tmp_path / "other"), verify)
    (run / "checkpoints" / "step_0000001" / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume from; step 3"):
        pick_resume_checkpoint(run, verify)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        pick_resume_checkpoint(tmp_path / "empty", verify)


def test_a_byte_changed_in_place_is_caught_by_the_saved_checksum(tmp_path):
    """Same size, intact header: only the checksum written at save time can see it."""
    run = tmp_path / "run"
    train_steps(run, 1, 2)
    newest = run / "checkpoints" / "step_0000002"
    sums = json.loads((newest / CHECKSUMS_FILE).read_text())["sha256"]
    assert set(sums) == {"config.json", "model.safetensors", "ema.safetensors",
                         "optimizer.safetensors", "trainer_state.json"}
    assert sums["model.safetensors"] == hashlib.sha256(
        (newest / "model.safetensors").read_bytes()).hexdigest()
    verify(newest)
    ema = newest / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[-1] ^= 0x40  # one bit of the last weight
    ema.write_bytes(bytes(data))
    check_tensor_file(ema, {"w": TensorSpec((3,), "F32")})  # the header still looks fine
    with pytest.raises(CheckpointError, match=f"{re.escape(str(ema))}: damaged .*checksum"):
        verify(newest)
    warnings: list[str] = []
    assert pick_resume_checkpoint(run, verify, warn=warnings.append) == newest.parent / \
        "step_0000001"
    assert len(warnings) == 1 and "checksum" in warnings[0]


def test_checkpoints_from_before_checksums_still_verify(tmp_path):
    run = tmp_path / "run"
    train_steps(run, 1)
    step = run / "checkpoints" / "step_0000001"
    (step / CHECKSUMS_FILE).unlink()
    verify(step)
