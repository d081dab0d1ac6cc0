"""`t2s-mlx doctor`: is this machine ready to train? Each check says ok or what to fix."""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator

from shared.app.doctor import MATMUL_SIZE, CheckResult, check, matmul_gflops, speed_detail


def run_checks(device: str | None = None) -> Iterator[CheckResult]:
    """Yield (check, passed, detail) for the device, the libraries, the encoder and the UNet."""
    import mlx.core as mx
    import mlx.nn as nn

    from shared.config import preset
    from t2s_mlx.device import describe_device, select_device

    def dev() -> str:
        select_device(device)
        return ", ".join(f"{k}={v}" for k, v in describe_device().items())

    yield check("device", dev)
    for module in ("tensorboard", "safetensors", "av", "tokenizers"):
        yield check(f"import {module}",
                     lambda m=module: getattr(importlib.import_module(m), "__version__", "ok"))
    config = preset("tiny")

    def encoder() -> str:
        from t2s_mlx.text_encoder import TextEncoder

        enc = TextEncoder(config.text)
        states = enc.encode(["hello friend"]).states
        return f"{config.text.name} from {enc.model_dir}: token states {tuple(states.shape)}"

    yield check("text encoder", encoder)

    def unet() -> str:
        from t2s_mlx.unet import UNet3D

        model = UNet3D(config.model)
        d, m = config.data, config.model
        x = mx.random.normal((2, d.num_frames, d.image_size, d.image_size, m.in_channels))
        ctx = mx.random.normal((2, 8, m.context_dim))
        start = time.perf_counter()
        loss_and_grad = nn.value_and_grad(
            model, lambda x: mx.square(model(x, mx.array([1, 500]), ctx)).mean())
        loss, grads = loss_and_grad(x)
        mx.eval(loss, grads)
        if not mx.isfinite(loss).item():
            raise RuntimeError("the forward pass produced non-finite values")
        return (f"tiny UNet forward + backward on {mx.default_device()} in "
                f"{time.perf_counter() - start:.2f} s")

    yield check("UNet forward/backward", unet)

    def speed() -> str:
        a = mx.random.normal((MATMUL_SIZE, MATMUL_SIZE))
        return speed_detail(matmul_gflops(lambda: mx.eval(a @ a)))

    yield check("matmul speed", speed)
