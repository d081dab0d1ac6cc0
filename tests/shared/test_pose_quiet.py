"""Keypoint extraction keeps the terminal quiet: MediaPipe's native log lines (written by C++
straight to file descriptor 2) and protobuf's deprecation warning do not reach stderr, while
what Python writes there between clips (a progress bar) still does.

The real extractor runs in a subprocess, because only a fresh process shows the lines MediaPipe
logs once, when its graph first opens, and only a subprocess's stderr captures descriptor 2 whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mediapipe", reason='pose metrics need ".[pose]"')
pytest.importorskip("skimage", reason='the person clips need ".[pose]"')

ROOT = Path(__file__).resolve().parents[2]
LOGS_ENV = "T2S_MEDIAPIPE_LOGS"  # the user's switch, spelled out as users type it
MARK = "written between clips"
# Three frames of the bundled photo, two clips through one graph, a line from Python in between;
# the pause lets the graph's own threads log what they log on opening before the first frame.
SCRIPT = f"""
import sys
import time
from benchmarks import personclips as pc
from shared.evaluation.pose import HolisticExtractor

frames = pc.render(pc.uniform(3))
with HolisticExtractor() as extractor:
    time.sleep(0.5)
    first = extractor.clip(frames)
    print({MARK!r}, file=sys.stderr, flush=True)
    second = extractor.clip(frames[::-1])
print(int(first.pose_found.sum()), int(second.pose_found.sum()))
"""
NOISE = ("W0000", "I0000", "E0000", "GetPrototype", "absl::InitializeLog", "XNNPACK")


def extract_in_subprocess(show_logs: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != LOGS_ENV}
    if show_logs:
        env[LOGS_ENV] = "1"
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=True)


def noise_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(n in line for n in NOISE)]


def test_extraction_leaves_only_python_text_on_stderr():
    run = extract_in_subprocess(show_logs=False)
    assert run.stdout.split() == ["3", "3"]  # the body was found in every frame of both clips
    assert noise_lines(run.stderr) == []
    assert MARK in run.stderr  # descriptor 2 is back between native calls


def test_the_escape_hatch_shows_mediapipes_own_lines():
    # Also proves the check above would see the lines if they leaked.
    run = extract_in_subprocess(show_logs=True)
    assert run.stdout.split() == ["3", "3"]
    assert noise_lines(run.stderr)
    assert MARK in run.stderr
