"""The converter scripts (convert/*.py) as a user meets them: a damaged or wrong-direction
input, an existing or nested OUT are refused in one line naming the fix, the input is never
touched, `--help` says what is converted, and neither torch nor MLX is imported."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mlx.core")  # the fixtures write an MLX checkpoint too

from convert_cases import (  # noqa: E402  (tests/support/convert_cases.py)
    ROOT,
    SCRIPTS,
    copy_checkpoint,
    run_script,
    snapshot,
)
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file as save_numpy  # noqa: E402
from safetensors.torch import load_file as load_torch  # noqa: E402

from shared.config import Config  # noqa: E402
from shared.model.checkpoint import EMA_FILE, MODEL_FILE, OPTIMIZER_FILE  # noqa: E402
from shared.model.convert import (  # noqa: E402
    convert,
    torch_to_mlx,
)
from shared.model.layouts import TORCH_TO_MLX_AXES  # noqa: E402
from shared.model.safetensors_io import (  # noqa: E402
    ConvertError,
)
from shared.model.tensor_files import tensor_metadata  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# refusals, through the real scripts


def edit_weights(path: Path, edit) -> None:
    tensors = load_torch(str(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    edit(tensors)
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata=metadata)


def damaged(kind: str, source: Path, dest: Path) -> Path:
    ckpt = copy_checkpoint(source, dest)
    if kind == "missing key":
        edit_weights(ckpt / MODEL_FILE, lambda t: t.pop("conv_in.bias"))
    elif kind == "unexpected key":
        edit_weights(ckpt / EMA_FILE, lambda t: t.update(extra=torch.zeros(3)))
    elif kind == "optimizer key":
        edit_weights(ckpt / OPTIMIZER_FILE, lambda t: t.pop("conv_out.weight.exp_avg_sq"))
    elif kind == "shape":
        config = Config.load(ckpt / "config.json")
        config.model = replace(config.model, base_channels=32)  # the weights are width 16
        config.save(ckpt / "config.json")
    elif kind == "mislabelled layout":  # MLX-layout conv weights in a file that says torch
        edit_weights(ckpt / MODEL_FILE, lambda t: t.update(
            {k: v.permute(*TORCH_TO_MLX_AXES[5]).contiguous() for k, v in t.items()
             if v.ndim == 5}))
    elif kind == "not text2sign":
        tensors = load_torch(str(ckpt / MODEL_FILE))
        from safetensors.torch import save_file
        save_file(tensors, str(ckpt / MODEL_FILE))  # no metadata
    return ckpt


REFUSALS = {
    "missing key": ("1 missing (conv_in.bias)", "config.json it was written with"),
    "unexpected key": ("1 unexpected (extra)", "config.json it was written with"),
    "optimizer key": ("conv_out.weight.exp_avg_sq", "re-save it"),
    "shape": ("has shape", "config.json it was written with"),
    "mislabelled layout": ("in mlx layout although", "re-save it"),
    "not text2sign": ("no t2s_layout", "save_checkpoint"),
}


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_a_bad_input_is_refused_in_one_line(kind, torch_checkpoint, tmp_path):
    ckpt = damaged(kind, torch_checkpoint, tmp_path / "in")
    before = snapshot(ckpt)
    result = run_script("torch_to_mlx", ckpt, tmp_path / "out")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in REFUSALS[kind]:
        assert part in lines[0]
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no temporaries left behind
    assert snapshot(ckpt) == before


@pytest.mark.parametrize("script, fixture", [("torch_to_mlx", "mlx_checkpoint"),
                                             ("mlx_to_torch", "torch_checkpoint")])
def test_the_wrong_layout_for_the_direction_is_refused(script, fixture, request, tmp_path):
    source = request.getfixturevalue(fixture)
    result = run_script(script, source, tmp_path / "out")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    other = "convert/mlx_to_torch.py" if script == "torch_to_mlx" else "convert/torch_to_mlx.py"
    assert "already in" in result.stderr and other in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_existing_out_needs_force(torch_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_script("torch_to_mlx", torch_checkpoint, out)
    assert result.returncode == 2 and "--force" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"
    result = run_script("torch_to_mlx", torch_checkpoint, out, "--force")
    assert result.returncode == 0, result.stderr
    assert not (out / "keep.txt").exists() and (out / MODEL_FILE).exists()
    assert "RNG" in result.stdout  # the statement of what does not carry over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_out_inside_the_input_is_refused(torch_checkpoint):
    before = snapshot(torch_checkpoint)
    for out in (torch_checkpoint / "converted", torch_checkpoint.parent):
        result = run_script("torch_to_mlx", torch_checkpoint, out, "--force")
        assert result.returncode == 2 and "overlaps" in result.stderr
    assert snapshot(torch_checkpoint) == before


def test_the_input_directory_is_untouched(torch_checkpoint, mlx_checkpoint, tmp_path):
    for source, script in ((torch_checkpoint, "torch_to_mlx"), (mlx_checkpoint, "mlx_to_torch")):
        before = snapshot(source.parent.parent)  # the whole run folder
        for dtype in (None, "bf16"):
            out = tmp_path / f"{script}_{dtype}"
            extra = ["--dtype", dtype] if dtype else []
            result = run_script(script, source, out, *extra)
            assert result.returncode == 0, result.stderr
        assert snapshot(source.parent.parent) == before


def test_help_says_what_is_converted():
    for script in SCRIPTS:
        result = run_script(script, "--help")
        assert result.returncode == 0
        for word in ("optimizer", "EMA", "config.json", "RNG", "--dtype", "--force"):
            assert word in result.stdout, word


def test_the_scripts_import_neither_torch_nor_mlx(torch_checkpoint, mlx_checkpoint, tmp_path):
    """Blocked imports (any attempt fails) and a check of sys.modules at the end."""
    probe = (
        "import runpy, sys\n"
        "for name in ('torch', 'mlx', 'mlx.core'):\n"
        "    sys.modules[name] = None\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "loaded = [m for m, v in sys.modules.items() if v is not None and\n"
        "          m.split('.')[0] in ('torch', 'mlx')]\n"
        "assert not loaded, loaded\n"
        "sys.exit(code)\n")
    for script, source in (("torch_to_mlx", torch_checkpoint), ("mlx_to_torch", mlx_checkpoint)):
        result = subprocess.run(
            [sys.executable, "-c", probe, str(SCRIPTS[script]), str(source),
             str(tmp_path / script), "--dtype", "bf16"],
            capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / script / MODEL_FILE).exists()


def test_library_refusals_are_convert_errors(torch_checkpoint, tmp_path):
    with pytest.raises(ConvertError, match="no such file"):
        convert(tmp_path / "nope", tmp_path / "out", "torch", "mlx")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x01\x00")
    with pytest.raises(ConvertError, match="damaged or not a safetensors file"):
        torch_to_mlx(bad, tmp_path / "out.safetensors")
    meta = tensor_metadata("torch", "model")
    save_numpy({"w": np.zeros(3, np.float32)}, str(tmp_path / "w.safetensors"), metadata=meta)
    torch_to_mlx(tmp_path / "w.safetensors", tmp_path / "w_mlx.safetensors")  # layout only
    with pytest.raises(ValueError):
        torch_to_mlx(torch_checkpoint, tmp_path / "x", dtype="fp8")
