"""The shared verbs through the real console scripts of both backends."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from shared.model.checkpoint import resolve_checkpoint

BIN = Path(sys.executable).parent


def run(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("tool", ["t2s-torch", "t2s-mlx"])
def test_help_lists_the_verbs(tool):
    result = run(tool, "--help")
    assert result.returncode == 0
    for verb in ("config", "data", "eval", "demo"):
        assert verb in result.stdout


def test_config_prints_overridden_valid_json():
    result = run("t2s-torch", "config", "--preset", "tiny", "--set", "train.lr=3e-4",
                 "--set", "model.conv_mode=full")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["train"]["lr"] == 3e-4 and config["model"]["conv_mode"] == "full"


def test_config_error_is_one_clean_line(tmp_path):
    result = run("t2s-mlx", "config", "--preset", "tiny", "--set", "model.num_heads=3")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("Error:")]
    assert "num_heads=3" in result.stderr and "Traceback" not in result.stderr
    missing = run("t2s-torch", "config", "--config", str(tmp_path / "none.json"))
    assert missing.returncode != 0 and "none.json" in missing.stderr


def test_toy_data_is_the_same_from_both_tools_and_scores_as_faithful(tmp_path):
    args = ["--n", "8", "--num-prompts", "4", "--frames", "12", "--height", "72", "--width",
            "128", "--seed", "5"]
    for tool in ("t2s-torch", "t2s-mlx"):
        result = run(tool, "data", "toy", str(tmp_path / tool), *args)
        assert result.returncode == 0, result.stderr
        assert "wrote 8 clips (4 distinct captions)" in result.stdout
    torch_files = sorted(p.name for p in (tmp_path / "t2s-torch").iterdir())
    assert len([n for n in torch_files if n.endswith(".gif")]) == 8
    assert len([n for n in torch_files if n.endswith(".txt")]) == 9  # + prompts.txt
    for name in torch_files:
        assert (tmp_path / "t2s-torch" / name).read_bytes() == \
            (tmp_path / "t2s-mlx" / name).read_bytes()

    scores = tmp_path / "scores.json"
    result = run("t2s-mlx", "eval", str(tmp_path / "t2s-torch"), "--json", str(scores))
    assert result.returncode == 0, result.stderr
    assert "name their own sentence among 4 (chance 25.0%" in result.stdout
    report = json.loads(scores.read_text())
    assert report["accuracy"] == 1.0 and report["num_clips"] == 8
    assert len(report["clips"]) == 8


def test_toy_data_holds_out_its_split_and_says_so(tmp_path):
    out = tmp_path / "toy"
    result = run("t2s-torch", "data", "toy", str(out), "--n", "30", "--frames", "4",
                 "--height", "36", "--width", "64", "--max-words", "2", "--seed", "4")
    assert result.returncode == 0, result.stderr
    assert "held out 20 sentences of 2 words" in result.stdout
    split = json.loads((out / "split.json").read_text())
    assert split["seed"] == 4 and len(split["longer"]) == 20
    captions = [p.read_text().strip() for p in out.glob("toy_*.txt")]
    assert len(captions) == 30 and not set(captions) & set(split["unseen"])
    assert {len(c.split()) for c in captions} == {1, 2}


def test_eval_of_an_empty_folder_says_so(tmp_path):
    result = run("t2s-torch", "eval", str(tmp_path))
    assert result.returncode != 0 and "no clips" in result.stderr


def test_mlx_cli_does_not_import_torch():
    code = "import sys, t2s_mlx.cli; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_tools_import_no_framework_until_a_verb_runs():
    """Each tool's backend object is built at import; its members import torch / MLX on call."""
    code = ("import sys, t2s_torch.cli, t2s_mlx.cli, text2sign.demo; "
            "print(sorted({'torch', 'mlx', 'transformers', 'diffusers'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_each_tool_hands_its_backend_object_to_the_shared_verbs():
    from click.testing import CliRunner

    from shared.app.backend import Backend
    from shared.app.cli import make_group
    from t2s_mlx.cli import main as mlx_main
    from t2s_torch.cli import main as torch_main

    for tool, name in ((torch_main, "t2s_torch"), (mlx_main, "t2s_mlx")):
        backend = tool.context_settings["obj"]
        assert isinstance(backend, Backend) and backend.name == name
        assert backend.tool == tool.name

    def unused(*args, **kwargs):
        raise AssertionError("not this verb's member")

    checked = []
    fake = Backend(name="fake", tool="t2s-fake", trainer=unused, sample_checkpoint=unused,
                   latent_vae=unused, load_i3d=unused,
                   run_checks=lambda device: checked.append(device) or [("device", True, "ok")])
    result = CliRunner().invoke(make_group("t2s-fake", "a fake backend", fake),
                                ["doctor", "--device", "cpu"])
    assert result.exit_code == 0 and result.output == "[ok] device: ok\n" and checked == ["cpu"]


def test_t2s_demo_picks_mlx_on_apple_silicon_only(monkeypatch):
    from text2sign import demo

    real_find_spec = demo.importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "mlx" else real_find_spec(name, *a))
    monkeypatch.setattr(demo.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(demo.platform, "machine", lambda: "arm64")
    assert demo.default_backend().name == "t2s_mlx"
    monkeypatch.setattr(demo.platform, "machine", lambda: "x86_64")
    assert demo.default_backend().name == "t2s_torch"
    monkeypatch.setattr(demo.platform, "system", lambda: "Linux")
    assert demo.default_backend().name == "t2s_torch"
    result = run("t2s-demo", "--help")
    assert result.returncode == 0 and "Usage: t2s-demo demo [OPTIONS]" in result.stdout


@pytest.mark.slow
def test_demo_trains_samples_and_scores_seen_unseen_and_longer(tmp_path):
    tool = "t2s-torch"  # the demo is shared code; t2s-mlx's train and sample have their tests
    args = ("demo", "--out", str(tmp_path / "demo"), "--n", "8", "--quiet", "--samples", "1",
            "--set", "train.steps=2", "--set", "sample.steps=2", "--set", "train.batch_size=4")
    result = run(tool, *args)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "wrote 8 clips" in out and "training: 2 steps" in out
    for name in ("seen", "unseen", "longer"):
        line = next(x for x in out.splitlines() if x.startswith(f"{name}: "))
        assert "of 20 clips name their own sentence among 20" in line and " ± " in line
        assert "by position 1: " in line
    assert "3: " in next(x for x in out.splitlines() if x.startswith("longer: "))
    data = tmp_path / "demo" / "data"
    split = json.loads((data / "split.json").read_text())
    trained = {p.read_text().strip() for p in data.glob("toy_*.txt")}
    assert trained and not trained & set(split["unseen"])
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert set(report["sets"]) == {"seen", "unseen", "longer"}
    assert report["sets"]["unseen"]["num_clips"] == 20
    unseen = tmp_path / "demo" / "samples" / "unseen"
    assert len(list(unseen.glob("0*.gif"))) == 20 and (unseen / "grid.gif").exists()
    assert {p.read_text().strip() for p in unseen.glob("0*.txt")} == set(split["unseen"])
    assert "Loading weights" not in result.stderr  # --quiet silences transformers' bar too
    serve = out.splitlines()[-1]  # it ends with the command that serves its model
    run_dir = tmp_path / "demo" / "run-toy"
    assert serve == f"type your own sentences: {tool} serve --checkpoint {run_dir}"
    assert resolve_checkpoint(run_dir).parent.name == "checkpoints"

    # One page shows every sample of the three sets, its caption, score and reference clip.
    samples = tmp_path / "demo" / "samples"
    assert f"every sample with its caption, score and a reference clip: {samples / 'index.html'}" \
        in out
    page = (samples / "index.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert all((samples / unquote(src)).is_file() for src in sources)
    clips = sorted(samples.rglob("0*.gif"))
    assert len(clips) == 60 and len(sources) == 120  # each clip beside its reference
    assert {(samples / unquote(src)).resolve() for src in sources} >= {c.resolve() for c in clips}
    for caption in [*split["unseen"], *split["longer"]]:
        assert f'<p class="caption">{html.escape(caption)}</p>' in page
    assert page.count("names its sentence") == 60
    assert (unseen / "index.html").read_text().count("names its sentence") == 20

    # `eval` on the samples folder scores each set apart, as the demo did.
    scores = tmp_path / "scores.json"
    again = run("t2s-mlx", "eval", str(tmp_path / "demo" / "samples"), "--json", str(scores))
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert [x.split(":")[0] for x in lines[:3]] == ["seen", "unseen", "longer"]
    assert lines[3] == f"every clip with its caption and score: {samples / 'index.html'}"
    assert json.loads(scores.read_text())["sets"]["unseen"]["accuracy"] == \
        report["sets"]["unseen"]["accuracy"]
    rescored = (samples / "index.html").read_text()  # the scores again, the references kept
    assert sorted(re.findall(r'src="([^"]+)"', rescored)) == sorted(sources)
    assert rescored.count("names its sentence") == 60 and "text2sign demo: toy" in rescored
    again = run(tool, *args)
    assert "found 8 clips" in again.stdout and "found a finished run" in again.stdout


def test_mixed_precision_flag_reaches_the_run_config(tmp_path):
    data = tmp_path / "data"
    assert run("t2s-torch", "data", "toy", str(data), "--n", "4", "--num-prompts", "2",
               "--frames", "4", "--height", "36", "--width", "64").returncode == 0
    common = ["train", "--data", str(data), "--preset", "tiny", "--steps", "1", "--quiet"]
    refused = run("t2s-mlx", *common, "--out", str(tmp_path / "mlx"), "--mixed-precision", "fp16")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "mixed_precision=bf16" in refused.stderr
    done = run("t2s-torch", *common, "--out", str(tmp_path / "torch"), "--mixed-precision", "bf16")
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "torch" / "config.json").read_text())
    assert saved["train"]["mixed_precision"] == "bf16"
