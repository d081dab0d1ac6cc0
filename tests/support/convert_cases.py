"""The converter suites' shared cases (tests/parity/test_convert*.py): tiny configs and inputs,
checkpoints written by the real backends (randomised UNet, EMA, two real AdamW steps), forward
passes in either backend, file snapshots and the scripts. Importable as `convert_cases`
(pyproject: pytest `pythonpath`); callers import torch and MLX first (or skip)."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import torch
from mlx.utils import tree_map

import t2s_mlx.checkpoint as mlx_ckpt
import t2s_torch.checkpoint as torch_ckpt
from shared.config import Config, preset
from t2s_mlx.unet import UNet3D as MLXUNet3D
from t2s_torch.unet import UNet3D as TorchUNet3D

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"torch_to_mlx": ROOT / "convert" / "torch_to_mlx.py",
           "mlx_to_torch": ROOT / "convert" / "mlx_to_torch.py"}
FRAMES, SIZE, TOKENS = 4, 16, 6
FORWARD_ATOL = 1e-4
STEP = 7


def tiny_config(**model_changes) -> Config:
    config = preset("tiny")
    config.model = replace(config.model, **model_changes)
    return config


def numpy_inputs(config: Config, batch: int = 2, seed: int = 1):
    rng = np.random.default_rng(seed)
    m = config.model
    x = rng.standard_normal((batch, m.in_channels, FRAMES, SIZE, SIZE), dtype=np.float32)
    t = np.array([3, 700][:batch])
    context = rng.standard_normal((batch, TOKENS, m.context_dim), dtype=np.float32)
    mask = np.ones((batch, TOKENS), dtype=bool)
    mask[1:, 4:] = False
    pooled = rng.standard_normal((batch, m.context_dim), dtype=np.float32)
    return x, t, context, mask, pooled


def torch_forward(model, args) -> np.ndarray:
    x, t, context, mask, pooled = (torch.from_numpy(a) for a in args)
    with torch.no_grad():
        return model(x.to(next(model.parameters()).dtype), t, context, mask, pooled).float().numpy()


def mlx_forward(model, args) -> np.ndarray:
    x, t, context, mask, pooled = args
    out = model(mx.array(x.transpose(0, 2, 3, 4, 1)), mx.array(t), mx.array(context),
                mx.array(mask), mx.array(pooled))
    mx.eval(out)
    return np.array(out.astype(mx.float32)).transpose(0, 4, 1, 2, 3)  # to (B, C, F, H, W)


# ---------------------------------------------------------------------------------------------
# checkpoints written by the real backends


def make_torch_checkpoint(run_dir: Path, config: Config, dtype=torch.float32) -> Path:
    torch.manual_seed(0)
    model = TorchUNet3D(config.model)
    with torch.no_grad():  # randomise everything, zero-initialised and dirac layers included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model, ema = model.to(dtype), ema.to(dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(2):  # two real steps: moments and step counters far from their start
        x, t, context, mask, pooled = (torch.from_numpy(a) for a in numpy_inputs(config))
        out = model(x.to(dtype), t, context, mask, pooled)
        out.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    state = {"micro_batch": 2, "grad_accum": 1, "ema_updates": STEP,
             "generator": torch_ckpt.encode_bytes(torch.Generator().manual_seed(1).get_state()),
             "torch_rng": torch_ckpt.encode_bytes(torch.get_rng_state()),
             "param_groups": [{k: v for k, v in g.items() if k != "params"}
                              for g in optimizer.param_groups]}
    return torch_ckpt.save_checkpoint(run_dir, STEP, config, model.eval(), ema.eval(), optimizer,
                                      state)


def make_mlx_checkpoint(run_dir: Path, config: Config) -> Path:
    mx.random.seed(0)
    model = MLXUNet3D(config.model)
    model.update(tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), model.parameters()))
    ema = MLXUNet3D(config.model)
    ema.update(tree_map(lambda p: p + 0.01 * mx.random.normal(p.shape), model.parameters()))
    optimizer = optim.AdamW(learning_rate=1e-3, weight_decay=0.01)
    optimizer.init(model.trainable_parameters())
    x, t, context, mask, pooled = numpy_inputs(config)

    def loss_fn(m):
        out = m(mx.array(x.transpose(0, 2, 3, 4, 1)), mx.array(t), mx.array(context),
                mx.array(mask), mx.array(pooled))
        return (out * out).mean()

    for _ in range(2):
        _, grads = nn.value_and_grad(model, loss_fn)(model)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)
    model.eval()
    ema.eval()
    state = {"micro_batch": 2, "grad_accum": 1, "ema_updates": STEP}
    return mlx_ckpt.save_checkpoint(run_dir, STEP, config, model, ema, optimizer, state)


def snapshot(path: Path) -> dict[str, tuple[str, int]]:
    """Every file under `path`: its sha256 and mtime (ns)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in files}


def raw_bits(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.dtype, tuple, bytes]]:
    """Each tensor's dtype, shape and exact bytes (NaN-proof, -0-proof comparison)."""
    return {k: (v.dtype, tuple(v.shape), v.contiguous().reshape(-1).view(torch.uint8)
                .numpy().tobytes()) for k, v in tensors.items()}


def run_script(name: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS[name]), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def copy_checkpoint(source: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in source.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest
