"""`t2s-torch train`, `sample`, `visualize`, `doctor` through the real console script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.data.toy import make_toy_dataset
from shared.data.video import read_video

TOOL = str(Path(sys.executable).parent / "t2s-torch")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    make_toy_dataset(data, n=6, num_prompts=2, num_frames=8, height=36, width=64,
                     progress=False)
    run_dir = root / "run"
    result = run("train", "--data", str(data), "--preset", "tiny", "--out", str(run_dir),
                 "--steps", "4", "--set", "train.checkpoint_every=2",
                 "--set", "train.sample_every=4", "--set", "sample.steps=3", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "trained to step 4" in result.stdout
    return data, run_dir


@pytest.mark.parametrize("verb", ["train", "sample", "visualize", "doctor", "config", "eval"])
def test_every_verb_has_help(verb):
    result = run(verb, "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout
    assert len(result.stdout.splitlines()) > 5


def test_train_writes_checkpoints_samples_and_logs(trained_run):
    _, run_dir = trained_run
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert (run_dir / "checkpoints" / "step_0000002" / "model.safetensors").exists()
    assert read_video(run_dir / "samples" / "step_0000004.gif")[0].shape[0] == 4
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == 4


def test_resume_continues_from_the_run_folder(trained_run, tmp_path):
    _, run_dir = trained_run
    result = run("train", "--out", str(run_dir), "--steps", "5", "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "trained to step 5" in result.stdout


@pytest.mark.slow
def test_sample_writes_gifs_captions_and_a_grid(trained_run, tmp_path):
    _, run_dir = trained_run
    out = tmp_path / "samples"
    result = run("sample", "--checkpoint", str(run_dir), "--out", str(out), "--num-samples", "2",
                 "--steps", "3", "--eta", "0", "--seed", "7", "--quiet", "hello", "thanks friend")
    assert result.returncode == 0, result.stderr
    gifs = sorted(p.name for p in out.glob("0*.gif"))
    assert gifs == ["000_hello.gif", "001_hello.gif", "002_thanks_friend.gif",
                    "003_thanks_friend.gif"]
    assert (out / "002_thanks_friend.txt").read_text().strip() == "thanks friend"
    frames, _ = read_video(out / "000_hello.gif")
    assert frames.shape == (4, 16, 16, 3)
    assert read_video(out / "grid.gif")[0].shape[1] > 16
    assert result.stdout.strip().endswith(f"look at them: {out / 'index.html'}")
    page = (out / "index.html").read_text()
    assert all(f'src="{name}"' in page for name in gifs)
    assert "7, batch row 3" in page and "thanks friend" in page
    again = tmp_path / "again"
    run("sample", "--checkpoint", str(run_dir), "--out", str(again), "--num-samples", "2",
        "--steps", "3", "--eta", "0", "--seed", "7", "--quiet", "hello", "thanks friend")
    assert (again / "000_hello.gif").read_bytes() == (out / "000_hello.gif").read_bytes()


def test_sample_set_changes_a_sampling_field_and_refuses_others(trained_run, tmp_path):
    _, run_dir = trained_run
    out = tmp_path / "s"
    result = run("sample", "--checkpoint", str(run_dir), "--out", str(out), "--steps", "2",
                 "--set", "sample.timestep_spacing=leading", "--quiet", "hello")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "sampling.json").read_text())["timestep_spacing"] == "leading"
    assert "<td>timestep_spacing</td><td>leading</td>" in (out / "index.html").read_text()
    one_line_error(run("sample", "--checkpoint", str(run_dir), "--out", str(out),
                       "--set", "model.base_channels=8", "hello"), "sampling fields")


def test_visualize_prints_the_block_table():
    result = run("visualize", "--preset", "tiny")
    assert result.returncode == 0, result.stderr
    assert "down_blocks.0" in result.stdout and "fwd GFLOPs" in result.stdout
    total = [line for line in result.stdout.splitlines() if line.startswith("total")][0]
    # the tiny UNet's parameter count (hand-checked in test_unet): 416,963 + text_align, 2 heads x
    # 4 transformers
    assert "416,971" in total


@pytest.mark.slow
def test_doctor_passes_on_this_machine():
    result = run("doctor", "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("[ok]") >= 5 and "[FAIL]" not in result.stdout
    speed = re.search(r"\[ok\] matmul speed: fp32 2048² matmul (\d+) GFLOP/s .* about (\d+) min",
                      result.stdout)
    assert speed and int(speed.group(1)) > 1 and int(speed.group(2)) >= 1, result.stdout


def test_bad_input_gives_one_line_errors(trained_run, tmp_path):
    data, run_dir = trained_run
    one_line_error(run("sample", "--checkpoint", str(tmp_path / "nope"), "hi"),
                   "no such checkpoint")
    (tmp_path / "empty").mkdir()
    one_line_error(run("train", "--data", str(tmp_path / "empty"), "--preset", "tiny", "--out",
                       str(tmp_path / "r")), "no usable clips")
    one_line_error(run("train", "--data", str(data), "--preset", "tiny", "--out",
                       str(tmp_path / "r2"), "--device", "tpu"), "tpu", "--device")
    one_line_error(run("train", "--data", str(data), "--preset", "tiny", "--out",
                       str(tmp_path / "r3"), "--device", "cuda"), "--device cpu")
    other = tmp_path / "other"
    other.mkdir()
    for f in (run_dir / "checkpoints" / "step_0000004").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    config = json.loads((other / "config.json").read_text())
    config["model"]["base_channels"] = 32
    (other / "config.json").write_text(json.dumps(config))
    one_line_error(run("sample", "--checkpoint", str(other), "hello", "--quiet"),
                   "another model config")
    one_line_error(run("train", "--out", str(tmp_path / "fresh"), "--resume"),
                   "nothing to resume")


def test_sample_takes_the_latest_pointer_and_names_a_damaged_file(trained_run, tmp_path):
    _, run_dir = trained_run
    result = run("sample", "--checkpoint", str(run_dir / "checkpoints" / "latest"), "--out",
                 str(tmp_path / "s"), "--steps", "2", "--num-samples", "1", "--device", "cpu",
                 "--quiet", "hi")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s" / "grid.gif").exists()
    copy = tmp_path / "copy"
    shutil.copytree(run_dir / "checkpoints" / "step_0000004", copy)
    weights = copy / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # a copy cut short
    one_line_error(run("sample", "--checkpoint", str(copy), "--device", "cpu", "hi"),
                   f"{weights}: damaged or not a safetensors file")
    one_line_error(run("sample", "--checkpoint", str(run_dir / "config.json"), "hi"),
                   "not a checkpoint or a `latest` pointer", "checkpoints/latest")
