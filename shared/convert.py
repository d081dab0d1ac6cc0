"""Converting checkpoints between the torch and MLX layouts, with numpy alone.

`convert/torch_to_mlx.py` and `convert/mlx_to_torch.py` are thin command lines over `main` here;
tests and other code call `convert` (or `torch_to_mlx` / `mlx_to_torch`) directly. Nothing here
imports torch or mlx.

What a conversion does, driven by the one layout table (`shared.checkpoint.TORCH_TO_MLX_AXES`,
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

Every tensor file is read and written by the small safetensors reader / writer below (8-byte
little-endian header length, JSON header, raw little-endian data), so bf16 - which numpy lacks -
moves as its raw 16-bit patterns and is never rounded through another dtype.

Refusals (one line, naming the fix): an input already in the target layout, keys missing from or
unknown to the model the config builds, a shape that does not fit that model, an existing OUT
without `--force`, an OUT that would touch the input. The output is assembled beside OUT under a
temporary name and renamed into place; the input is only ever opened for reading.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.checkpoint import (
    CHECKPOINT_FORMS,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    EMA_FILE,
    LAYOUTS,
    MLX_TO_TORCH_AXES,
    MODEL_FILE,
    OPTIMIZER_FILE,
    TORCH_TO_MLX_AXES,
    TRAINER_STATE_FILE,
    CheckpointError,
    load_checkpoint_config,
    read_header,
    resolve_checkpoint,
    tensor_metadata,
    write_checksums,
)
from shared.config import Config, ConfigError, ModelConfig
from shared.lr import warmup_cosine

DTYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
WEIGHT_FILES = {MODEL_FILE: "model", EMA_FILE: "ema"}
TENSOR_FILES = (MODEL_FILE, EMA_FILE, OPTIMIZER_FILE)

# safetensors dtype -> the numpy dtype that holds its bytes (little-endian). bf16 and fp8 have no
# numpy dtype: they are held as unsigned integers of their width and only ever moved as bits.
STORAGE = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
    "F8_E4M3": "u1", "F8_E5M2": "u1",
}
MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors library enforces

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


class ConvertError(CheckpointError):
    """A conversion refused; the message is one line that names the input and the fix."""


# ---------------------------------------------------------------------------------------------
# safetensors, read and written with numpy


@dataclass
class RawTensor:
    """A tensor as stored: its safetensors dtype and an array of its bytes in that shape.

    `array` has the tensor's shape and a numpy dtype of the same width (uint16 for BF16), so
    transposing or copying it moves bit patterns and never rounds.
    """

    dtype: str
    array: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


@dataclass
class SafetensorsFile:
    tensors: dict[str, RawTensor]
    metadata: dict[str, str]


def read_safetensors(path: str | Path) -> SafetensorsFile:
    """Every tensor of a safetensors file (copied out of it; the file is only read)."""
    path = Path(path)
    try:  # a damaged file: one line that says so, before reading it all
        read_header(path)
    except CheckpointError as e:
        raise ConvertError(str(e)) from None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConvertError(f"{path}: cannot be read ({e.strerror or e})") from None
    bad = f"{path}: not a valid safetensors file"
    if len(data) < 8:
        raise ConvertError(f"{bad} (only {len(data)} bytes); re-save it from its backend")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise ConvertError(f"{bad} (header length {n} does not fit); re-save it from its backend")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{bad} (header: {e}); re-save it from its backend") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{bad} (header is not a JSON object); re-save it from its backend")
    metadata = header.pop("__metadata__", None) or {}
    body = memoryview(data)[8 + n:]
    tensors = {}
    for name, info in header.items():
        try:
            dtype, shape = info["dtype"], tuple(int(s) for s in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
            storage = np.dtype(STORAGE[dtype])
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{bad} (tensor {name!r}: {info!r}); re-save it from its "
                               "backend") from None
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= start <= end <= len(body) or end - start != count * storage.itemsize:
            raise ConvertError(f"{bad} (tensor {name!r} has offsets {start}..{end} for "
                               f"{dtype} {list(shape)}); re-save it from its backend")
        array = np.frombuffer(body[start:end], dtype=storage).reshape(shape).copy()
        tensors[name] = RawTensor(dtype, array)
    return SafetensorsFile(tensors, {str(k): str(v) for k, v in metadata.items()})


def safetensors_bytes(tensors: dict[str, RawTensor], metadata: dict[str, str]) -> Iterable[bytes]:
    """The pieces of a safetensors file: header length, header, then each tensor's bytes."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    arrays, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        array = np.asarray(t.array, dtype=np.dtype(STORAGE[t.dtype]), order="C")
        header[name] = {"dtype": t.dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad so the data starts 8-byte aligned, as safetensors does
    yield struct.pack("<Q", len(text))
    yield text
    for array in arrays:
        yield array.tobytes()


def write_safetensors(path: str | Path, tensors: dict[str, RawTensor],
                      metadata: dict[str, str]) -> None:
    """Write a safetensors file (flushed to disk). Callers write under a temporary name."""
    with open(path, "wb") as f:
        for piece in safetensors_bytes(tensors, metadata):
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# dtypes


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even as torch does.

    On the uint32 pattern: add 0x7FFF plus the lowest kept bit, keep the top 16 bits; values past
    the bf16 range round to +-inf, as torch's do. NaN becomes the quiet NaN 0x7FC0 with its sign
    (ml_dtypes' choice; rounding could otherwise carry a NaN to inf). torch has no single NaN
    pattern: its scalar path writes 0x7FC0, its vectorised path 0xFFFF.
    """
    x = np.asarray(x, dtype="<f4", order="C")
    bits = x.view("<u4").astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        sign = ((bits >> 16) & 0x8000).astype(np.uint16)
        rounded = np.where(nan, sign | np.uint16(0x7FC0), rounded).astype(np.uint16)
    return rounded.astype("<u2")


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32, exactly (a 16-bit shift)."""
    return (np.asarray(bits, dtype="<u2").astype("<u4") << 16).view("<f4")


def to_float32(t: RawTensor) -> np.ndarray:
    if t.dtype == "BF16":
        return bf16_bits_to_float32(t.array)
    return t.array.astype("<f4")


def cast(t: RawTensor, dtype: str | None) -> RawTensor:
    """Cast a floating tensor to `dtype` ("F32", "F16", "BF16"); others pass through.

    Through float32, which holds every bf16 and fp16 value exactly: bf16 -> fp32 is a shift,
    fp32 -> bf16 rounds to nearest even on the bits, fp32 -> fp16 is numpy's (IEEE) cast.
    """
    if dtype is None or t.dtype == dtype or t.dtype not in FLOAT_DTYPES:
        return t
    if dtype not in ("F32", "F16", "BF16"):
        raise ValueError(f"cannot cast to {dtype!r}; use F32, F16 or BF16")
    x = to_float32(t)
    if dtype == "BF16":
        return RawTensor("BF16", float32_to_bf16_bits(x))
    with np.errstate(over="ignore"):  # out-of-range values become +-inf, as in torch
        return RawTensor(dtype, x.astype(STORAGE[dtype]))


# ---------------------------------------------------------------------------------------------
# layouts and the shapes a config builds


def axes_table(source: str, target: str) -> dict[int, tuple[int, ...]]:
    """The permutation, by tensor rank, that takes `source` layout to `target` (the one table)."""
    if (source, target) == ("torch", "mlx"):
        return TORCH_TO_MLX_AXES
    if (source, target) == ("mlx", "torch"):
        return MLX_TO_TORCH_AXES
    if source == target and source in LAYOUTS:
        return {}
    raise ValueError(f"no conversion from {source!r} to {target!r}; layouts are {LAYOUTS}")


def relayout(t: RawTensor, table: dict[int, tuple[int, ...]]) -> RawTensor:
    axes = table.get(t.array.ndim)
    if axes is None:
        return t
    return RawTensor(t.dtype, np.asarray(t.array.transpose(axes), order="C"))


def layout_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """A torch-layout shape as `layout` stores it."""
    axes = axes_table("torch", layout).get(len(shape))
    return shape if axes is None else tuple(shape[a] for a in axes)


def parameter_shapes(model: ModelConfig, layout: str = "torch") -> dict[str, tuple[int, ...]]:
    """Every parameter key of the UNet `model` builds, with its shape in `layout`.

    Walks `t2s_torch/unet.py` (and its MLX twin) with integers only; tests check it against both
    real models, so a change there that this walk misses fails loudly.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out: int, inp: int, bias: bool = True) -> None:
        shapes[f"{name}.weight"] = (out, inp)
        if bias:
            shapes[f"{name}.bias"] = (out,)

    def norm(name: str, ch: int) -> None:
        shapes[f"{name}.weight"] = (ch,)
        shapes[f"{name}.bias"] = (ch,)

    def conv(name: str, out: int, inp: int, kernel: tuple[int, int, int]) -> None:
        shapes[f"{name}.weight"] = (out, inp, *kernel)
        shapes[f"{name}.bias"] = (out,)

    def block_conv(name: str, inp: int, out: int) -> None:
        if model.conv_mode == "full":
            conv(name, out, inp, (3, 3, 3))
        else:
            conv(f"{name}.spatial", out, inp, (1, 3, 3))
            conv(f"{name}.temporal", out, out, (3, 1, 1))

    def resnet(name: str, inp: int, out: int) -> None:
        norm(f"{name}.norm1", inp)
        block_conv(f"{name}.conv1", inp, out)
        linear(f"{name}.time_emb_proj", 2 * out, temb)
        norm(f"{name}.norm2", out)
        block_conv(f"{name}.conv2", out, out)
        if inp != out:
            conv(f"{name}.skip", out, inp, (1, 1, 1))

    def attention(name: str, ch: int, context: int) -> None:
        linear(f"{name}.to_q", ch, ch, bias=False)
        linear(f"{name}.to_k", ch, context, bias=False)
        linear(f"{name}.to_v", ch, context, bias=False)
        linear(f"{name}.to_out", ch, ch)

    def transformer(name: str, ch: int) -> None:
        norm(f"{name}.norm", ch)
        linear(f"{name}.proj_in", ch, ch)
        for i in (1, 2, 3, 4):
            norm(f"{name}.norm{i}", ch)
        attention(f"{name}.attn1", ch, ch)
        attention(f"{name}.attn2", ch, model.context_dim)
        attention(f"{name}.attn_temp", ch, ch)
        linear(f"{name}.ff.linear_1", 4 * ch, ch)
        linear(f"{name}.ff.linear_2", ch, 4 * ch)
        linear(f"{name}.proj_out", ch, ch)
        if model.text_alignment:
            shapes[f"{name}.text_align"] = (model.num_heads,)

    chs, temb, last = model.level_channels(), model.time_embed_dim, model.num_levels - 1
    linear("time_embed.linear_1", temb, model.base_channels)
    linear("time_embed.linear_2", temb, temb)
    linear("text_embed", temb, model.context_dim)
    if model.frame_text:
        linear("frame_text.proj", chs[0], model.context_dim)
    conv("conv_in", chs[0], model.in_channels, (1, 3, 3))

    skip_chs, prev = [chs[0]], chs[0]
    for i, ch in enumerate(chs):
        for j in range(model.num_res_blocks):
            resnet(f"down_blocks.{i}.resnets.{j}", prev if j == 0 else ch, ch)
            if i in model.attention_levels:
                transformer(f"down_blocks.{i}.attentions.{j}", ch)
        if i < last:
            conv(f"down_blocks.{i}.downsample.conv", ch, ch, (1, 3, 3))
        skip_chs += [ch] * model.num_res_blocks + ([ch] if i < last else [])
        prev = ch

    resnet("mid_block.resnets.0", prev, prev)
    transformer("mid_block.attentions.0", prev)
    resnet("mid_block.resnets.1", prev, prev)

    for u, level in enumerate(reversed(range(model.num_levels))):
        ch = chs[level]
        skips = [skip_chs.pop() for _ in range(model.num_res_blocks + 1)]
        for j, s in enumerate(skips):
            resnet(f"up_blocks.{u}.resnets.{j}", (prev if j == 0 else ch) + s, ch)
            if level in model.attention_levels:
                transformer(f"up_blocks.{u}.attentions.{j}", ch)
        if level > 0:
            conv(f"up_blocks.{u}.upsample.conv", ch, ch, (1, 3, 3))
        prev = ch

    norm("norm_out", prev)
    conv("conv_out", model.out_channels, prev, (1, 3, 3))
    return {k: layout_shape(v, layout) for k, v in shapes.items()}


# ---------------------------------------------------------------------------------------------
# checks (each raises one line that names the fix)


def _examples(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


def check_file_layout(metadata: dict[str, str], source: str, target: str, path: Path) -> None:
    """Refuse a file that is not in the layout this direction converts from."""
    layout = metadata.get("t2s_layout")
    if layout == source:
        return
    if layout is None:
        raise ConvertError(f"{path}: no t2s_layout in its safetensors metadata, so not a "
                           "text2sign checkpoint file; re-save it with t2s_torch or t2s_mlx "
                           "save_checkpoint")
    if layout == target:
        raise ConvertError(f"{path}: already in {target} layout; to go {target} -> {source} use "
                           f"`python convert/{target}_to_{source}.py IN OUT`, or use it as it is")
    raise ConvertError(f"{path}: unknown t2s_layout {layout!r}; expected {source!r} for "
                       f"convert/{source}_to_{target}.py")


def key_refusal(path: Path, missing: Iterable[str], unexpected: Iterable[str], what: str,
                config_path: Path | str) -> ConvertError:
    missing, unexpected = set(missing), set(unexpected)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
    return ConvertError(f"{path}: {what} do not fit the model {config_path} builds: "
                        f"{'; '.join(parts)}; convert the checkpoint with the config.json it was "
                        "written with, or re-save it from the training run")


def check_keys(expected: Iterable[str], found: Iterable[str], path: Path, what: str,
               config_path: Path | str) -> None:
    expected, found = set(expected), set(found)
    if expected != found:
        raise key_refusal(path, expected - found, found - expected, what, config_path)


def check_shape(key: str, shape: tuple[int, ...], want: tuple[int, ...], layout: str,
                path: Path, config_path: Path | str) -> None:
    """`want` is what the config builds, in `layout` (the layout the file says it is in)."""
    if shape == want:
        return
    other = "mlx" if layout == "torch" else "torch"
    axes = axes_table(layout, other).get(len(want))
    if axes is not None and shape == tuple(want[a] for a in axes):
        hint = (f"it is stored in {other} layout although its t2s_layout says {layout}; "
                "re-save it from its backend")
    else:
        hint = "convert the checkpoint with the config.json it was written with"
    raise ConvertError(f"{path}: {key} has shape {list(shape)} but {config_path} builds "
                       f"{list(want)} in {layout} layout; {hint}")


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


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished temporary into place; an existing OUT (--force) goes as a whole."""
    if out.exists() or out.is_symlink():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


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
        _replace(tmp, out)
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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp.", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_safetensors(tmp, f.tensors, f.metadata)
        _replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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


# ---------------------------------------------------------------------------------------------
# the command line behind convert/torch_to_mlx.py and convert/mlx_to_torch.py

HELP = """\
Convert a text2sign checkpoint written by the {source} backend into the {target} layout, with
numpy and safetensors only (neither torch nor mlx is imported).

IN is a checkpoint directory (config.json, model.safetensors, ema.safetensors,
optimizer.safetensors, trainer_state.json), a training run or its checkpoints/ folder (its latest
checkpoint), or one .safetensors file. OUT is the directory (or file) to write.

What is converted:
  model, EMA     every tensor; conv weights move {src_conv} -> {dst_conv},
                 everything else is the same in both layouts (same keys).
  optimizer      AdamW moments {src_opt} -> {dst_opt}, laid out like their
                 weights; the step counter {src_step} -> {dst_step}.
  config.json    copied unchanged.
  trainer_state  step, micro_batch, grad_accum, ema_updates carry over.
Not carried: the RNG state (and torch's fp16 GradScaler state). A resumed run continues with the
{target} backend's own randomness; exact resume holds within one backend.

--dtype casts model and EMA weights (bf16 rounds to nearest even, as torch does); optimizer
moments keep their dtype. The output is written under a temporary name beside OUT and renamed
into place; IN is never modified. Refusals print one line naming the fix and exit with 2.
"""

_SIDES = {
    "torch": {"conv": "(O, I, kF, kH, kW)", "opt": "<p>.exp_avg / .exp_avg_sq",
              "step": "per parameter (<p>.step)"},
    "mlx": {"conv": "(O, kF, kH, kW, I)", "opt": "<p>.m / .v", "step": "global (step)"},
}


def build_parser(source: str, target: str, prog: str | None = None) -> argparse.ArgumentParser:
    s, t = _SIDES[source], _SIDES[target]
    parser = argparse.ArgumentParser(
        prog=prog or f"convert/{source}_to_{target}.py",
        description=HELP.format(source=source, target=target, src_conv=s["conv"],
                                dst_conv=t["conv"], src_opt=s["opt"], dst_opt=t["opt"],
                                src_step=s["step"], dst_step=t["step"]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN", help="checkpoint directory or .safetensors file")
    parser.add_argument("output", metavar="OUT", help="where to write the converted copy")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="cast model and EMA weights (default: keep their dtype)")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT")
    parser.add_argument("--config", default=None, metavar="CONFIG_JSON",
                        help="for a single .safetensors file: the config.json to check keys and "
                             "shapes against (default: the one beside the file, if any)")
    return parser


def main(argv: list[str] | None = None, *, source: str, target: str,
         out: Callable[[str], None] = print) -> int:
    """Run one direction's command line; returns the exit code (2 for a refusal)."""
    args = build_parser(source, target).parse_args(argv)
    try:
        report = convert(args.input, args.output, source, target, dtype=args.dtype,
                         force=args.force, config=args.config)
    except (CheckpointError, ConfigError, OSError) as e:
        message = " ".join(str(e).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    for line in report.lines():
        out(line)
    return 0
