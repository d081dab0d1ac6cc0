"""`benchmarks/run.py --quick`: the CI smoke run. No speed assertions (the machine is shared);
what must hold is the bookkeeping: every row present, every figure finite, the derived figures
consistent with the measured ones and with the analytic FLOP count."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from shared.config import apply_overrides, preset
from shared.model.flops import num_parameters, training_flops_per_sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_reports_every_row_consistently(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                             "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["ceilings"]) == {"torch/cpu", "mlx/cpu"}
    for ceiling in report["ceilings"].values():
        assert ceiling["matmul_gflops"] > 0 and ceiling["conv3d_gflops"] > 0
        # measured before and after the rows; the rows are held to the mean of the two
        for key in ("matmul_gflops", "conv3d_gflops"):
            ends = (ceiling["before"][key], ceiling["after"][key])
            assert min(ends) > 0 and ceiling[key] == pytest.approx(sum(ends) / 2)

    rows = report["rows"]
    ours = [r for r in rows if r["model"] == "ours"]
    assert {(r["backend"], r["conv_mode"], r["checkpointing"]) for r in ours} == {
        (b, m, c) for b in ("torch", "mlx") for m, c in
        (("factorized", False), ("factorized", True), ("full", False))}
    # the peer at our widths, then at widths that bring its FLOPs per clip near ours
    peers = [r for r in rows if r["model"] != "ours"]
    assert [(r["backend"], r["model"]) for r in peers] == [
        ("torch", "diffusers UNet3D"), ("torch", "diffusers UNet3D 8/16")]
    ours_flops = next(r for r in ours if not r["checkpointing"] and r["backend"] == "torch"
                      and r["conv_mode"] == "factorized")["train_flops_per_sample"]
    same, matched = (r["train_flops_per_sample"] for r in peers)
    assert abs(matched / ours_flops - 1) < abs(same / ours_flops - 1)
    for r in rows:
        assert math.isfinite(r["step_s"]) and r["step_s"] > 0 and r["peak_bytes"] > 0
        assert r["samples_per_s"] == pytest.approx(r["batch"] / r["step_s"])
        assert r["achieved_gflops"] == pytest.approx(
            r["train_flops_per_sample"] * r["samples_per_s"] / 1e9)
        ceiling = report["ceilings"][f"{r['backend']}/{r['device']}"]
        best = max(ceiling["matmul_gflops"], ceiling["conv3d_gflops"])
        assert r["mfu"] == pytest.approx(r["achieved_gflops"] / best)
    for r in ours:
        config = apply_overrides(preset("tiny"), [f"model.conv_mode={r['conv_mode']}"])
        flops = training_flops_per_sample(config)
        assert r["train_flops_per_sample"] == (flops * 4 // 3 if r["checkpointing"] else flops)
        assert r["params"] == num_parameters(config)
        assert (r["nfe_s"] is None) == r["checkpointing"]  # sampling timed once per model
    # the markdown table on stdout carries every row and the comparisons
    table = [line for line in result.stdout.splitlines() if line.startswith("| torch/cpu |")
             or line.startswith("| mlx/cpu |")]
    assert len(table) == len(rows) + 2  # + the two ceiling rows
    assert "gradient checkpointing takes" in result.stdout
    assert "UNet3DConditionModel" in result.stdout


def test_a_failed_measurement_says_why():
    from benchmarks.common import Job
    from benchmarks.measure import MeasurementFailed, failure_reason, run_child

    with pytest.raises(MeasurementFailed, match="unknown preset 'nope'"):
        run_child(Job("train", preset="nope"), timeout=120)
    with pytest.raises(MeasurementFailed, match="within --timeout 1 s"):
        run_child(Job("train", preset="tiny"), timeout=1)
    assert "out of memory" in failure_reason(-9, [])
    assert failure_reason(-15, []) == "killed by signal 15"


@pytest.mark.slow
def test_set_reshapes_every_model_measured(tmp_path):
    """`--set` reaches our rows and the peer's (the peer at a shape it fits in memory)."""
    out = tmp_path / "bench.json"
    overrides = ["data.num_frames=2", "data.image_size=8"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--backends", "torch",
         "--conv-modes", "factorized", "--no-checkpointing", "--no-sampling", "--json", str(out),
         *[a for o in overrides for a in ("--set", o)]],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["header"]["overrides (every model)"] == " ".join(overrides)
    (ours,) = [r for r in report["rows"] if r["model"] == "ours"]
    peer = next(r for r in report["rows"] if r["model"] == "diffusers UNet3D")
    config = apply_overrides(preset("tiny"), ["model.conv_mode=factorized", *overrides])
    assert ours["train_flops_per_sample"] == training_flops_per_sample(config)
    assert training_flops_per_sample(config) < training_flops_per_sample(preset("tiny"))
    # The peer's count (torch's FlopCounterMode) scales with the frames it was given: 2 of 4
    # frames at a quarter of the pixels is well under a quarter of the full tiny clip's work.
    full_peer = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_torch.py"),
         '{"kind": "peer", "preset": "tiny", "count_flops": true, "repeats": 1, "warmup": 0}'],
        capture_output=True, text=True, timeout=300)
    full = json.loads(full_peer.stdout.splitlines()[-1].split(" ", 1)[1])
    assert peer["train_flops_per_sample"] < full["train_flops_per_sample"] / 4


def test_a_bad_set_fails_before_measuring():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                             "--set", "data.num_frame=2"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "num_frame" in result.stderr and "device ceiling" not in result.stderr


def test_peer_has_our_heads_and_widths():
    from benchmarks.bench_torch import peer_model
    from benchmarks.common import Job

    config = preset("tiny").model
    for widths in (None, [8, 16]):
        peer = peer_model(Job("peer", preset="tiny", peer_widths=widths))
        assert list(peer.config.block_out_channels) == (
            widths or [config.base_channels * k for k in config.channel_mult])
        for block in (peer.down_blocks[-1], peer.mid_block):  # the deepest level: our heads
            assert block.attentions[0].transformer_blocks[0].attn1.heads == config.num_heads


def test_compile_row_is_compared_with_its_eager_row():
    from benchmarks.measure import Row
    from benchmarks.report import comparisons
    from benchmarks.run import make_plan, parse

    assert make_plan(parse(["--quick", "--backends", "torch", "--compile"])).compile
    assert not make_plan(parse(["--quick", "--backends", "torch"])).compile
    eager = Row("torch", "cpu", "ours", "small", "factorized", False, "no", 1, 10, 10**9,
                step_s=2.0, peak_bytes=4 * 2**30)
    ckpt = replace(eager, checkpointing=True, step_s=9.0, peak_bytes=2**30)
    compiled = replace(eager, model="ours, torch.compile", step_s=1.6, peak_bytes=3 * 2**30,
                       extra={"first_step_s": 95.0})
    lines = [line for line in comparisons([eager, ckpt, compiled]) if "torch.compile" in line]
    assert lines == ["- torch/cpu small: torch.compile trains 1.25x the clips/s of eager mode "
                     "with 0.75x its peak memory; its first step (compilation) took 95 s"]


@pytest.mark.slow
def test_quality_scores_text_following_on_the_checkpoints_held_out_split(tmp_path, monkeypatch):
    """`--quality`'s text-following rows: seen and unseen sentences of the split the checkpoint
    was trained with, each with its standard error; a checkpoint without a split says so."""
    pytest.importorskip("torch")
    from benchmarks import quality

    bin_dir = Path(sys.executable).parent
    data, run_dir = tmp_path / "toy", tmp_path / "run"
    for args in (["data", "toy", str(data), "--n", "8", "--frames", "4", "--height", "36",
                  "--width", "64", "--max-words", "2"],
                 ["train", "--data", str(data), "--preset", "tiny", "--steps", "2", "--out",
                  str(run_dir), "--quiet", "--set", "train.batch_size=4"]):
        result = subprocess.run([str(bin_dir / "t2s-torch"), *args], capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    monkeypatch.setattr(quality, "TEXT_FOLLOWING", (("ddim", 2, None), ("dpm++", 2, 1.0)))
    lines = quality.text_following_notes(run_dir, lambda _: None, samples=1)
    assert len(lines) == 3 and "20 seen and 20 unseen and 20 longer sentences" in lines[0]
    assert "ddim 2 steps, guidance 5.0: seen " in lines[1]
    assert "dpm++ 2 steps, guidance 1.0: seen " in lines[2]
    for line in lines[1:]:
        assert line.count("(words ") == 3 and ", unseen " in line
        assert ", longer " in line
    # Only the second row has a difference from the first, one per set, each with its error.
    assert "minus the first row" not in lines[1]
    diffs = lines[2].split("minus the first row, same noise (points): ")[1].split(", ")
    assert [d.split()[0] for d in diffs] == ["seen", "unseen", "longer"]
    assert all(" ± " in d for d in diffs)

    (data / "split.json").unlink()
    lines = quality.text_following_notes(run_dir, lambda _: None, samples=1)
    assert len(lines) == 1 and "not measured" in lines[0] and "split.json" in lines[0]


@pytest.mark.slow
def test_reference_comparison_scores_every_recipe_against_real_clips(tmp_path):
    """`--quality RUN --reference DIR`: each sampler / steps / eta / guidance row scored against
    real-person clips of its caption beside the shuffled baseline, as a table and in the JSON;
    no throughput rows."""
    pytest.importorskip("torch")
    pytest.importorskip("skimage", reason='the person clips need ".[pose]"')
    from benchmarks.reference_quality import RECIPES, make_person_set

    refs = make_person_set(tmp_path / "refs", captions=3, signers=2, frames=8)
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [str(Path(sys.executable).parent / "t2s-torch"), "train", "--data", str(refs),
         "--preset", "tiny", "--steps", "2", "--out", str(run_dir), "--quiet",
         "--set", "train.batch_size=2", "--set", "data.val_fraction=0"],
        capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    out = tmp_path / "cmp.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quality", str(run_dir),
         "--reference", str(refs), "--reference-samples", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["protocol"]["captions"] == ["sign 0", "sign 1", "sign 2"]
    rows = report["rows"]
    assert [r["recipe"] for r in rows] == [
        "ddim 10 eta 0, guidance 5",  # the tiny preset's own sampling settings
        "ddim 25 eta 0, guidance 5", "ddim 25 eta 1, guidance 5", "ddim 100 eta 0, guidance 5",
        "dpm++ 25, guidance 5", "ddim 25 eta 0, guidance 1", "ddim 25 eta 0, guidance 3",
        "ddim 25 eta 0, guidance 7.5"]
    assert [r["defaults"] for r in rows] == [True] + [False] * (len(RECIPES) - 1)
    for row in rows:
        assert row["protocol"]["num_generated"] == 3 and row["seconds_per_clip"] > 0
        for key, low, high in (("psnr", 3, 40), ("ssim", -1, 1)):
            for side in ("paired", "shuffled"):
                assert low < row["totals"][key][side] < high, (row["recipe"], key, side)
        assert len(row["clips"]) == 3
    # eta draws fresh noise each step: the clips, hence the scores, are not DDIM eta 0's
    assert rows[1]["totals"]["psnr"]["paired"] != rows[2]["totals"]["psnr"]["paired"]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(RECIPES) and "(defaults)" in table[1]
    assert "device ceiling" not in result.stderr  # no throughput measurement


def test_reference_comparison_needs_a_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"),
                             "--reference", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "--reference needs --quality" in result.stderr
