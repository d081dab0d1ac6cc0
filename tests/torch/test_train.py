"""Training on real toy clips, tiny preset, CPU: learning, exact resume, checkpoints, logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from shared.checkpoint import CheckpointError, list_checkpoints
from shared.config import Config, apply_overrides, preset
from shared.errors import TrainingDiverged
from shared.toy import make_toy_dataset
from t2s_torch.checkpoint import load_model
from t2s_torch.train import Trainer, find_batch_size


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy")
    make_toy_dataset(folder, n=8, num_prompts=2, num_frames=8, height=36, width=64,
                     progress=False)
    return folder


def tiny_config(data: Path, out: Path, *overrides: str) -> Config:
    config = preset("tiny")
    return apply_overrides(config, [
        f"data.data_dir={data}", f"train.out_dir={out}", "data.val_fraction=0",
        "train.sample_every=0", "train.checkpoint_every=1000", "train.batch_size=4",
        *overrides])


def quiet(config: Config) -> Trainer:
    return Trainer(config, progress=False, log=lambda _: None)


def test_training_overfits_a_handful_of_clips(toy_data, tmp_path):
    config = tiny_config(toy_data, tmp_path / "run", "train.steps=100", "train.lr=2e-3",
                         "train.cond_drop_prob=0", "train.warmup_steps=10")
    losses = np.array(quiet(config).train().losses)
    assert len(losses) == 100
    assert losses[-20:].mean() < 0.3 * losses[:10].mean()


def test_two_halves_with_resume_equal_one_run(toy_data, tmp_path):
    extra = ("train.steps=6", "train.checkpoint_every=3", "model.dropout=0.1",
             "train.lr=1e-3")
    whole = quiet(tiny_config(toy_data, tmp_path / "whole", *extra)).train()
    first = quiet(tiny_config(toy_data, tmp_path / "split", *extra)).train(until=3)
    assert first.step == 3 and first.checkpoint.name == "step_0000003"
    second = quiet(tiny_config(toy_data, tmp_path / "split", *extra)).train(resume=True)
    assert first.losses + second.losses == whole.losses
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(tmp_path / "whole" / "checkpoints" / "step_0000006" / name)
        b = load_file(tmp_path / "split" / "checkpoints" / "step_0000006" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_checkpoint_reloads_to_identical_outputs(toy_data, tmp_path):
    trainer = quiet(tiny_config(toy_data, tmp_path / "run", "train.steps=3"))
    result = trainer.train()
    config, model, path = load_model(tmp_path / "run", use_ema=True)
    assert path == result.checkpoint
    assert config == trainer.config
    x = torch.randn(2, 3, 4, 16, 16)
    t = torch.tensor([10, 900])
    ctx, pooled = torch.randn(2, 5, 384), torch.randn(2, 384)
    with torch.no_grad():
        expected = trainer.ema.model.eval()(x, t, ctx, None, pooled)
        assert torch.equal(model(x, t, ctx, None, pooled), expected)
        _, raw, _ = load_model(tmp_path / "run", use_ema=False)
        assert torch.equal(raw(x, t, ctx, None, pooled), trainer.model.eval()(x, t, ctx, None,
                                                                                pooled))


def test_keep_last_prunes_and_latest_points_at_the_newest(toy_data, tmp_path):
    quiet(tiny_config(toy_data, tmp_path / "run", "train.steps=8", "train.checkpoint_every=2",
                      "train.keep_last=2")).train()
    steps = [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert steps == [6, 8]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_0000008"
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir()
                if p.name.startswith(".")]  # no temporaries left behind


def test_a_new_run_refuses_a_folder_holding_one(toy_data, tmp_path):
    quiet(tiny_config(toy_data, tmp_path / "run", "train.steps=2")).train()
    with pytest.raises(CheckpointError, match="--resume"):
        quiet(tiny_config(toy_data, tmp_path / "run", "train.steps=4")).train()


def test_divergence_stops_and_keeps_the_last_good_checkpoint(toy_data, tmp_path):
    quiet(tiny_config(toy_data, tmp_path / "run", "train.steps=4",
                      "train.checkpoint_every=2")).train()
    exploding = tiny_config(toy_data, tmp_path / "run", "train.steps=40", "train.lr=1e30",
                            "train.grad_clip=0", "train.checkpoint_every=1")
    with pytest.raises(TrainingDiverged, match="step_0000004|step_0000005") as info:
        quiet(exploding).train(resume=True)
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert latest in str(info.value)
    weights = load_file(tmp_path / "run" / "checkpoints" / latest / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_tensorboard_has_scalars_config_and_sample_video(toy_data, tmp_path):
    config = tiny_config(toy_data, tmp_path / "run", "train.steps=4", "train.log_every=1",
                         "train.sample_every=4", "sample.steps=3", "train.log_graph=true")
    quiet(config).train()
    events = EventAccumulator(str(tmp_path / "run" / "tb"),
                              size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3, 4]
    assert "config" in tags["tensors"] and "device" in tags["tensors"]
    assert events.Graph().node  # the model graph, from a second event file in the same folder
    (video,) = events.Images("samples")
    assert video.step == 4 and video.encoded_image_string[:6] == b"GIF89a"
    assert (tmp_path / "run" / "samples" / "step_0000004.gif").exists()


def test_the_model_graph_is_traced_only_when_asked(toy_data, tmp_path):
    """Tracing the graph costs seconds at every start, so train.log_graph (off) gates it."""
    quiet(tiny_config(toy_data, tmp_path / "run", "train.steps=1")).train()
    events = EventAccumulator(str(tmp_path / "run" / "tb")).Reload()
    with pytest.raises(ValueError):
        events.Graph()


def test_auto_batch_size_reaches_the_effective_batch(toy_data, tmp_path):
    config = tiny_config(toy_data, tmp_path / "run", "train.batch_size=auto",
                         "train.effective_batch=4", "train.steps=1")
    trainer = quiet(config)
    result = trainer.train()
    assert result.micro_batch in (1, 2, 4)
    assert result.micro_batch * result.grad_accum >= 4
    sizes = []
    assert find_batch_size(lambda b: sizes.append(b), 64, torch.device("cpu"), lambda _: None) \
        in (1, 2, 4, 8, 16, 32, 64)
    assert sizes == [1, 2]  # CPU: two probes give the per-clip cost, no trial and error


@pytest.mark.parametrize("option", [
    "train.mixed_precision=bf16", "model.gradient_checkpointing=true", "model.conv_mode=full",
    "diffusion.prediction_type=v_prediction", "diffusion.min_snr_gamma=5"])
def test_training_variants_learn(toy_data, tmp_path, option):
    config = tiny_config(toy_data, tmp_path / "run", "train.steps=15", "train.lr=2e-3",
                         "train.cond_drop_prob=0", "train.warmup_steps=3", option)
    losses = np.array(quiet(config).train().losses)
    assert np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()
