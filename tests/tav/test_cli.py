"""`t2s-torch finetune-tav` and `sample-tav` through click, on the tiny model and toy clips."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from shared.data.video import read_video
from t2s_torch.cli import main
from t2s_torch.tav.checkpoint import WEIGHTS_FILE
from t2s_torch.tav.sample import load_finetuned


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_finetune_two_steps_then_sample_and_edit(tiny_sd, toy_clips, tmp_path):
    out = tmp_path / "run"
    result = invoke("finetune-tav", "--pretrained_model_name_or_path", str(tiny_sd),
                    "--data_root", str(toy_clips), "--output_dir", str(out),
                    "--max_train_steps", "2", "--num_frames", "4", "--height", "16",
                    "--width", "16", "--validation_steps", "2",
                    "--validation_num_inference_steps", "2", "--validation_prompts", "hello",
                    "--trainable_modules", "attn1.to_q,attn_temp", "--gradient_checkpointing",
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert "trained to step 2" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["trainable_modules"] == ["attn1.to_q", "attn_temp"]
    assert config["training"]["gradient_checkpointing"] is True
    with safe_open(str(out / WEIGHTS_FILE), "pt") as f:
        keys = set(f.keys())
    assert keys and all(".attn1.to_q." in k or ".attn_temp." in k for k in keys)
    assert (out / "logs" / "samples" / "step_0000002.gif").exists()

    samples = tmp_path / "samples"
    clip = sorted(toy_clips.glob("*.gif"))[0]
    result = invoke("sample-tav", "--model", str(out), "--out", str(samples), "--steps", "3",
                    "--num_samples", "2", "--invert", str(clip), "--quiet", "hello", "thanks")
    assert result.exit_code == 0, result.output
    gifs = sorted(p.name for p in samples.glob("*.gif"))
    assert gifs == ["000_hello.gif", "001_hello.gif", "002_thanks.gif", "003_thanks.gif",
                    "grid.gif"]
    frames, _ = read_video(samples / "000_hello.gif")
    assert frames.shape == (4, 16, 16, 3)
    assert (samples / "002_thanks.txt").read_text().strip() == "thanks"


def test_offline_without_the_base_model_is_one_clear_error(monkeypatch, toy_clips, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "text2sign-tests/no-such-stable-diffusion"
    result = CliRunner().invoke(main, ["finetune-tav", "--pretrained_model_name_or_path", name,
                                       "--data_root", str(toy_clips), "--output_dir",
                                       str(tmp_path / "run"), "--height", "16", "--width", "16"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert name in errors[0] and "--pretrained_model_name_or_path" in errors[0]


@pytest.mark.parametrize("args, message", [
    (["--trainable_modules", "attn9"], "attn9 matches no module"),
    (["--height", "20"], "multiples of 8"),
])
def test_bad_settings_are_user_errors(tiny_sd, toy_clips, tmp_path, args, message):
    result = CliRunner().invoke(main, ["finetune-tav", "--pretrained_model_name_or_path",
                                       str(tiny_sd), "--data_root", str(toy_clips),
                                       "--output_dir", str(tmp_path), *args])
    assert result.exit_code == 1 and message in result.output, result.output


def test_python_dash_m_runs_the_same_command(capsys):
    from t2s_torch.tav.train import main as module_main

    with pytest.raises(SystemExit) as exit_:
        module_main(["--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "python -m t2s_torch.tav.train" in help_text
    assert "--pretrained_model_name_or_path" in help_text and "--max_train_steps" in help_text


def launch_two(tiny_sd: Path, clips: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """`accelerate launch` of the training module on two CPU processes (gloo)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
               "--num_processes=2", "--num_machines=1", "--mixed_precision=no",
               "--dynamo_backend=no", f"--main_process_port={port}", "-m",
               "t2s_torch.tav.train", "--pretrained_model_name_or_path", str(tiny_sd),
               "--data_root", str(clips), "--output_dir", str(out), "--num_frames", "4",
               "--height", "16", "--width", "16", "--train_batch_size", "1",
               "--caption_dropout", "0.5", "--quiet", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_two_processes_through_accelerate_launch(tiny_sd, toy_clips, tmp_path):
    """Data-parallel on CPU (gloo): the same module, launched twice; rank 0 alone reports and
    writes the model, checkpoints, TensorBoard and samples. A run stopped after step 1 and
    resumed on two processes ends with the same weights as the run that never stopped."""
    out = tmp_path / "run"
    result = launch_two(tiny_sd, toy_clips, out, "--max_train_steps", "2",
                        "--validation_steps", "2", "--validation_num_inference_steps", "2",
                        "--checkpointing_steps", "1")
    assert result.stdout.count("trained to step 2") == 1
    assert "cpu:0" in result.stdout  # a gloo group, not two lone processes
    assert len(list((out / "logs").glob("events.out.tfevents.*"))) == 1
    assert (out / "logs" / "samples" / "step_0000002.gif").exists()
    assert (out / "checkpoints" / "step_0000001" / WEIGHTS_FILE).exists()
    pipeline, config = load_finetuned(out)
    assert config.step == 2
    video = pipeline.generate(["hello"], 4, 16, 16, steps=2, guidance=1.0)
    assert video.shape == (1, 4, 16, 16, 3)

    split = tmp_path / "split"
    launch_two(tiny_sd, toy_clips, split, "--max_train_steps", "1", "--checkpointing_steps", "1")
    launch_two(tiny_sd, toy_clips, split, "--max_train_steps", "2", "--checkpointing_steps", "1",
               "--resume_from_checkpoint", "latest")
    whole, resumed = load_file(out / WEIGHTS_FILE), load_file(split / WEIGHTS_FILE)
    assert whole.keys() == resumed.keys()
    first = load_file(split / "checkpoints" / "step_0000001" / WEIGHTS_FILE)
    assert any(not torch.equal(first[k], whole[k]) for k in whole)  # step 2 changed weights
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
