"""The device the device-taking torch tests run on: `pytest --device cuda` or
`T2S_TEST_DEVICE=cuda pytest` (the option wins). Absent, it is the CPU, whatever the machine has,
so a GPU box runs the same CPU-tuned suite unless asked (`benchmarks/cuda_check.sh` asks).

A module, not only a fixture, because the suites' helpers (`quiet(backend, config)`) build
trainers outside any fixture. MLX tests ignore it: the option is torch's.
"""

from __future__ import annotations

from collections.abc import Mapping

ENV = "T2S_TEST_DEVICE"
DEFAULT = "cpu"
FIX = ("run without --device (and without T2S_TEST_DEVICE) to test on the CPU; the top of "
       "benchmarks/cuda_check.sh says how to install a CUDA build of torch")

_chosen = DEFAULT


def requested(option: str | None, environ: Mapping[str, str]) -> str:
    """The option, else the variable, else the CPU; blank counts as unset."""
    for value in (option, environ.get(ENV)):
        if value and value.strip():
            return value.strip().lower()
    return DEFAULT


def resolve(device: str) -> str:
    """The torch device string the tests will use; raises ValueError naming the fix.

    The CPU is taken without importing torch, so an MLX-only install and the default run
    behave exactly as before the option existed.
    """
    if device == DEFAULT:
        return DEFAULT
    try:
        from t2s_torch.device import DeviceError, select_device
    except ImportError as error:
        raise ValueError(f"--device {device}: torch is not installed ({error}); {FIX}") from None
    try:
        return str(select_device(device))
    except DeviceError as error:
        raise ValueError(f"--device {device}: {error}; {FIX}") from None


def choose(device: str) -> None:
    """Fix the session's device (pytest_configure calls this once)."""
    global _chosen
    _chosen = device


def chosen() -> str:
    """The session's torch test device: "cpu" unless asked otherwise."""
    return _chosen
