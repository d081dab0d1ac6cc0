"""Converting checkpoints between the torch and MLX layouts, with numpy alone.

`convert/torch_to_mlx.py` and `convert/mlx_to_torch.py` are thin command lines over
`shared.app.cli_convert.main`;
tests and other code call `convert` (or `torch_to_mlx` / `mlx_to_torch`) directly. Nothing here
imports torch or mlx.

What a conversion does, driven by the one layout table (`shared.model.layouts.TORCH_TO_MLX_AXES`,
`MLX_TO_TORCH_AXES`; keys are the same in both backends, only 5-D conv weights move axes):

- model.safetensors, ema.safetensors: every tensor re-laid-out; `--dtype` casts floating tensors
  (fp32 / fp16 / bf16; fp32 -> bf16 rounds to nearest even on the bit pattern, as torch does).
- optimizer.safetensors (AdamW): torch `<p>.exp_avg` / `<p>.exp_avg_sq` <-> MLX `<p>.m` / `<p>.v`,
  re-laid-out like their parameter; torch's per-parameter `<p>.step` <-> MLX's global `step`.
  Moments keep their dtype under `--dtype` (Adam's second moment underflows in fp16).
- config.json: copied byte for byte.
- trainer_state.json: `step`, `micro_batch`, `grad_accum`, `ema_updates` carry over; the RNG
  streams (torch's generator / CPU / CUDA RNG states) and torch's GradScaler state cannot: the
  resumed run draws with the target backend's randomness (exact resume holds within a backend).
  A torch target gets `param_groups` rebuilt from the config (hyper-parameters, scheduled lr).

Every tensor file is read and written by the small safetensors reader / writer in
`shared.model.safetensors_io`, so bf16 - which numpy lacks - moves as its raw 16-bit patterns and is
never rounded through another dtype; layouts, parameter shapes and the key / shape checks are
`shared.model.layouts`.

Refusals (one line, naming the fix): an input already in the target layout, keys missing from or
unknown to the model the config builds, a shape that does not fit that model, an existing OUT
without `--force`, an OUT that would touch the input. The output is assembled beside OUT under a
temporary name and renamed into place; the input is only ever opened for reading.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import Config, ConfigError
from shared.diffusion.lr import warmup_cosine
from shared.io_atomic import atomic_path, replace_whole
from shared.model.checkpoint import (
    CHECKPOINT_FORMS,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    CheckpointError,
    load_checkpoint_config,
    resolve_checkpoint,
    write_checksums,
)
from shared.model.layouts import (
    _examples,
    axes_table,
    check_file_layout,
    check_keys,
    check_shape,
    key_refusal,
    layout_shape,
    parameter_shapes,
    relayout,
)
from shared.model.safetensors_io import (
    FLOAT_DTYPES,
    STORAGE,
    ConvertError,
    RawTensor,
    SafetensorsFile,
    cast,
    read_safetensors,
    write_safetensors,
)
from shared.model.tensor_files import tensor_metadata

DTYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
WEIGHT_FILES = {MODEL_FILE: "model", EMA_FILE: "ema"}
TENSOR_FILES = (MODEL_FILE, EMA_FILE, OPTIMIZER_FILE)

# Optimizer state names in each backend (AdamW).
TORCH_MOMENTS = {"exp_avg": "m", "exp_avg_sq": "v"}
MLX_MOMENTS = {v: k for k, v in TORCH_MOMENTS.items()}
TORCH_STEP, MLX_STEP, MLX_LR = "step", "step", "learning_rate"

# trainer_state.json entries that belong to one backend and cannot cross to the other.
BACKEND_STATE = {
    "torch": {
        "generator": "torch generator state",
        "torch_rng": "torch CPU RNG state",
        "cuda_rng": "CUDA RNG state",
        "scaler": "fp16 GradScaler state",
        "param_groups": "torch param_groups (hyper-parameters come from config.json)",
    },
    "mlx": {},
}
CONVERSION_KEYS = ("converted_from", "conversion_note")
RNG_NOTE = ("RNG state does not carry across backends: the resumed run continues with the "
            "{target} backend's own randomness; exact resume holds only within one backend")
ADAM_EPS = 1e-8  # torch.optim.AdamW and mlx.optimizers.AdamW default, as both trainers use


CONVERT_FORMS = CHECKPOINT_FORMS + ", or one .safetensors file"


# ---------------------------------------------------------------------------------------------
# converting the pieces


def convert_weights(tensors: dict[str, RawTensor], source: str, target: str,
                    dtype: str | None = None,
                    shapes: dict[str, tuple[int, ...]] | None = None,
                    path: Path | str = "weights", config_path: Path | str = CONFIG_FILE,
                    ) -> dict[str, RawTensor]:
    """Model or EMA weights from `source` to `target` layout, optionally cast.

    `shapes`: what the config builds, in `source` layout (`parameter_shapes`); None skips the key
    and shape checks (a lone file without a config).
    """
    path, table = Path(path), axes_table(source, target)
    if shapes is not None:
        check_keys(shapes, tensors, path, "weights", config_path)
        for key, t in tensors.items():
            check_shape(key, t.shape, shapes[key], source, path, config_path)
    return {k: cast(relayout(t, table), dtype) for k, t in tensors.items()}


def _scalar(t: RawTensor, key: str, path: Path) -> int:
    if t.array.size != 1 or t.dtype == "BF16":
        raise ConvertError(f"{path}: {key} should be one number but is {t.dtype} "
                           f"{list(t.shape)}; re-save the optimizer state from the training run")
    value = float(t.array.reshape(()))
    if not np.isfinite(value) or value < 0 or value != int(value):
        raise ConvertError(f"{path}: {key} = {value} is not a step count; re-save the optimizer "
                           "state from the training run")
    return int(value)


def _split_key(key: str) -> tuple[str, str]:
    param, _, name = key.rpartition(".")
    return param, name


def convert_optimizer(tensors: dict[str, RawTensor], source: str, target: str,
                      shapes: dict[str, tuple[int, ...]] | None = None,
                      path: Path | str = OPTIMIZER_FILE, config_path: Path | str = CONFIG_FILE,
                      ) -> tuple[dict[str, RawTensor], list[str]]:
    """AdamW state from `source` to `target`: (tensors, notes).

    torch: `<p>.exp_avg`, `<p>.exp_avg_sq`, `<p>.step` (float32 scalar per parameter).
    MLX: `<p>.m`, `<p>.v` and one global `step` (uint64 scalar). Moments are re-laid-out like
    their parameter and keep their dtype. `shapes` (in `source` layout) checks keys and shapes;
    None takes the parameter names from the keys.
    """
    path, table, notes = Path(path), axes_table(source, target), []
    moments = TORCH_MOMENTS if source == "torch" else MLX_MOMENTS
    per_param_step = source == "torch"
    by_param: dict[str, dict[str, RawTensor]] = {}
    unexpected, global_step = [], None
    for key, t in tensors.items():
        if source == "mlx" and key == MLX_STEP:
            global_step = _scalar(t, key, path)
            continue
        if source == "mlx" and key == MLX_LR:
            notes.append(f"{path.name}: learning_rate dropped (the schedule sets it each step)")
            continue
        param, name = _split_key(key)
        if name in moments or (per_param_step and name == TORCH_STEP):
            by_param.setdefault(param, {})[name] = t
        else:
            unexpected.append(key)
    params = set(shapes) if shapes is not None else set(by_param)
    unexpected += [f"{p}.{n}" for p in by_param if p not in params for n in by_param[p]]
    wanted = set(moments) | ({TORCH_STEP} if per_param_step else set())
    # torch creates a parameter's state at its first gradient: a parameter without any is fine.
    missing = [f"{p}.{n}" for p in params for n in sorted(wanted)
               if (p in by_param or not per_param_step) and n not in by_param.get(p, {})]
    if source == "mlx" and global_step is None:
        missing.append(MLX_STEP)
    if missing or unexpected:
        raise key_refusal(path, missing, unexpected, "optimizer moments", config_path)
    out: dict[str, RawTensor] = {}
    steps: list[int] = []
    empty: list[str] = []
    for param in sorted(params):
        state = by_param.get(param)
        if not state:
            empty.append(param)
            continue
        for name, new in moments.items():
            t = state[name]
            if shapes is not None:
                check_shape(f"{param}.{name}", t.shape, shapes[param], source, path,
                            config_path)
            out[f"{param}.{new}"] = relayout(t, table)
        if per_param_step:
            steps.append(_scalar(state[TORCH_STEP], f"{param}.{TORCH_STEP}", path))
        else:
            out[f"{param}.{TORCH_STEP}"] = RawTensor("F32", np.array(global_step, "<f4"))
    if per_param_step:
        step = max(steps, default=0)
        if len(set(steps)) > 1:
            notes.append(f"{path.name}: per-parameter steps differ ({min(steps)}..{step}); "
                         f"MLX keeps one global step: {step}")
        out[MLX_STEP] = RawTensor("U64", np.array(step, "<u8"))
        if empty:
            dtype = next((t.dtype for t in out.values() if t.dtype in FLOAT_DTYPES), "F32")
            for param in empty:
                # only a torch source gets here, so shapes are torch-layout shapes
                zeros = np.zeros(layout_shape(shapes[param], target), STORAGE[dtype])
                out[f"{param}.m"] = RawTensor(dtype, zeros)
                out[f"{param}.v"] = RawTensor(dtype, zeros.copy())
            notes.append(f"{path.name}: {len(empty)} parameter(s) had no torch optimizer state "
                         f"yet ({_examples(empty)}); MLX starts their moments at zero")
    return out, notes


def convert_trainer_state(state: dict[str, Any], source: str, target: str,
                          config: Config | None = None) -> tuple[dict[str, Any], list[str]]:
    """The target's trainer_state.json: (state, notes on what did not carry over)."""
    dropped = [desc for key, desc in BACKEND_STATE[source].items() if key in state]
    out = {k: v for k, v in state.items()
           if k not in BACKEND_STATE[source] and k not in CONVERSION_KEYS}
    step = int(out.get("step", 0))
    note = RNG_NOTE.format(target=target)
    out["converted_from"] = source
    out["conversion_note"] = note
    if target == "torch" and config is not None:
        tc = config.train
        out["param_groups"] = [{
            "lr": warmup_cosine(step, tc.lr, tc.warmup_steps, tc.steps),
            "betas": [tc.adam_beta1, tc.adam_beta2], "eps": ADAM_EPS,
            "weight_decay": tc.weight_decay}]
    notes = [note]
    if dropped:
        notes.append(f"not carried from {source}: {', '.join(dropped)}")
    return out, notes


# ---------------------------------------------------------------------------------------------
# whole checkpoints and single files


@dataclass
class ConversionReport:
    """What a conversion wrote and what it could not carry over."""

    source: Path
    out: Path
    source_layout: str
    target_layout: str
    converted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = (f"converted {self.source} ({self.source_layout}) -> {self.out} "
                f"({self.target_layout}): {', '.join(self.converted)}")
        return [head, *(f"note: {n}" for n in self.notes)]


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def check_out(src: Path, out: Path, force: bool) -> None:
    """Refuse an OUT that exists (without --force) or that overlaps the input."""
    s, o = src.resolve(), out.resolve()
    if _is_within(o, s) or _is_within(s, o):
        raise ConvertError(f"{out}: OUT overlaps the input {src}; pick an OUT outside it (the "
                           "input is never modified)")
    if (out.exists() or out.is_symlink()) and not force:
        raise ConvertError(f"{out}: already exists; pass --force to replace it, or pick another "
                           "OUT")


def _metadata(source_meta: dict[str, str], source: str, target: str, kind: str) -> dict[str, str]:
    meta = {k: v for k, v in source_meta.items()
            if k not in ("format", "t2s_layout", "t2s_kind", "t2s_converted_from")}
    meta.update(tensor_metadata(target, kind))
    meta["t2s_converted_from"] = source
    return meta


def _kind(meta: dict[str, str], path: Path) -> str:
    kind = meta.get("t2s_kind")
    if kind:
        return kind
    return {MODEL_FILE: "model", EMA_FILE: "ema", OPTIMIZER_FILE: "optimizer"}.get(path.name,
                                                                                   "model")


def _convert_file_contents(path: Path, source: str, target: str, dtype: str | None,
                           shapes: dict[str, tuple[int, ...]] | None,
                           config_path: Path | str) -> tuple[SafetensorsFile, str, list[str]]:
    f = read_safetensors(path)
    check_file_layout(f.metadata, source, target, path)
    kind = _kind(f.metadata, path)
    if kind == "optimizer":
        tensors, notes = convert_optimizer(f.tensors, source, target, shapes, path, config_path)
    else:
        tensors = convert_weights(f.tensors, source, target, dtype, shapes, path, config_path)
        notes = []
    return SafetensorsFile(tensors, _metadata(f.metadata, source, target, kind)), kind, notes


def convert_checkpoint(src: Path, out: Path, source: str, target: str, dtype: str | None = None,
                       force: bool = False) -> ConversionReport:
    """A whole checkpoint directory; everything is checked before anything is written."""
    config_path = src / CONFIG_FILE
    config = load_checkpoint_config(src)
    shapes = parameter_shapes(config.model, source)
    report = ConversionReport(src, out, source, target)
    converted: dict[str, SafetensorsFile] = {}
    for name in TENSOR_FILES:
        if (src / name).exists():
            converted[name], _, notes = _convert_file_contents(
                src / name, source, target, dtype, shapes, config_path)
            report.converted.append(name)
            report.notes += notes
    if MODEL_FILE not in converted:
        raise ConvertError(f"{src}: no {MODEL_FILE}; pass a complete checkpoint directory")
    if OPTIMIZER_FILE not in converted:
        report.notes.append(f"no {OPTIMIZER_FILE}: a resumed run starts a fresh optimizer")
    trainer_state = None
    if (src / TRAINER_STATE_FILE).exists():
        try:
            state = json.loads((src / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConvertError(f"{src / TRAINER_STATE_FILE}: not valid JSON ({e}); restore it "
                               "or delete it to convert the weights alone") from None
        if not isinstance(state, dict):
            raise ConvertError(f"{src / TRAINER_STATE_FILE}: not a JSON object; restore it or "
                               "delete it to convert the weights alone")
        trainer_state, notes = convert_trainer_state(state, source, target, config)
        report.notes += notes
    others = sorted(p.name for p in src.iterdir()
                    if p.name not in (*TENSOR_FILES, CONFIG_FILE, TRAINER_STATE_FILE,
                                      CHECKSUMS_FILE))
    if dtype is not None:
        report.notes.append(f"--dtype {DTYPE_NAMES[dtype]} applied to model and EMA weights; "
                            "optimizer moments keep their dtype")

    check_out(src, out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        shutil.copyfile(config_path, tmp / CONFIG_FILE)
        report.converted.insert(0, f"{CONFIG_FILE} (copied)")
        for name, f in converted.items():
            write_safetensors(tmp / name, f.tensors, f.metadata)
        if trainer_state is not None:
            (tmp / TRAINER_STATE_FILE).write_text(
                json.dumps(trainer_state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            report.converted.append(f"{TRAINER_STATE_FILE} (rewritten)")
        for name in others:
            if name.endswith(".safetensors"):
                report.notes.append(f"{name}: not a checkpoint file, so neither converted nor "
                                    "copied; convert it on its own with this script")
            elif (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
                report.converted.append(f"{name} (copied)")
            else:
                report.notes.append(f"{name}: not a file, not copied")
        if (src / CHECKSUMS_FILE).exists():  # the files changed, so their sums are new
            write_checksums(tmp)
            report.converted.append(f"{CHECKSUMS_FILE} (rewritten)")
        replace_whole(tmp, out)  # an existing OUT (--force) goes as a whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def convert_file(src: Path, out: Path, source: str, target: str, dtype: str | None = None,
                 force: bool = False, config: Path | None = None) -> ConversionReport:
    """One .safetensors file (model, EMA or optimizer, by its t2s_kind metadata).

    Keys and shapes are checked against `config`, or the config.json beside the file if there
    is one; with neither, only the layout is converted.
    """
    check_out(src, out, force)
    config_path = config if config is not None else src.parent / CONFIG_FILE
    shapes = None
    report = ConversionReport(src, out, source, target)
    if config_path.exists():
        try:
            model = Config.load(config_path).model
        except ConfigError as e:
            raise ConvertError(f"{config_path}: cannot be used ({e}); pass the right one with "
                               "--config") from None
        shapes = parameter_shapes(model, source)
    elif config is not None:
        raise ConvertError(f"{config}: no such config file; pass an existing config.json to "
                           "--config")
    else:
        report.notes.append(f"no {CONFIG_FILE} beside {src.name}: keys and shapes not checked "
                            "(pass --config to check them)")
    f, kind, notes = _convert_file_contents(src, source, target, dtype, shapes, config_path)
    report.converted.append(f"{src.name} ({kind})")
    report.notes += notes
    if dtype is not None and kind == "optimizer":
        report.notes.append(f"--dtype {DTYPE_NAMES[dtype]} ignored: optimizer moments keep "
                            "their dtype")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, prefix=f".{out.name}.tmp.", replace=replace_whole) as tmp:
        write_safetensors(tmp, f.tensors, f.metadata)
    return report


def convert(src: str | Path, out: str | Path, source: str, target: str, dtype: str | None = None,
            force: bool = False, config: str | Path | None = None) -> ConversionReport:
    """Convert a checkpoint directory (or a run / checkpoints folder: its latest checkpoint) or
    one .safetensors file from `source` to `target` layout. `dtype`: None (keep), "fp32",
    "fp16", "bf16" (or the safetensors names F32 / F16 / BF16)."""
    axes_table(source, target)
    if source == target:
        raise ValueError("source and target layouts are the same")
    if dtype is not None:
        dtype = DTYPES.get(dtype, dtype)
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype!r}: use one of {sorted(DTYPES)}")
    src, out = Path(src), Path(out)
    try:  # every form a user tries: run, checkpoints/, step_N, checkpoints/latest, one file
        ckpt = resolve_checkpoint(src, allow_file=True, forms=CONVERT_FORMS)
    except CheckpointError as e:
        raise ConvertError(str(e)) from None
    if ckpt.is_file():
        return convert_file(ckpt, out, source, target, dtype, force,
                            None if config is None else Path(config))
    check_out(src, out, force)  # the folder the user named must not overlap OUT either
    return convert_checkpoint(ckpt, out, source, target, dtype, force)


def torch_to_mlx(src: str | Path, out: str | Path, **kwargs: Any) -> ConversionReport:
    return convert(src, out, "torch", "mlx", **kwargs)


def mlx_to_torch(src: str | Path, out: str | Path, **kwargs: Any) -> ConversionReport:
    return convert(src, out, "mlx", "torch", **kwargs)
