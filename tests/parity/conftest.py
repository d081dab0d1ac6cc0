"""Fixtures of the converter suites (test_convert.py, test_convert_cli.py): real checkpoints
written by each backend, made once per module (tests/support/convert_cases.py builds them)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def config():
    from convert_cases import tiny_config

    return tiny_config()


@pytest.fixture(scope="module")
def torch_checkpoint(tmp_path_factory, config) -> Path:
    from convert_cases import make_torch_checkpoint

    return make_torch_checkpoint(tmp_path_factory.mktemp("torch_run"), config)


@pytest.fixture(scope="module")
def torch_bf16_checkpoint(tmp_path_factory, config) -> Path:
    import torch
    from convert_cases import make_torch_checkpoint

    return make_torch_checkpoint(tmp_path_factory.mktemp("torch_bf16_run"), config,
                                 torch.bfloat16)


@pytest.fixture(scope="module")
def mlx_checkpoint(tmp_path_factory, config) -> Path:
    from convert_cases import make_mlx_checkpoint

    return make_mlx_checkpoint(tmp_path_factory.mktemp("mlx_run"), config)
