"""t2s_torch.device: choosing a device, the errors when one is missing, autocast, memory."""

from __future__ import annotations

import contextlib

import pytest

torch = pytest.importorskip("torch")

from t2s_torch import device as dev  # noqa: E402
from t2s_torch.device import (  # noqa: E402
    DeviceError,
    autocast_context,
    describe_device,
    memory_info,
    needs_grad_scaler,
    select_device,
    synchronize,
)

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = torch.backends.mps.is_available()


def test_cpu_is_always_there() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(" CPU ") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(HAS_CUDA or HAS_MPS, reason="an accelerator is present")
@pytest.mark.parametrize("requested", [None, "auto", ""])
def test_auto_picks_cpu_without_accelerators(requested) -> None:
    assert select_device(requested) == torch.device("cpu")


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
@pytest.mark.parametrize("requested", ["cuda", "cuda:1"])
def test_missing_cuda_is_a_clear_error(requested: str) -> None:
    with pytest.raises(DeviceError) as info:
        select_device(requested)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert repr(requested) in message and "--device cpu" in message
    assert "built without CUDA" in message or "no CUDA device visible" in message


@pytest.mark.skipif(HAS_MPS, reason="MPS is available here")
def test_missing_mps_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match=r"macOS 12\.3\+ on Apple Silicon.*--device cpu"):
        select_device("mps")


@pytest.mark.parametrize("requested", ["tpu", "gpu9", "cuda:x", "cuda:-1", "cpu0", "mps:a"])
def test_not_a_device(requested: str) -> None:
    with pytest.raises(DeviceError, match="is not one of auto, cpu, cuda") as info:
        select_device(requested)
    assert repr(requested) in str(info.value)


def test_cuda_logic_with_a_faked_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branches, exercised on any machine by faking what torch reports."""
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA device visible.*--device cpu"):
        select_device("cuda")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert select_device("cuda") == torch.device("cuda", 0)
    assert select_device("cuda:0") == torch.device("cuda", 0)
    assert select_device("auto") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match=r"only 1 CUDA device\(s\) visible"):
        select_device("cuda:1")


def test_mps_logic_with_a_faked_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    with pytest.raises(DeviceError, match="built without MPS"):
        select_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="MPS is not available"):
        select_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("mps") == torch.device("mps")
    assert select_device(None) == torch.device("mps")
    with pytest.raises(DeviceError, match="only one MPS device"):
        select_device("mps:1")


# --------------------------------------------------------------------------- mixed precision


def test_autocast_no_is_a_nullcontext() -> None:
    context = autocast_context("cpu", "no")
    assert isinstance(context, contextlib.nullcontext)
    with context:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_autocast_bf16_on_cpu() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    context = autocast_context(torch.device("cpu"), "bf16")
    for _ in range(2):  # reusable, one step after another
        with context:
            assert (a @ b).dtype == torch.bfloat16
            assert torch.nn.functional.linear(a, b.T).dtype == torch.bfloat16
        assert (a @ b).dtype == torch.float32  # restored on exit


def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(DeviceError, match="fp16 is not supported well on the CPU.*bf16"):
        autocast_context("cpu", "fp16")


def test_unknown_precision() -> None:
    with pytest.raises(DeviceError, match="use one of no, bf16, fp16"):
        autocast_context("cpu", "fp8")


def test_needs_grad_scaler() -> None:
    assert needs_grad_scaler(torch.device("cuda"), "fp16")
    assert needs_grad_scaler("cuda:0", "fp16")
    assert not needs_grad_scaler("cuda", "bf16")
    assert not needs_grad_scaler("cuda", "no")
    assert not needs_grad_scaler("cpu", "bf16")
    assert not needs_grad_scaler("mps", "fp16")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_on_cuda(precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    a = torch.randn(4, 8, device="cuda")
    with autocast_context("cuda", precision):
        assert (a @ a.T).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


# --------------------------------------------------------------------------- device facts


def test_memory_info_cpu() -> None:
    info = memory_info("cpu")
    assert info["total"] > 0
    if "free" in info:
        assert 0 < info["free"] <= info["total"]
    assert all(isinstance(v, int) for v in info.values())


def test_memory_info_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev, "_meminfo_available", lambda: None)
    monkeypatch.setattr(dev, "_cgroup_limit", lambda: None)
    info = memory_info("cpu")
    assert "free" not in info and info["total"] > 0


def test_memory_info_cgroup_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev, "_cgroup_limit", lambda: 1 << 30)
    info = memory_info("cpu")
    assert info["total"] == 1 << 30 and info.get("free", 0) <= 1 << 30


def test_describe_cpu() -> None:
    info = describe_device("cpu")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in info.items())
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert int(info["cpu_count"]) >= 1 and info["name"]
    assert info["memory_total"].endswith("GiB")


def test_synchronize_cpu_is_a_noop() -> None:
    synchronize("cpu")
    synchronize(torch.device("cpu"))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_facts() -> None:
    device = select_device("cuda")
    synchronize(device)
    info = memory_info(device)
    assert 0 < info["free"] <= info["total"]
    described = describe_device(device)
    assert described["capability"] and described["cuda"]
