"""Fine-tuning the tiny inflated Stable Diffusion on toy clips: what trains, that it learns,
exact resume, the saved model, validation GIFs and TensorBoard."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import device_choice
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from shared.app.errors import TrainingInterrupted
from shared.data.video import read_video
from shared.model.checkpoint import CheckpointError
from t2s_torch.tav.checkpoint import WEIGHTS_FILE, write_model
from t2s_torch.tav.inflate import InflatedUNet
from t2s_torch.tav.models import load_base_model
from t2s_torch.tav.pipeline import TAVPipeline
from t2s_torch.tav.sample import load_finetuned
from t2s_torch.tav.train import TAVTrainer, training_target


def quiet(config) -> TAVTrainer:
    return TAVTrainer(config, progress=False, log=lambda _: None, device=device_choice.chosen())


def clips_and_captions(trainer: TAVTrainer) -> tuple[np.ndarray, list[str]]:
    return np.stack([trainer.dataset[i][0] for i in range(len(trainer.dataset))]), \
        trainer.dataset.captions


@torch.no_grad()
def held_loss(trainer: TAVTrainer, draws: int = 16) -> float:
    """The training loss on the training clips over a fixed set of draws (timesteps, noise),
    so two calls differ only by the weights."""
    video, captions = clips_and_captions(trainer)
    g = torch.Generator(trainer.device).manual_seed(1234)
    return float(torch.stack([trainer.loss(video, captions, g) for _ in range(draws)]).mean())


@pytest.fixture(scope="module")
def short_run(make_config, tmp_path_factory):
    """Three steps with validation at the end; the trainer and its weights before training."""
    out = tmp_path_factory.mktemp("short_run")
    trainer = quiet(make_config(out, validation_steps=3, validation_prompts=("hello", "thanks")))
    before = {n: t.detach().clone() for n, t in trainer.unet.unet.state_dict().items()}
    frozen = {n: t.detach().clone() for part in (trainer.pipeline.vae,
                                                 trainer.pipeline.text_encoder)
              for n, t in part.state_dict().items()}
    result = trainer.train()
    return trainer, result, before, frozen, out


def test_only_the_trainable_modules_change(short_run):
    trainer, result, before, frozen, _ = short_run
    assert result.step == 3 and len(result.losses) == 3
    after = trainer.unet.unet.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == set(trainer.trainable)
    assert all(after[n].dtype == torch.float32 for n in trainer.trainable)
    now = {n: t for part in (trainer.pipeline.vae, trainer.pipeline.text_encoder)
           for n, t in part.state_dict().items()}
    assert all(torch.equal(frozen[n], now[n]) for n in frozen)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_loss_on_the_training_clips_falls(prediction, make_config, tiny_sd, tiny_sd_v,
                                              tmp_path):
    model = tiny_sd if prediction == "epsilon" else tiny_sd_v
    trainer = quiet(make_config(tmp_path, pretrained_model_name_or_path=str(model),
                                max_train_steps=40, learning_rate=3e-3, caption_dropout=0.0))
    assert trainer.prediction_type == prediction
    start = held_loss(trainer)
    losses = trainer.train().losses
    assert all(np.isfinite(losses))
    assert held_loss(trainer) < 0.92 * start


def test_training_targets_follow_the_scheduler(tiny_sd, tiny_sd_v):
    x0, noise = torch.randn(3, 4, 2, 8, 8), torch.randn(3, 4, 2, 8, 8)
    t = torch.tensor([0, 500, 999])
    eps = load_base_model(str(tiny_sd)).noise_scheduler
    assert torch.equal(training_target(eps, x0, noise, t), noise)
    v = load_base_model(str(tiny_sd_v)).noise_scheduler
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)[t].float().view(-1, 1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    assert torch.allclose(training_target(v, x0, noise, t), expected, atol=1e-5)


def test_resume_continues_the_same_run(make_config, tmp_path):
    whole = quiet(make_config(tmp_path / "whole", max_train_steps=4)).train()
    first = quiet(make_config(tmp_path / "split", max_train_steps=4)).train(until=2)
    assert first.checkpoint.name == "step_0000002" and first.model_dir is None
    second = quiet(make_config(tmp_path / "split", max_train_steps=4,
                               resume_from_checkpoint="latest")).train()
    assert second.step == 4
    assert first.losses + second.losses == pytest.approx(whole.losses, abs=1e-6)
    a = load_file(tmp_path / "whole" / WEIGHTS_FILE)
    b = load_file(tmp_path / "split" / WEIGHTS_FILE)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_second_run_into_the_same_folder_is_refused(make_config, tmp_path):
    quiet(make_config(tmp_path, max_train_steps=2)).train(until=1)
    with pytest.raises(CheckpointError, match="resume_from_checkpoint latest"):
        quiet(make_config(tmp_path, max_train_steps=2)).train()


def test_validation_gifs_and_tensorboard(short_run):
    _, _, _, _, out = short_run
    frames, _ = read_video(out / "logs" / "samples" / "step_0000003.gif")
    assert frames.shape[0] == 4  # num_frames of the validation samples
    events = list((out / "logs").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(out / "logs"), size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert "validation/samples" in acc.Tags()["images"]


def test_saved_model_reloads_and_samples_the_same_frames(short_run, tiny_sd, tmp_path):
    trainer, result, _, _, out = short_run
    assert result.model_dir == out
    config = json.loads((out / "config.json").read_text())
    assert config["weights"] == "trainable" and config["num_frames"] == 4
    assert config["trainable_modules"] == ["attn1.to_q", "attn2.to_q", "attn_temp"]
    settings = dict(prompts=["hello"], num_frames=4, height=16, width=16, steps=4, guidance=3.0,
                    seed=7)
    trainer.unet.eval()
    expected = trainer.pipeline.sample(**settings)
    pipeline, saved = load_finetuned(out, device=trainer.device)
    assert saved.step == 3
    assert (pipeline.sample(**settings) - expected).abs().max() <= 1e-5
    # the saved weights make the difference: the base model, inflated afresh, samples otherwise
    base = load_base_model(str(tiny_sd))
    fresh = TAVPipeline(InflatedUNet(base.unet).eval(), base.vae, base.text_encoder,
                        base.tokenizer, base.scheduler_config)
    assert (fresh.sample(**settings) - expected.cpu()).abs().max() > 1e-3
    # --save_full writes every tensor and reloads to the same model
    full = write_model(tmp_path / "full", trainer.unet.unet,
                       type(saved)(**{**saved.__dict__, "weights": "full"}))
    pipeline, _ = load_finetuned(full, device=trainer.device)
    assert (pipeline.sample(**settings) - expected).abs().max() <= 1e-5
    with safe_open(str(full / WEIGHTS_FILE), "pt") as f:
        assert set(f.keys()) == set(trainer.unet.unet.state_dict())


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision is fixed once set; a test
    of another precision resets it before and after (as accelerate's own tests do)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_bf16_keeps_trainable_weights_fp32_and_trains(make_config, tiny_sd, tmp_path,
                                                      fresh_accelerate_state):
    trainer = quiet(make_config(tmp_path, mixed_precision="bf16", validation_steps=2,
                                max_train_steps=2))
    original = load_base_model(str(tiny_sd)).unet.state_dict()
    for name, param in trainer.unet.unet.named_parameters():
        if name in trainer.trainable:
            assert param.dtype == torch.float32
            if name in original:  # not rounded through bf16 on the way
                assert torch.equal(param.cpu(), original[name]), name
        else:
            assert param.dtype == torch.bfloat16
    assert trainer.pipeline.vae.dtype == trainer.pipeline.text_encoder.dtype == torch.bfloat16
    result = trainer.train()
    assert all(np.isfinite(result.losses))
    assert (tmp_path / "logs" / "samples" / "step_0000002.gif").exists()


def test_sigterm_stops_after_the_step_with_a_checkpoint_of_it(make_config, tmp_path):
    """A real SIGTERM to this process once the first checkpoint exists (as a scheduler sends
    it); the resumed run then matches one that was never stopped."""
    out = tmp_path / "run"
    trainer = quiet(make_config(out, max_train_steps=200, checkpointing_steps=2))

    def kill_after_first_checkpoint() -> None:
        while not (out / "checkpoints" / "latest").exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_after_first_checkpoint, daemon=True).start()
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()
    stopped = trainer.step
    assert 2 <= stopped < 200 and info.value.exit_code == 128 + signal.SIGTERM
    assert str(info.value).startswith(f"stopped by SIGTERM at step {stopped}: saved ")
    assert info.value.checkpoint == out / "checkpoints" / f"step_{stopped:07d}"
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:07d}"
    resumed = quiet(make_config(out, max_train_steps=200, checkpointing_steps=2,
                                resume_from_checkpoint="latest")).train(until=stopped + 1)
    straight = quiet(make_config(tmp_path / "straight", max_train_steps=200,
                                 checkpointing_steps=2)).train(until=stopped + 1)
    assert resumed.losses == pytest.approx(straight.losses[-1:], abs=1e-6)
    a, b = (load_file(r.checkpoint / WEIGHTS_FILE) for r in (resumed, straight))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_skips_a_truncated_newest_checkpoint(make_config, tmp_path):
    quiet(make_config(tmp_path, max_train_steps=4, checkpointing_steps=1)).train(until=2)
    damaged = tmp_path / "checkpoints" / "step_0000002" / WEIGHTS_FILE
    damaged.write_bytes(damaged.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="newest intact checkpoint is step 1: resume from "
                                              "it with `--resume_from_checkpoint "):
        quiet(make_config(tmp_path, max_train_steps=4, checkpointing_steps=1, strict=True,
                          resume_from_checkpoint="latest")).train()
    lines: list[str] = []
    trainer = TAVTrainer(make_config(tmp_path, max_train_steps=4, checkpointing_steps=1,
                                     resume_from_checkpoint="latest"), progress=False,
                         log=lines.append, device=device_choice.chosen())
    assert trainer.train(until=3).step == 3
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and str(damaged) in warnings[0] and "step 1" in warnings[0]
    damaged.write_bytes(damaged.read_bytes()[:-100])  # step 2 was written again; cut it again
    with pytest.raises(CheckpointError, match=re.escape(f"{damaged}: damaged or not a")):
        load_finetuned(damaged.parent)
