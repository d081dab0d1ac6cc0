"""`--device` (or T2S_TEST_DEVICE): the device the device-taking torch tests run on (training
steps in fp32, bf16 and fp16, resume, sampling, latent mode, Tune-A-Video on the tiny SD).
Default: the CPU. A device this machine cannot give stops the run before collection with one
line naming the fix, rather than failing deep inside every test."""

from __future__ import annotations

import os

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
