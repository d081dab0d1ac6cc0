"""`pytest --device` / T2S_TEST_DEVICE (tests/conftest.py): parsed, routed to the tests, and a
device this machine lacks stops the run in one line naming the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import device_choice
import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).relative_to(ROOT)


def run_pytest(*args: str, **env: str) -> subprocess.CompletedProcess:
    """This file's probe test in a child pytest, with the option and variables given."""
    environ = {k: v for k, v in os.environ.items() if k != device_choice.ENV}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(THIS),
         "-k", "probe"], cwd=ROOT, env={**environ, **env}, capture_output=True, text=True,
        timeout=300)


@pytest.mark.parametrize("option, env, expected", [
    (None, {}, "cpu"),
    ("cuda", {}, "cuda"),
    (None, {device_choice.ENV: " CUDA:1 "}, "cuda:1"),
    ("cpu", {device_choice.ENV: "cuda"}, "cpu"),  # the option wins
    ("", {device_choice.ENV: ""}, "cpu"),  # blank is unset
])
def test_the_option_then_the_variable_then_the_cpu(option, env, expected):
    assert device_choice.requested(option, env) == expected


def test_the_cpu_is_taken_as_it_is():
    assert device_choice.resolve("cpu") == "cpu"


def test_not_a_device_is_refused_with_the_fix():
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"--device tpu: .*not one of.*run without --device"):
        device_choice.resolve("tpu")


def test_cuda_without_cuda_is_refused_with_the_fix():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: there `--device cuda` is valid")
    with pytest.raises(ValueError) as info:
        device_choice.resolve("cuda")
    message = str(info.value)
    assert message.startswith("--device cuda: ")
    assert "built without CUDA" in message or "no CUDA device visible" in message
    assert "install a CUDA build of torch" in message and "run without --device" in message


def test_probe_the_session_device(torch_device):
    """Run by the tests below in a child pytest (T2S_EXPECT names what it must see)."""
    assert torch_device == device_choice.chosen()
    assert torch_device == os.environ.get("T2S_EXPECT", device_choice.DEFAULT)


def test_the_option_reaches_the_fixture_and_beats_the_variable():
    result = run_pytest("--device", "CPU", T2S_TEST_DEVICE="cuda:99", T2S_EXPECT="cpu")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def test_a_device_this_machine_lacks_is_a_usage_error_before_any_test():
    """cuda:99 exists nowhere: a CPU-only torch and a GPU box both refuse it."""
    pytest.importorskip("torch")
    result = run_pytest("--device", "cuda:99")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "ERROR: --device cuda:99: " in result.stderr
    assert "run without --device" in result.stderr and "Traceback" not in result.stderr
    assert "passed" not in result.stdout
