"""The checkpoint directory protocol both backends read and write; framework-free.

A checkpoint is a directory in Hugging Face style::

    step_0001000/
        config.json            the whole Config (model, diffusion, text encoder, data, ...)
        model.safetensors      weights            metadata: format, t2s_layout (torch | mlx)
        ema.safetensors        EMA weights        (same keys)
        optimizer.safetensors  optimizer moments keyed `<param key>.<moment>`, where present
        trainer_state.json     step, RNG states, scheduler, anything else to resume exactly
        checksums.json         SHA-256 of every other file, written last (checked on resume)

Each backend writes its tensors with its own safetensors binding (so bf16 survives); this module
owns the directory protocol: a checkpoint is assembled under a temporary name and renamed into
place, `latest` is a one-line pointer file replaced atomically after the rename, and pruning
keeps the newest `keep_last`. A crash at any moment leaves `latest` on a complete checkpoint.

It also finds checkpoints: `resolve_checkpoint` turns whatever path a user passes (a run folder,
its checkpoints/ folder, a step_N folder, the `latest` pointer file, a .safetensors file where a
verb takes one) into the checkpoint it means, or refuses in one line that says what it found and
what to pass. Whether the files found are intact is `shared.model.tensor_files`' business;
which step a resumed run continues from, `shared.model.resume`'s.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.config import Config, ConfigError
from shared.io_atomic import replace_whole, write_text_atomic

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKSUMS_FILE = "checksums.json"
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")

# What to pass, said the same way by every refusal of a checkpoint path.
CHECKPOINT_FORMS = ("a training run's folder, its checkpoints/ folder, a checkpoints/step_N "
                    "folder or checkpoints/latest")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the path and the fix."""


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


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_checksums(folder: Path) -> None:
    """Hash every file of a filled checkpoint. A header check finds a file cut short; only a
    checksum finds bytes changed in place (a disk or copy error that keeps the size). Hashing
    runs at ~1 GB/s, under a second for the `base` preset's files."""
    sums = {p.name: file_sha256(p) for p in sorted(folder.iterdir())
            if p.is_file() and p.name != CHECKSUMS_FILE}
    save_json(folder / CHECKSUMS_FILE, {"sha256": sums})


def check_checksums(checkpoint: Path) -> None:
    """Refuse a checkpoint whose files differ from the checksums written when it was saved.
    Checkpoints from before checksums (no checksums.json) pass unchecked."""
    path = checkpoint / CHECKSUMS_FILE
    if not path.exists():
        return
    sums = load_json(path).get("sha256")
    if not isinstance(sums, dict):
        raise CheckpointError(f"{path}: no sha256 table; the checkpoint is damaged")
    for name, want in sums.items():
        file = checkpoint / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing; the checkpoint is incomplete")
        if file_sha256(file) != want:
            raise CheckpointError(f"{file}: damaged (its bytes differ from the checksum written "
                                  "when it was saved); copy it again or use another checkpoint")


def commit_checkpoint(tmp_dir: Path, step: int, keep_last: int | None = None) -> Path:
    """Checksum the filled temporary, rename it into `step_N`, point `latest` at it, prune
    old ones."""
    write_checksums(tmp_dir)
    checkpoints_dir = tmp_dir.parent
    final = checkpoints_dir / step_dir_name(step)
    replace_whole(tmp_dir, final)  # a re-run of the same step replaces it as a whole
    write_text_atomic(checkpoints_dir / LATEST, final.name + "\n")
    if keep_last:
        for _, old in list_checkpoints(checkpoints_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def abort_checkpoint(tmp_dir: Path) -> None:
    shutil.rmtree(tmp_dir, ignore_errors=True)


def listing(folder: Path, limit: int = 6) -> str:
    """What a folder holds, for a refusal: `config.json, tb/, samples/ (+3 more)`."""
    try:
        names = sorted(p.name + "/" * p.is_dir() for p in folder.iterdir())
    except OSError as e:
        return f"an unreadable folder ({e.strerror or e})"
    if not names:
        return "an empty folder"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _read_pointer(path: Path) -> str | None:
    """The step folder a `latest` pointer file names, or None for any other file."""
    try:
        if path.stat().st_size > 256:
            return None
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if STEP_DIR.match(text) else None


def _complete(folder: Path, weights: str) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / weights).is_file()


def resolve_checkpoint(path: str | Path, *, weights: str = MODEL_FILE, allow_file: bool = False,
                       what: str = "checkpoint", forms: str = CHECKPOINT_FORMS) -> Path:
    """The checkpoint directory (or, with `allow_file`, the .safetensors file) a user means.

    Accepted: a checkpoint folder itself (`config.json` + `weights`); a `checkpoints/` folder or
    a training run's folder (via `latest`, else the newest complete step); the `latest` pointer
    file; with `allow_file`, one .safetensors file. Anything else is refused in one line that
    says what was found there and what to pass (`forms`). Only names are checked here; whether
    the files are intact is `check_tensor_file`'s business.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such {what} (no such file or folder); pass {forms}")
    if path.is_file():
        pointed = _read_pointer(path)
        if pointed is not None:
            target = path.parent / pointed
            if _complete(target, weights):
                return target
            state = "does not exist" if not target.exists() else \
                f"is incomplete (holds {listing(target)})"
            raise CheckpointError(f"{path}: points at {pointed}, which {state}; pass "
                                  f"{path.parent} to use its newest complete step")
        if path.suffix == ".safetensors":
            if allow_file:
                return path
            beside = path.parent if _complete(path.parent, weights) else None
            hint = f"the folder that holds it, {beside}" if beside else forms
            raise CheckpointError(f"{path}: one weights file, but this needs a whole {what} "
                                  f"({CONFIG_FILE} + {weights}); pass {hint}")
        raise CheckpointError(f"{path}: a file of {path.stat().st_size} bytes, not a {what} "
                              f"or a `latest` pointer; pass {forms}")
    if _complete(path, weights):
        return path
    if STEP_DIR.match(path.name):
        raise CheckpointError(f"{path}: an incomplete {what} (holds {listing(path)}; needs "
                              f"{CONFIG_FILE} + {weights}); pass another step or "
                              f"{path.parent} for its newest complete one")
    for folder in (path / "checkpoints", path):
        pointed = _read_pointer(folder / LATEST) if (folder / LATEST).is_file() else None
        if pointed is not None and _complete(folder / pointed, weights):
            return folder / pointed
        steps = [p for _, p in list_checkpoints(folder) if _complete(p, weights)]
        if steps:
            return steps[-1]
    raise CheckpointError(f"{path}: holds no {what} (found {listing(path)}); pass {forms}")


def write_checkpoint(run_dir: Path, step: int, config: Config,
                     save_tensors: Callable[[Path, Any, str], None], model: Callable[[], Any],
                     ema: Callable[[], Any] | None = None,
                     optimizer: Callable[[], Any] | None = None,
                     trainer_state: dict[str, Any] | None = None,
                     keep_last: int | None = None) -> Path:
    """Write `run_dir/checkpoints/step_N` atomically and point `latest` at it.

    The backend supplies tensors only: `model`, `ema`, `optimizer` return one file's tensors
    when called (in turn, so one host copy is alive at a time) and `save_tensors(path, tensors,
    kind)` writes them with `tensor_metadata`.
    """
    tmp = begin_checkpoint(run_dir / "checkpoints", step)
    try:
        config.save(tmp / CONFIG_FILE)
        save_tensors(tmp / MODEL_FILE, model(), "model")
        if ema is not None:
            save_tensors(tmp / EMA_FILE, ema(), "ema")
        if optimizer is not None:
            save_tensors(tmp / OPTIMIZER_FILE, optimizer(), "optimizer")
        save_json(tmp / TRAINER_STATE_FILE, {"step": step, **(trainer_state or {})})
    except BaseException:
        abort_checkpoint(tmp)
        raise
    return commit_checkpoint(tmp, step, keep_last)


def load_checkpoint_config(checkpoint: Path) -> Config:
    try:
        return Config.load(checkpoint / CONFIG_FILE)
    except ConfigError as e:
        raise CheckpointError(f"{checkpoint}: its config cannot be used ({e})") from None


def inference_weights(checkpoint: str | Path, use_ema: bool = True) -> tuple[Config, Path, Path]:
    """What sampling reads from `checkpoint` (any form `resolve_checkpoint` takes): its config,
    the weights file (EMA when asked for and present, else the model's) and the resolved step."""
    path = resolve_checkpoint(checkpoint)
    config = load_checkpoint_config(path)
    weights = path / EMA_FILE if use_ema and (path / EMA_FILE).exists() else path / MODEL_FILE
    return config, weights, path


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return load_json(checkpoint / TRAINER_STATE_FILE)


def save_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
