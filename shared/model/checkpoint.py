"""The checkpoint format both backends read and write; framework-free.

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

It also owns the two checks every reader makes before trusting a checkpoint. `resolve_checkpoint`
turns whatever path a user passes (a run folder, its checkpoints/ folder, a step_N folder, the
`latest` pointer file, a .safetensors file where a verb takes one) into the checkpoint it means,
or refuses in one line that says what it found and what to pass. `check_tensor_file` reads a
safetensors header (never the data) and refuses a file that is cut short or does not fit the
model, so a copy interrupted between machines is reported by name rather than as a traceback
from deep inside a loader; `pick_resume_checkpoint` uses it to fall back to the newest intact
step.

The layout rule is the one table the converters need: parameter keys are identical in both
backends, and only conv weights differ: 5-D, torch (O, I, kF, kH, kW) against MLX
(O, kF, kH, kW, I) (the 3D UNet); 4-D, torch (O, I, kH, kW) against MLX (O, kH, kW, I) (the 2D
convs of a latent-mode VAE, read from diffusers' files by the MLX port). The UNet has no 4-D
tensors, so the 4-D entry never touches its checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import Config, ConfigError
from shared.io_atomic import write_text_atomic

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKSUMS_FILE = "checksums.json"
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")
LAYOUTS = ("torch", "mlx")

# safetensors dtypes and their sizes in bytes; what a header may name.
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
               "BOOL": 1}
# What to pass, said the same way by every refusal of a checkpoint path.
CHECKPOINT_FORMS = ("a training run's folder, its checkpoints/ folder, a checkpoints/step_N "
                    "folder or checkpoints/latest")

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


def _listing(folder: Path, limit: int = 6) -> str:
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
                f"is incomplete (holds {_listing(target)})"
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
        raise CheckpointError(f"{path}: an incomplete {what} (holds {_listing(path)}; needs "
                              f"{CONFIG_FILE} + {weights}); pass another step or "
                              f"{path.parent} for its newest complete one")
    for folder in (path / "checkpoints", path):
        pointed = _read_pointer(folder / LATEST) if (folder / LATEST).is_file() else None
        if pointed is not None and _complete(folder / pointed, weights):
            return folder / pointed
        steps = [p for _, p in list_checkpoints(folder) if _complete(p, weights)]
        if steps:
            return steps[-1]
    raise CheckpointError(f"{path}: holds no {what} (found {_listing(path)}); pass {forms}")


# ---------------------------------------------------------------------------------------------
# checking files before loading them


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as a safetensors header describes it (dtype by its safetensors name)."""

    shape: tuple[int, ...]
    dtype: str


def dtype_kind(dtype: str) -> str:
    """float / int / bool: what must match between a file and a model (a float32 model loads
    bf16 weights, e.g. a `--dtype bf16` conversion, but never integers)."""
    return "bool" if dtype == "BOOL" else "float" if dtype.startswith(("F", "BF")) else "int"


def damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: damaged or not a safetensors file ({why}); copy it again "
                           "or use another checkpoint")


def read_header(path: str | Path) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """A safetensors file's tensors and metadata from its header alone, after checking that
    the header parses, every tensor's bytes lie inside the file, and the file ends where the
    last tensor does (a copy cut short fails here, in microseconds, however large the file)."""
    # Imported here, not at the top: safetensors_io imports this module (CheckpointError).
    from shared.model.safetensors_io import HeaderError, read_raw_header

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n, header, metadata = read_raw_header(f, size)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    except HeaderError as e:
        raise damaged(path, str(e)) from None
    specs, end = {}, 0
    for name, info in header.items():
        try:
            dtype, shape = info["dtype"], tuple(int(s) for s in info["shape"])
            start, stop = (int(x) for x in info["data_offsets"])
            itemsize = DTYPE_SIZES[dtype]
        except (KeyError, TypeError, ValueError):
            raise damaged(path, f"tensor {name!r}: {info!r}") from None
        count = 1
        for s in shape:
            count *= s
        if not 0 <= start <= stop or stop - start != count * itemsize:
            raise damaged(path, f"tensor {name!r} has offsets {start}..{stop} for {dtype} "
                                f"{list(shape)}")
        specs[name], end = TensorSpec(shape, dtype), max(end, stop)
    if 8 + n + end != size:
        raise damaged(path, f"{size} bytes where its header describes {8 + n + end}")
    return specs, {str(k): str(v) for k, v in metadata.items()}


def check_tensor_file(path: str | Path, expected: Mapping[str, TensorSpec] | None = None,
                      layout: str | None = None) -> dict[str, TensorSpec]:
    """Refuse, in one line naming `path`, a tensor file that is damaged, in the other layout,
    or (given `expected`) lacks a key, has an extra one, or a tensor of another shape or kind
    of dtype. Returns the file's tensor specs."""
    path = Path(path)
    specs, metadata = read_header(path)
    if layout is not None:
        check_layout(metadata, layout, path)
    if expected is not None:
        compare_keys(set(expected), set(specs), path)
        for key, want in expected.items():
            got = specs[key]
            if got.shape != want.shape:
                raise CheckpointError(f"{path}: {key} has shape {got.shape} but the model needs "
                                      f"{want.shape}; was it written by another model config?")
            if dtype_kind(got.dtype) != dtype_kind(want.dtype):
                raise CheckpointError(f"{path}: {key} is {got.dtype} but the model needs "
                                      f"{want.dtype}; was it written by another model?")
    return specs


def verify_checkpoint(checkpoint: Path, expected: Mapping[str, Mapping[str, TensorSpec] | None],
                      layout: str | None = None,
                      json_files: tuple[str, ...] = (CONFIG_FILE, TRAINER_STATE_FILE)) -> None:
    """Check a whole checkpoint before resuming from it: each tensor file in `expected` (file
    name -> the specs its tensors must have, or None for a header check only) and each JSON
    file must be present and intact, and every file must match the checksum written at save
    time; the first problem is raised as a CheckpointError."""
    for name, specs in expected.items():
        check_tensor_file(checkpoint / name, specs, layout)
    for name in json_files:
        data = load_json(checkpoint / name)
        if not isinstance(data, dict):
            raise CheckpointError(f"{checkpoint / name}: not a JSON object; the checkpoint is "
                                  "damaged")
    check_checksums(checkpoint)


def read_tensor_file(path: Path, read: Callable[[str], Any], layout: str,
                     expected: Mapping[str, TensorSpec] | None = None) -> Any:
    """`read(path)` (a backend's safetensors loader) after `check_tensor_file`, so a damaged
    file is refused by name instead of by the reader's error."""
    check_tensor_file(path, expected, layout)
    try:
        return read(str(path))
    except Exception as e:  # a bit flip the header check cannot see; still one line
        raise CheckpointError(f"{path}: cannot be read ({e}); copy it again or use another "
                              "checkpoint") from None


def check_resume_files(checkpoint: Path, specs: Mapping[str, TensorSpec], layout: str) -> None:
    """Everything `--resume` reads from `checkpoint`, checked before any of it is loaded:
    model and EMA weights against `specs`, the optimizer file's header, the JSON files."""
    verify_checkpoint(checkpoint, {MODEL_FILE: specs, EMA_FILE: specs, OPTIMIZER_FILE: None},
                      layout)


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


def pick_resume_checkpoint(run_dir: Path, verify: Callable[[Path], None], strict: bool = False,
                           warn: Callable[[str], None] = print, flag: str = "--resume") -> Path:
    """The newest intact checkpoint of the run in `run_dir`, checked with `verify`.

    A damaged newest step is skipped with a one-line warning that names both steps, so a run
    whose last save was cut short (a full disk, a copy interrupted) continues from the step
    before it; with `strict` it is an error that names the step to pass to `flag` instead.
    """
    checkpoints = run_dir / "checkpoints"
    found = list_checkpoints(checkpoints)[::-1]
    if not found:
        raise CheckpointError(f"{run_dir}: nothing to resume (no {checkpoints.name}/step_N; "
                              f"found {_listing(run_dir)}); drop {flag} to start a new run")
    newest_step, newest = found[0]
    problems = []
    for step, path in found:
        try:
            verify(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if step == newest_step:
            return path
        why = problems[0]
        if strict:
            raise CheckpointError(f"step {newest_step} cannot be used ({why}); the newest intact "
                                  f"checkpoint is step {step}: resume from it with "
                                  f"`{flag} {path}`")
        warn(f"warning: step {newest_step} cannot be used ({why}); resuming from step {step}, "
             "the newest intact checkpoint")
        return path
    raise CheckpointError(f"{checkpoints}: no intact checkpoint to resume from; step "
                          f"{newest_step}: {problems[0]}")


def resume_checkpoint(run_dir: Path, which: str | Path | bool, verify: Callable[[Path], None],
                      strict: bool = False, warn: Callable[[str], None] = print,
                      flag: str = "--resume", weights: str = MODEL_FILE) -> Path:
    """The checkpoint `train --resume [CHECKPOINT]` continues from: with no path (or `latest`),
    the newest intact step of `run_dir`; with a path (any form `resolve_checkpoint` accepts),
    that step, which must belong to the run in `run_dir` and be intact (no fallback: it was
    asked for by name)."""
    if which is True or which in ("", "latest"):
        return pick_resume_checkpoint(run_dir, verify, strict, warn, flag)
    checkpoint = resolve_checkpoint(which, weights=weights)
    own = (run_dir / "checkpoints").resolve()
    if checkpoint.resolve().parent != own:
        raise CheckpointError(f"{checkpoint}: not a checkpoint of the run in {run_dir}; pass "
                              f"one of {own}/step_N, or that run's folder as the output folder")
    verify(checkpoint)
    return checkpoint


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
