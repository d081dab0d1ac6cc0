"""A checkpoint's tensor files: the metadata each is written with, and the checks before one is
loaded; framework-free.

Every tensor file carries its layout in its safetensors metadata (`tensor_metadata`), so a file
written by the other backend is refused by name with the converter that fixes it
(`check_layout`) rather than loaded into the wrong axes. `check_tensor_file` reads the header
(never the data, `shared.model.safetensors_io.read_header`) and refuses a file that is cut short
or does not fit the model, so a copy interrupted between machines is reported by name rather than
as a traceback from deep inside a loader; `read_tensor_file` puts that check in front of a
backend's own safetensors reader.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shared.model.checkpoint import CheckpointError
from shared.model.layouts import LAYOUTS
from shared.model.safetensors_io import TensorSpec, read_header


def tensor_metadata(layout: str, kind: str = "model") -> dict[str, str]:
    """safetensors metadata: `format` as transformers expects, plus our layout tag."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    return {"format": "pt" if layout == "torch" else "mlx", "t2s_layout": layout,
            "t2s_kind": kind}


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


def dtype_kind(dtype: str) -> str:
    """float / int / bool: what must match between a file and a model (a float32 model loads
    bf16 weights, e.g. a `--dtype bf16` conversion, but never integers)."""
    return "bool" if dtype == "BOOL" else "float" if dtype.startswith(("F", "BF")) else "int"


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
