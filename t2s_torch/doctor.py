"""`t2s-torch doctor`: is this machine ready to train? Each check says ok or what to fix."""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator

from shared.app.doctor import MATMUL_SIZE, CheckResult, check, matmul_gflops, speed_detail


def run_checks(device: str | None = None) -> Iterator[CheckResult]:
    """Yield (check, passed, detail) for the device, the libraries, the encoder and the UNet."""
    import torch

    from shared.config import preset
    from t2s_torch.device import describe_device, select_device

    dev_result = check("device", lambda: ", ".join(
        f"{k}={v}" for k, v in describe_device(select_device(device)).items()))
    yield dev_result
    for module in ("transformers", "diffusers", "accelerate", "tensorboard", "safetensors", "av"):
        yield check(f"import {module}",
                     lambda m=module: getattr(importlib.import_module(m), "__version__", "ok"))
    config = preset("tiny")

    def encoder() -> str:
        from t2s_torch.text_encoder import TextEncoder

        enc = TextEncoder(config.text, device=select_device(device))
        states = enc.encode(["hello friend"]).states
        return f"{config.text.name} from {enc.model_dir}: token states {tuple(states.shape)}"

    yield check("text encoder", encoder)

    def unet() -> str:
        from t2s_torch.unet import UNet3D

        dev = select_device(device)
        model = UNet3D(config.model).to(dev)
        d, m = config.data, config.model
        x = torch.randn(2, m.in_channels, d.num_frames, d.image_size, d.image_size, device=dev)
        ctx = torch.randn(2, 8, m.context_dim, device=dev)
        start = time.perf_counter()
        out = model(x, torch.tensor([1, 500], device=dev), ctx)
        out.square().mean().backward()
        if not torch.isfinite(out).all():
            raise RuntimeError("the forward pass produced non-finite values")
        return (f"tiny UNet forward + backward on {dev} in "
                f"{time.perf_counter() - start:.2f} s, output {tuple(out.shape)}")

    yield check("UNet forward/backward", unet)

    def speed() -> str:
        a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=select_device(device))
        # .item(): the product finished on the device
        gflops = matmul_gflops(lambda: (a @ a).sum().item())
        return speed_detail(gflops, torch.get_num_threads())

    yield check("matmul speed", speed)
