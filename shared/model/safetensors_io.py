"""safetensors files read and written with numpy alone, and bf16 moved as its bits.

The converters (`shared.model.convert`) must not import torch or mlx, and numpy has no bf16: every
tensor file is read and written here (8-byte little-endian header length, JSON header, raw
little-endian data), so bf16 moves as its raw 16-bit patterns and is never rounded through
another dtype; `cast` rounds fp32 -> bf16 to nearest even on the bit pattern, as torch does.

It is also where every reader checks a file before trusting it: `read_raw_header` is the one
parser of a header's bytes, and `read_header` checks what that header says against the file (each
tensor's bytes inside it, the file ending where the last tensor does), so a copy cut short is
refused by name in microseconds, whatever the file's size.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shared.model.checkpoint import CheckpointError

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")

# safetensors dtype -> the numpy dtype that holds its bytes (little-endian). bf16 and fp8 have no
# numpy dtype: they are held as unsigned integers of their width and only ever moved as bits.
STORAGE = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
    "F8_E4M3": "u1", "F8_E5M2": "u1",
}
MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors library enforces


class ConvertError(CheckpointError):
    """A conversion refused; the message is one line that names the input and the fix."""


class HeaderError(ValueError):
    """Why bytes are not a safetensors header, without the path: each caller names the file and
    says its own fix (copy it again, re-save it, or treat it as a cache miss)."""


# ---------------------------------------------------------------------------------------------
# safetensors, read and written with numpy


def read_raw_header(f: BinaryIO, size: int) -> tuple[int, dict[str, Any], Any]:
    """The one reader of a safetensors header: (its length n, the tensor entries, the metadata).

    Reads the 8-byte little-endian length and the JSON after it from `f` (positioned at the
    start of a file of `size` bytes), and no tensor data, so checking a multi-GB checkpoint
    costs microseconds. Refuses (`HeaderError`) a file shorter than 8 bytes, a length past
    `MAX_HEADER` or past the file, a header that is not UTF-8 JSON or not an object. The
    tensors' data starts at byte 8 + n; the entries are not checked here (each caller checks
    what it relies on). `metadata` is `__metadata__` as found (`{}` when absent).
    """
    head = f.read(8)
    if len(head) < 8:
        raise HeaderError(f"only {len(head)} bytes")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER or 8 + n > size:
        raise HeaderError(f"header length {n} does not fit in {size} bytes")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeaderError(f"header: {e}") from None
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    return n, header, metadata


# safetensors dtypes and their sizes in bytes; what a header may name.
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
               "BOOL": 1}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as a safetensors header describes it (dtype by its safetensors name)."""

    shape: tuple[int, ...]
    dtype: str


def damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: damaged or not a safetensors file ({why}); copy it again "
                           "or use another checkpoint")


def read_header(path: str | Path) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """A safetensors file's tensors and metadata from its header alone, after checking that
    the header parses, every tensor's bytes lie inside the file, and the file ends where the
    last tensor does (a copy cut short fails here, in microseconds, however large the file)."""
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
    bad = f"{path}: not a valid safetensors file"
    try:
        with open(path, "rb") as f:
            _, header, metadata = read_raw_header(f, os.fstat(f.fileno()).st_size)
            body = memoryview(f.read())
    except OSError as e:
        raise ConvertError(f"{path}: cannot be read ({e.strerror or e})") from None
    except HeaderError as e:  # only if the file changed since read_header passed it
        raise ConvertError(f"{bad} ({e}); re-save it from its backend") from None
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
