"""The checkpoint format both backends read and write; framework-free.

A checkpoint is a directory in Hugging Face style::

    step_0001000/
        config.json            the whole Config (model, diffusion, text encoder, data, ...)
        model.safetensors      weights            metadata: format, t2s_layout (torch | mlx)
        ema.safetensors        EMA weights        (same keys)
        optimizer.safetensors  optimizer moments keyed `<param key>.<moment>`, where present
        trainer_state.json     step, RNG states, scheduler, anything else to resume exactly

Each backend writes its tensors with its own safetensors binding (so bf16 survives); this module
owns the directory protocol: a checkpoint is assembled under a temporary name and renamed into
place, `latest` is a one-line pointer file replaced atomically after the rename, and pruning
keeps the newest `keep_last`. A crash at any moment leaves `latest` on a complete checkpoint.

The layout rule is the one table the converters need: parameter keys are identical in both
backends, and only conv weights differ: 5-D, torch (O, I, kF, kH, kW) against MLX
(O, kF, kH, kW, I) (the 3D UNet); 4-D, torch (O, I, kH, kW) against MLX (O, kH, kW, I) (the 2D
convs of a latent-mode VAE, read from diffusers' files by the MLX port). The UNet has no 4-D
tensors, so the 4-D entry never touches its checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from shared.config import Config, ConfigError

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")
LAYOUTS = ("torch", "mlx")

# Conv weight permutations between the layouts, by tensor rank (the one layout table).
TORCH_TO_MLX_AXES = {5: (0, 2, 3, 4, 1), 4: (0, 2, 3, 1)}
MLX_TO_TORCH_AXES = {5: (0, 4, 1, 2, 3), 4: (0, 3, 1, 2)}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the path and the fix."""


def tensor_metadata(layout: str, kind: str = "model") -> dict[str, str]:
    """safetensors metadata: `format` as transformers expects, plus our layout tag."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    return {"format": "pt" if layout == "torch" else "mlx", "t2s_layout": layout,
            "t2s_kind": kind}


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def list_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `checkpoints_dir`, oldest first (temporaries are ignored)."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        m = STEP_DIR.match(path.name)
        if m and path.is_dir() and (path / CONFIG_FILE).exists():
            found.append((int(m.group(1)), path))
    return sorted(found)


def begin_checkpoint(checkpoints_dir: Path, step: int) -> Path:
    """A fresh temporary directory beside the final one; fill it, then `commit_checkpoint`."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{step_dir_name(step)}.", dir=checkpoints_dir))


def commit_checkpoint(tmp_dir: Path, step: int, keep_last: int | None = None) -> Path:
    """Rename the filled temporary into `step_N`, point `latest` at it, prune old ones."""
    checkpoints_dir = tmp_dir.parent
    final = checkpoints_dir / step_dir_name(step)
    if final.exists():  # a re-run of the same step: replace it as a whole
        trash = Path(tempfile.mkdtemp(prefix=".trash.", dir=checkpoints_dir))
        os.replace(final, trash / final.name)
        os.replace(tmp_dir, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final)
    write_text_atomic(checkpoints_dir / LATEST, final.name + "\n")
    if keep_last:
        for _, old in list_checkpoints(checkpoints_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def abort_checkpoint(tmp_dir: Path) -> None:
    shutil.rmtree(tmp_dir, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from what a user is likely to pass.

    Accepts a checkpoint itself, a `checkpoints/` folder or a training run's folder (both via
    `latest`, else the newest complete step).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; pass a training run's folder, its "
                              "checkpoints/ folder, or one step_N folder")
    if (path / CONFIG_FILE).exists() and (path / MODEL_FILE).exists():
        return path
    for folder in (path / "checkpoints", path):
        latest = folder / LATEST
        if latest.exists():
            target = folder / latest.read_text().strip()
            if (target / MODEL_FILE).exists():
                return target
        steps = list_checkpoints(folder)
        if steps:
            return steps[-1][1]
    raise CheckpointError(f"{path}: holds no checkpoint ({CONFIG_FILE} + {MODEL_FILE}); pass a "
                          "training run's folder or one of its checkpoints/step_N folders")


def load_checkpoint_config(checkpoint: Path) -> Config:
    try:
        return Config.load(checkpoint / CONFIG_FILE)
    except ConfigError as e:
        raise CheckpointError(f"{checkpoint}: its config cannot be used ({e})") from None


def save_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def check_layout(metadata: dict[str, str] | None, expected: str, path: Path) -> None:
    """Refuse weights written for the other backend, naming the converter that fixes it."""
    layout = (metadata or {}).get("t2s_layout")
    if layout is None:
        raise CheckpointError(f"{path}: no t2s_layout in its metadata; not a text2sign file")
    if layout != expected:
        script = f"convert/{layout}_to_{expected}.py"
        raise CheckpointError(f"{path}: weights are in {layout} layout but this backend needs "
                              f"{expected}; convert them with `python {script} IN OUT`")


def compare_keys(expected: set[str], found: set[str], path: Path) -> None:
    """One readable message for weights that do not fit the model the config builds."""
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{path}: weights do not fit the model its config builds: "
                              f"{'; '.join(parts)}; was it written by another model or version?")


def refuse_existing_run(run_dir: Path) -> None:
    """A new run must not mix its checkpoints with an older run's in the same folder."""
    existing = list_checkpoints(run_dir / "checkpoints")
    if existing:
        raise CheckpointError(f"{run_dir} already holds a run (checkpoints up to step "
                              f"{existing[-1][0]}); continue it with --resume, or train into "
                              "another --out")
