"""benchmarks/cuda_check.sh, the script a lent GPU runs (issue #37): its CPU dry run passes every
part and writes the summary, and a failing part is recorded without stopping the script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "cuda_check.sh"
PARTS = ["env", "tests", "bench_small", "bench_base", "bench_channels_last", "demo",
         "real_clips", "real_train", "real_sample", "real_eval"]

pytest.importorskip("torch")
if shutil.which("timeout") is None:
    pytest.skip("cuda_check.sh needs coreutils' timeout", allow_module_level=True)


def run_script(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The script as a user runs it, in this environment: its python and console scripts (the
    t2s-* tools) first on PATH, as in an activated venv (CI calls .venv-test/bin/python)."""
    environ = {k: v for k, v in os.environ.items() if k != "T2S_TEST_DEVICE"}
    path = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")])
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**environ, "PATH": path, "PYTHON": sys.executable, "OUT": str(out),
                               **env}, timeout=900)


@pytest.mark.slow
def test_the_dry_run_passes_every_part_and_writes_the_summary(tmp_path):
    result = run_script(tmp_path / "out", "--dry-run")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dry_run"] and summary["ok"] and summary["env"]["device"] == "cpu"
    assert [p["name"] for p in summary["parts"]] == PARTS
    assert {p["name"]: p["status"] for p in summary["parts"]} == dict.fromkeys(PARTS, "ok")
    assert summary["tests"]["tests"] >= 2 and summary["tests"]["failures"] == 0
    bench = json.loads((tmp_path / "out" / "bench_small.json").read_text())
    assert {r["model"] for r in bench["rows"]} >= {"ours", "diffusers UNet3D"}
    assert (tmp_path / "out" / "real" / "eval.json").exists()
    assert (tmp_path / "out" / "demo" / "report.json").exists()
    page = (tmp_path / "out" / "summary.md").read_text()
    assert page.startswith("# CUDA check (dry run, CPU)") and "every part ok" in page
    assert all(f"| {name} | ok |" in page for name in PARTS)


def test_a_failing_part_is_recorded_and_the_rest_skipped_or_run(tmp_path):
    result = run_script(tmp_path / "out", PARTS="real", DEVICE="cpu",
                        REALSIGN=str(tmp_path / "no-clips"))
    assert result.returncode == 1  # not every part ok
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    status = {p["name"]: p["status"] for p in summary["parts"]}
    assert status == {"env": "ok", "real_clips": "failed", "real_train": "failed",
                      "real_sample": "skipped", "real_eval": "skipped"}
    assert "set REALSIGN" in (tmp_path / "out" / "logs" / "real_clips.err").read_text()
    assert "NOT all ok" in (tmp_path / "out" / "summary.md").read_text()


def test_an_unknown_argument_is_refused():
    result = subprocess.run(["bash", str(SCRIPT), "--dryrun"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "unknown argument --dryrun" in result.stderr
