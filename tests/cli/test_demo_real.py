"""`demo --data DIR`: the main job on a folder of real captioned clips, through the console
script, on wide MP4s of a real photo of a person (benchmarks/personclips.py) that the test makes;
MediaPipe runs for real."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason='pose metrics need ".[pose]"')
pytest.importorskip("skimage", reason='the person clips need ".[pose]"')

from benchmarks import personclips as pc  # noqa: E402
from shared.app.demo_real import pick_captions  # noqa: E402
from shared.data.clips import Clip  # noqa: E402
from shared.data.preprocess import preprocess_clip  # noqa: E402
from shared.data.video import read_video  # noqa: E402
from shared.evaluation.metrics import noise_ratio, psnr  # noqa: E402

BIN = Path(sys.executable).parent
TINY = ("--set", "train.steps=2", "--set", "train.batch_size=2", "--set", "sample.steps=2",
        "--set", "model.base_channels=8", "--set", "model.channel_mult=[1,2]",
        "--set", "model.attention_levels=[1]", "--set", "model.num_heads=2",
        "--set", "data.image_size=16", "--set", "data.num_frames=4")


def run(*args: str, tool: str = "t2s-torch") -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-real")
    data = pc.write_two_take_set(root / "clips", {"sway": pc.sway, "bow": pc.bow}, frames=16)
    out = root / "out"
    result = run("demo", "--data", str(data), "--out", str(out), "--quiet", *TINY)
    assert result.returncode == 0, result.stderr
    return data, out, result


def test_real_demo_scores_every_caption_against_its_clips(demo):
    data, out, result = demo
    lines = result.stdout.splitlines()
    assert lines[0] == f"real clips: 4 clips of 2 captions in {data}; sampling 2 captions"
    assert lines[-1] == f"type your own sentences: t2s-torch serve --checkpoint {out / 'run-real'}"
    report = json.loads((out / "report.json").read_text())
    assert report["preset"] == "real" and report["backend"] == "t2s_torch"
    assert report["sample"]["num_samples"] == 1
    clips = report["reference_eval"]["clips"]
    assert sorted(c["caption"] for c in clips) == ["bow", "sway"]
    for clip in clips:  # paired: both takes of its caption; shuffled: the other caption's
        assert {Path(p).stem.rsplit("_", 1)[0] for p in clip["references"]} == {clip["caption"]}
        assert clip["caption"] not in {Path(p).stem.rsplit("_", 1)[0]
                                       for p in clip["shuffled_references"]}
    figures = report["figures"]
    for key in ("ssim", "psnr"):  # the gap is the mean of each clip's own difference
        diffs = [c["shuffled"][key] - c["paired"][key] for c in clips]
        assert figures[key]["gap"] == pytest.approx(np.mean(diffs))
        assert figures[key]["gap_se"] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(2))
        assert figures[key]["paired"] == pytest.approx(np.mean([c["paired"][key]
                                                                for c in clips]))
    assert 0.0 <= figures["body_frames"] <= 1.0
    assert any(line.startswith("generated frames with a body: ") for line in lines)
    assert any(line.startswith("SSIM: paired ") and "standard errors" in line for line in lines)


def test_real_demo_shows_each_sample_beside_its_reference_as_the_model_sees_it(demo):
    data, out, _ = demo
    samples = out / "samples"
    page = (samples / "index.html").read_text()
    sources = {(samples / unquote(s)).resolve() for s in re.findall(r'src="([^"]+)"', page)}
    generated = sorted(samples.glob("0*.gif"))
    references = sorted((out / "references").glob("*.gif"))
    assert len(generated) == 2 and len(references) == 2
    assert sources == {p.resolve() for p in [*generated, *references]}
    for ref in references:  # the caption's first take through the training transform (GIF's
        source, _ = read_video(data / f"{ref.stem}_a.mp4")  # palette: near, not equal)
        other = next(p for p in data.glob("*_a.mp4") if p.stem != f"{ref.stem}_a")
        shown = read_video(ref)[0]
        assert psnr(shown, preprocess_clip(source, 4, 16)) > 30
        assert psnr(shown, preprocess_clip(read_video(other)[0], 4, 16)) < 25
    report = json.loads((out / "report.json").read_text())
    assert report["figures"]["frame_noise"] == pytest.approx(
        noise_ratio([read_video(p)[0] for p in generated],
                       [read_video(p)[0] for p in references]))


def test_real_demo_reuses_a_finished_run_and_needs_data_for_the_real_preset(demo, tmp_path):
    data, out, _ = demo
    again = run("demo", "--data", str(data), "--out", str(out), "--quiet", "--no-pose", *TINY)
    assert again.returncode == 0, again.stderr
    assert "training: found a finished run" in again.stdout
    assert "generated frames with a body: n/a (pose not computed)" in again.stdout
    refused = run("demo", "--preset", "real", "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "--data DIR" in refused.stderr


def test_a_caption_subset_is_fixed_by_the_seed():
    groups = {f"word {i}": [Clip(Path(f"{i}.mp4"), f"Word {i}")] for i in range(30)}
    first = pick_captions(groups, 5, seed=0)
    assert first == pick_captions(groups, 5, seed=0) and len(set(first)) == 5
    assert first != pick_captions(groups, 5, seed=1)
    assert pick_captions(groups, 0, seed=0) == [groups[k][0].caption for k in sorted(groups)]


def test_real_demo_runs_on_mlx_with_the_same_report(demo, tmp_path):
    data, _, _ = demo
    out = tmp_path / "mlx"
    result = run("demo", "--data", str(data), "--out", str(out), "--quiet", "--no-pose", *TINY,
                 tool="t2s-mlx")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == "t2s_mlx" and report["figures"]["clips"] == 2
    assert (out / "run-real" / "checkpoints" / "latest").exists()
    assert report["figures"]["ssim"]["gap_se"] is not None
