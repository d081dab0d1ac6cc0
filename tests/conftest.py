"""What every suite may use.

`--device` (or T2S_TEST_DEVICE): the device the device-taking torch tests run on (training
steps in fp32, bf16 and fp16, resume, sampling, latent mode, Tune-A-Video on the tiny SD).
Default: the CPU. A device this machine cannot give stops the run before collection with one
line naming the fix, rather than failing deep inside every test.

Shared fixtures: `toy_data` (a small toy-signer data set per module; `make_toy_data` for
another size) and `one_torch_thread`. The `backend` fixture of the suites over both backends
is tests/backends/conftest.py's; helper modules are tests/support/'s.

The inner loop: `pytest -m "not slow"` leaves out the end-to-end tests marked slow (real
launchers, whole trainings, the demo); CI and the README's command run everything
(docs/architecture.md, Development).
"""

from __future__ import annotations

import os
from pathlib import Path

import device_choice
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device", default=None, metavar="DEVICE",
        help="torch device for the device-taking tests: cpu (default), cuda, cuda:N, mps, "
             f"auto; also read from {device_choice.ENV}")


def pytest_configure(config: pytest.Config) -> None:
    wanted = device_choice.requested(config.getoption("--device"), os.environ)
    try:
        device_choice.choose(device_choice.resolve(wanted))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say so when the tests are not on the CPU; the default stays silent."""
    device = device_choice.chosen()
    return None if device == device_choice.DEFAULT else f"torch test device: {device}"


@pytest.fixture(scope="session")
def torch_device() -> str:
    """The torch device string the device-taking tests run on."""
    return device_choice.chosen()


@pytest.fixture(scope="session")
def make_toy_data(tmp_path_factory):
    """`make_toy_data(n, num_frames)`: a fresh folder of `n` toy-signer clips (36 x 64, two
    captions), for a suite whose tests need another size than `toy_data`'s."""
    from shared.data.toy import make_toy_dataset

    def make(n: int = 8, num_frames: int = 8) -> Path:
        folder = tmp_path_factory.mktemp("toy")
        make_toy_dataset(folder, n=n, num_prompts=2, num_frames=num_frames, height=36, width=64,
                         progress=False)
        return folder

    return make


@pytest.fixture(scope="module")
def toy_data(make_toy_data) -> Path:
    """Eight toy clips of 8 frames, written once per module (training runs decode them into
    the folder's own cache, so modules never share one). A module that needs another size
    overrides it: `def toy_data(make_toy_data): return make_toy_data(n=6, num_frames=4)`."""
    return make_toy_data()


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module, its setting restored after. Tiny models are fastest
    that way: on a loaded 2-core machine torch's OpenMP workers spin against other processes
    (or MLX's threads in the same one) and make a tiny forward up to 100x slower. Without
    torch installed, nothing."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
