"""Tensors out of a `torch.save` file with numpy alone (what `torch.load(weights_only=True)` reads).

The MLX side takes PyTorch weight files it did not write, such as pytorch-i3d's `rgb_imagenet.pt`
for FVD (`t2s_mlx.i3d`), and must not need torch for it. Both of torch's formats are read:

- the zip format (torch >= 1.6): `<name>/data.pkl`, the pickled object whose tensors point at
  storages by key, and `<name>/data/<key>`, each storage's raw bytes (`<name>/byteorder`: little
  unless it says otherwise);
- the legacy format (older files, `_use_new_zipfile_serialization=False`): five pickles in a row
  (a magic number, the protocol version 1001, system info, the object, the storage keys), then
  each storage as an int64 element count and its raw bytes, in the order of the keys.

As with `weights_only=True`, nothing in the file is run: the unpickler builds only plain
containers (dict, list, tuple, `collections.OrderedDict`) and tensors; any other global is refused
with `TorchFileError`. A tensor comes back as a numpy array of its dtype (bfloat16, which numpy
lacks, as the float32 of the same value), a copy that owns its memory.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> the numpy dtype of its elements ("bf16": held as uint16 bits).
STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class TorchFileError(ValueError):
    """Bytes that are not a torch.save file of tensors; the message says what was found."""


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass
class _Storage:
    """One storage of the file: its elements' dtype and where its bytes are (known late in the
    legacy format, whose data follows the pickle)."""

    dtype: str
    key: str
    byte_offset: int = 0  # a legacy view of another storage starts this far into it


@dataclass
class _Tensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise TorchFileError(f"a tensor over {type(storage).__name__}, not a storage")
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_):
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages: dict[str, _Storage]):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module: str, name: str):
        try:
            return _GLOBALS[module, name]
        except KeyError:
            raise TorchFileError(f"refusing {module}.{name} (only tensors and plain containers "
                                 "are read)") from None

    def persistent_load(self, pid):
        # zip: ('storage', type, key, location, numel); legacy: the same plus view metadata
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageType)):
            raise TorchFileError(f"an unknown persistent id {str(pid)[:60]}")
        dtype, key = pid[1].dtype, str(pid[2])
        root = self.storages.setdefault(key, _Storage(dtype, key))
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        _view_key, offset, _view_size = view
        return _Storage(dtype, key, root.byte_offset + int(offset) * _itemsize(dtype))


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bf16" else np.dtype(dtype).itemsize


def _array(t: _Tensor, data: dict[str, bytes], order: str) -> np.ndarray:
    dtype = t.storage.dtype
    store = np.dtype("u2" if dtype == "bf16" else dtype).newbyteorder(order)
    raw = data[t.storage.key]
    flat = np.frombuffer(raw, store, count=len(raw) // store.itemsize)
    start = t.storage.byte_offset // store.itemsize + t.offset
    extent = 1 + sum((n - 1) * s for n, s in zip(t.size, t.stride)) if all(t.size) else 0
    if start < 0 or start + extent > len(flat) or any(s < 0 for s in t.stride):
        raise TorchFileError(f"a tensor of shape {t.size} past its storage of {len(flat)}")
    out = np.lib.stride_tricks.as_strided(
        flat[start:], t.size, tuple(s * store.itemsize for s in t.stride), writeable=False)
    out = np.array(out, dtype=store.newbyteorder("="))  # a copy in native order
    if dtype == "bf16":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _resolve(obj: Any, data: dict[str, bytes], order: str) -> Any:
    if isinstance(obj, _Tensor):
        return _array(obj, data, order)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, data, order)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, data, order) for v in obj)
    return obj


def _load_zip(f: io.BufferedIOBase) -> Any:
    with zipfile.ZipFile(f) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise TorchFileError("a zip file without one <name>/data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        order = "<"
        if f"{prefix}byteorder" in names:
            order = {"little": "<", "big": ">"}.get(z.read(f"{prefix}byteorder").decode(), "<")
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(io.BytesIO(z.read(pkl[0])), storages).load()
        try:
            data = {key: z.read(f"{prefix}data/{key}") for key in storages}
        except KeyError as e:
            raise TorchFileError(f"a storage missing from the zip ({e})") from None
    return _resolve(obj, data, order)


def _load_legacy(f: io.BufferedIOBase) -> Any:
    storages: dict[str, _Storage] = {}

    def next_pickle() -> Any:  # each through the restricted unpickler, headers too
        return _Unpickler(f, storages).load()

    if next_pickle() != LEGACY_MAGIC:
        raise TorchFileError("neither a zip nor a legacy torch.save file")
    if next_pickle() != LEGACY_PROTOCOL:
        raise TorchFileError("an unknown legacy protocol version")
    info = next_pickle()
    order = "<" if not isinstance(info, dict) or info.get("little_endian", True) else ">"
    obj = next_pickle()
    keys = next_pickle()
    data = {}
    for key in keys:
        key = str(key)
        if key not in storages:
            raise TorchFileError(f"storage {key} listed but never used")
        (count,) = struct.unpack(f"{order}q", f.read(8))
        nbytes = count * _itemsize(storages[key].dtype)
        data[key] = f.read(nbytes)
        if len(data[key]) != nbytes:
            raise TorchFileError(f"the file ends inside storage {key}")
    missing = set(storages) - set(data)
    if missing:
        raise TorchFileError(f"storages without data: {sorted(missing)[:3]}")
    return _resolve(obj, data, order)


def load_torch_file(path: str | Path) -> Any:
    """The object a `torch.save` file holds, its tensors as numpy arrays (torch not needed).

    Raises TorchFileError (a ValueError) when the bytes are not such a file, or hold anything
    but tensors in plain containers; OSError when the file cannot be read.
    """
    with open(path, "rb") as f:
        try:
            if zipfile.is_zipfile(f):
                f.seek(0)
                return _load_zip(f)
            f.seek(0)
            return _load_legacy(f)
        except TorchFileError:
            raise
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, TypeError,
                ValueError, AttributeError, IndexError) as e:
            raise TorchFileError(f"not a torch.save file ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
