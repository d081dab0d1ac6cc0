"""The checkpoint converters (shared/model/convert.py, convert/*.py) between the torch and MLX
bodies.

Checkpoints are written by the real backends (`save_checkpoint` with a randomised tiny UNet, an
EMA copy and an AdamW that took one real step), converted through the library or the real
scripts, and read back by the other backend: round trips are bit-exact, converted weights give
the other UNet the same outputs, casts equal torch's and numpy's, refusals are one line naming
the fix, and the input is never touched (refusals and the scripts: test_convert_cli.py; the
cases and checkpoints: tests/support/convert_cases.py and conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
optim = pytest.importorskip("mlx.optimizers")

from convert_cases import (  # noqa: E402  (tests/support/convert_cases.py)
    FORWARD_ATOL,
    STEP,
    copy_checkpoint,
    mlx_forward,
    numpy_inputs,
    raw_bits,
    run_script,
    snapshot,
    tiny_config,
    torch_forward,
)
from mlx.utils import tree_flatten, tree_map  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file as save_numpy  # noqa: E402
from safetensors.torch import load_file as load_torch  # noqa: E402

import t2s_mlx.checkpoint as mlx_ckpt  # noqa: E402
import t2s_torch.checkpoint as torch_ckpt  # noqa: E402
from shared.model.checkpoint import (  # noqa: E402
    CHECKSUMS_FILE,
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    check_checksums,
)
from shared.model.convert import (  # noqa: E402
    convert_optimizer,
    mlx_to_torch,
    torch_to_mlx,
)
from shared.model.layouts import TORCH_TO_MLX_AXES, parameter_shapes  # noqa: E402
from shared.model.safetensors_io import (  # noqa: E402
    ConvertError,
    RawTensor,
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    read_safetensors,
    write_safetensors,
)
from t2s_mlx.unet import UNet3D as MLXUNet3D  # noqa: E402
from t2s_torch.unet import UNet3D as TorchUNet3D  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# the layout table and the shapes a config builds


@pytest.mark.parametrize("changes", [{}, {"conv_mode": "full"},
                                     {"channel_mult": (1, 2, 2), "attention_levels": (0, 2),
                                      "num_res_blocks": 2, "in_channels": 4, "out_channels": 4}])
def test_parameter_shapes_are_what_both_unets_build(changes):
    model_config = tiny_config(**changes).model
    torch_shapes = {k: tuple(v.shape) for k, v in TorchUNet3D(model_config).state_dict().items()}
    mlx_shapes = {k: tuple(v.shape) for k, v in tree_flatten(MLXUNet3D(model_config)
                                                              .parameters())}
    assert parameter_shapes(model_config, "torch") == torch_shapes
    assert parameter_shapes(model_config, "mlx") == mlx_shapes


# ---------------------------------------------------------------------------------------------
# dtypes


def test_bf16_rounding_equals_torch_bit_for_bit():
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0,
                        np.finfo(np.float32).max, -np.finfo(np.float32).max,
                        np.finfo(np.float32).tiny, np.finfo(np.float32).smallest_subnormal,
                        1.00390625, 1.01171875, 3.0e38], np.float32)
    random_bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 2**16, 1000, dtype=np.uint32) << 16) | 0x8000  # exactly halfway
    x = np.concatenate([special, random_bits.view(np.float32), ties.view(np.float32),
                        rng.standard_normal(10_000).astype(np.float32)])
    ours = float32_to_bf16_bits(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(ours[finite], theirs[finite])
    assert np.isnan(bf16_bits_to_float32(ours[~finite])).all()
    # bf16 -> fp32 is exact: torch's widening gives the same bits
    back = torch.from_numpy(theirs.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bf16_bits_to_float32(theirs).view(np.uint32)[finite],
                                  back.view(np.uint32)[finite])


def test_safetensors_reader_and_writer_agree_with_the_library(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((2, 3, 1, 3, 3)).astype(np.float32),
              "b": np.arange(5, dtype=np.int64), "c": np.array(3, np.uint64),
              "d": rng.standard_normal(7).astype(np.float16), "e": np.zeros((0, 4), np.float32)}
    save_numpy(arrays, str(tmp_path / "lib.safetensors"), metadata={"k": "v"})
    f = read_safetensors(tmp_path / "lib.safetensors")
    assert f.metadata == {"k": "v"}
    for k, v in arrays.items():
        np.testing.assert_array_equal(f.tensors[k].array, v)
    write_safetensors(tmp_path / "ours.safetensors", f.tensors, f.metadata)
    bf16 = torch.randn(4, 5).to(torch.bfloat16)
    from safetensors.torch import save_file as save_torch
    save_torch({"w": bf16}, str(tmp_path / "bf16.safetensors"))
    g = read_safetensors(tmp_path / "bf16.safetensors")
    write_safetensors(tmp_path / "bf16_ours.safetensors", g.tensors, {})
    assert torch.equal(load_torch(str(tmp_path / "bf16_ours.safetensors"))["w"].view(torch.int16),
                       bf16.view(torch.int16))
    with safe_open(str(tmp_path / "ours.safetensors"), framework="np") as h:
        assert h.metadata() == {"k": "v"}
        for k, v in arrays.items():
            np.testing.assert_array_equal(h.get_tensor(k), v)


# ---------------------------------------------------------------------------------------------
# round trips


def assert_same_checkpoint_tensors(a: Path, b: Path) -> None:
    for name in (MODEL_FILE, EMA_FILE, OPTIMIZER_FILE):
        assert raw_bits(load_torch(str(a / name))) == raw_bits(load_torch(str(b / name))), name


@pytest.mark.parametrize("which", ["torch_checkpoint", "torch_bf16_checkpoint"])
def test_torch_mlx_torch_round_trip_is_bit_exact(which, request, tmp_path):
    source = request.getfixturevalue(which)
    before = snapshot(source)
    torch_to_mlx(source, tmp_path / "mlx")
    mlx_to_torch(tmp_path / "mlx", tmp_path / "back")
    assert_same_checkpoint_tensors(source, tmp_path / "back")
    assert (tmp_path / "back" / "config.json").read_bytes() == (source / "config.json"
                                                               ).read_bytes()
    assert snapshot(source) == before
    for converted in (tmp_path / "mlx", tmp_path / "back"):  # new files, new sums, intact
        check_checksums(converted)
    assert (tmp_path / "mlx" / CHECKSUMS_FILE).read_bytes() != (source / CHECKSUMS_FILE
                                                               ).read_bytes()
    if which == "torch_bf16_checkpoint":
        f = read_safetensors(tmp_path / "mlx" / OPTIMIZER_FILE)
        assert {t.dtype for k, t in f.tensors.items() if k != "step"} == {"BF16"}


def test_mlx_torch_mlx_round_trip_is_bit_exact(mlx_checkpoint, tmp_path):
    mlx_to_torch(mlx_checkpoint, tmp_path / "torch")
    torch_to_mlx(tmp_path / "torch", tmp_path / "back")
    for name in (MODEL_FILE, EMA_FILE, OPTIMIZER_FILE):
        a, b = mx.load(str(mlx_checkpoint / name)), mx.load(str(tmp_path / "back" / name))
        assert set(a) == set(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert np.array_equal(np.array(a[k]), np.array(b[k])), k


def test_optimizer_state_torch_has_not_created_yet(config):
    """torch makes a parameter's state at its first gradient; MLX has one for every parameter
    and one global step."""
    shapes = parameter_shapes(config.model, "torch")
    tensors = {}
    for i, (key, shape) in enumerate(shapes.items()):
        if key == "text_embed.weight":
            continue  # never had a gradient
        tensors[f"{key}.exp_avg"] = RawTensor("F32", np.full(shape, 0.5, np.float32))
        tensors[f"{key}.exp_avg_sq"] = RawTensor("F32", np.full(shape, 0.25, np.float32))
        tensors[f"{key}.step"] = RawTensor("F32", np.array(5.0 if i else 4.0, np.float32))
    out, notes = convert_optimizer(tensors, "torch", "mlx", shapes)
    assert int(out["step"].array) == 5 and out["step"].dtype == "U64"
    assert not out["text_embed.weight.m"].array.any()
    assert out["text_embed.weight.v"].shape == shapes["text_embed.weight"]
    assert any("differ" in n for n in notes) and any("text_embed.weight" in n for n in notes)
    assert set(out) == {f"{k}.{m}" for k in shapes for m in "mv"} | {"step"}


def test_other_files_in_a_checkpoint(torch_checkpoint, tmp_path):
    ckpt = copy_checkpoint(torch_checkpoint, tmp_path / "in")
    (ckpt / "README.txt").write_text("notes")
    (ckpt / "extra.safetensors").write_bytes((ckpt / MODEL_FILE).read_bytes())
    report = torch_to_mlx(ckpt, tmp_path / "out")
    assert (tmp_path / "out" / "README.txt").read_text() == "notes"
    assert not (tmp_path / "out" / "extra.safetensors").exists()  # would keep the torch layout
    assert any("extra.safetensors" in n for n in report.notes)


# ---------------------------------------------------------------------------------------------
# the other backend reads and computes the same


def test_torch_checkpoint_runs_in_mlx(torch_checkpoint, config, tmp_path):
    out = tmp_path / "mlx"
    report = torch_to_mlx(torch_checkpoint, out)
    assert any("RNG" in note for note in report.notes)
    args = numpy_inputs(config)
    for use_ema, name in ((True, EMA_FILE), (False, MODEL_FILE)):
        _, t_model, _ = torch_ckpt.load_model(torch_checkpoint, use_ema=use_ema)
        _, m_model, _ = mlx_ckpt.load_model(out, use_ema=use_ema)
        expected, got = torch_forward(t_model, args), mlx_forward(m_model, args)
        assert np.abs(expected).max() > 0.1
        assert np.abs(got - expected).max() <= FORWARD_ATOL, name

    # the optimizer state loads into an MLX AdamW and holds torch's moments, re-laid-out
    model = MLXUNet3D(config.model)
    optimizer = optim.AdamW(learning_rate=1e-3)
    optimizer.init(model.trainable_parameters())
    mlx_ckpt.load_optimizer_tensors(optimizer, mlx_ckpt.load_tensors(out / OPTIMIZER_FILE))
    state = dict(tree_flatten(optimizer.state))
    torch_opt = load_torch(str(torch_checkpoint / OPTIMIZER_FILE))
    assert int(state["step"].item()) == int(torch_opt["conv_in.weight.step"]) == 2
    for key, value in tree_flatten(model.parameters()):
        m, v = np.array(state[f"{key}.m"]), np.array(state[f"{key}.v"])
        assert m.shape == value.shape
        tm, tv = torch_opt[f"{key}.exp_avg"].numpy(), torch_opt[f"{key}.exp_avg_sq"].numpy()
        axes = TORCH_TO_MLX_AXES.get(tm.ndim)
        np.testing.assert_array_equal(m, tm if axes is None else tm.transpose(axes))
        np.testing.assert_array_equal(v, tv if axes is None else tv.transpose(axes))
    grads = tree_map(mx.ones_like, model.trainable_parameters())
    optimizer.update(model, grads)  # and an MLX step runs on it
    mx.eval(model.parameters())

    trainer_state = json.loads((out / TRAINER_STATE_FILE).read_text())
    assert {k: trainer_state[k] for k in ("step", "micro_batch", "grad_accum", "ema_updates")} \
        == {"step": STEP, "micro_batch": 2, "grad_accum": 1, "ema_updates": STEP}
    assert not {"generator", "torch_rng", "param_groups"} & set(trainer_state)
    assert "RNG" in trainer_state["conversion_note"]


def test_mlx_checkpoint_runs_in_torch(mlx_checkpoint, config, tmp_path):
    out = tmp_path / "torch"
    mlx_to_torch(mlx_checkpoint, out)
    args = numpy_inputs(config)
    for use_ema in (True, False):
        _, m_model, _ = mlx_ckpt.load_model(mlx_checkpoint, use_ema=use_ema)
        _, t_model, _ = torch_ckpt.load_model(out, use_ema=use_ema)
        expected, got = mlx_forward(m_model, args), torch_forward(t_model, args)
        assert np.abs(expected).max() > 0.1
        assert np.abs(got - expected).max() <= FORWARD_ATOL

    with safe_open(str(out / MODEL_FILE), framework="pt") as f:
        assert f.metadata()["format"] == "pt" and f.metadata()["t2s_layout"] == "torch"
    model = TorchUNet3D(config.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    names = {p: n for n, p in model.named_parameters()}
    torch_ckpt.load_optimizer_tensors(optimizer, torch_ckpt.load_tensors(out / OPTIMIZER_FILE),
                                      names)
    mlx_opt = mx.load(str(mlx_checkpoint / OPTIMIZER_FILE))
    for param, name in names.items():
        state = optimizer.state[param]
        assert state["step"].dtype == torch.float32 and float(state["step"]) == 2
        m = np.array(mlx_opt[f"{name}.m"])
        axes = {5: (0, 4, 1, 2, 3)}.get(m.ndim)
        np.testing.assert_array_equal(state["exp_avg"].numpy(),
                                      m if axes is None else m.transpose(axes))
    model(*(torch.from_numpy(a) for a in args)).pow(2).mean().backward()
    optimizer.step()  # and a torch step runs on it

    trainer_state = json.loads((out / TRAINER_STATE_FILE).read_text())
    assert trainer_state["step"] == STEP and trainer_state["converted_from"] == "mlx"
    groups = trainer_state["param_groups"]
    assert len(groups) == len(optimizer.param_groups) == 1
    assert groups[0]["betas"] == [config.train.adam_beta1, config.train.adam_beta2]


# ---------------------------------------------------------------------------------------------
# --dtype and single files


def test_dtype_bf16_equals_torch_cast(torch_checkpoint, tmp_path):
    result = run_script("torch_to_mlx", torch_checkpoint, tmp_path / "out", "--dtype", "bf16")
    assert result.returncode == 0, result.stderr
    for name in (MODEL_FILE, EMA_FILE):
        f = read_safetensors(tmp_path / "out" / name)
        source = load_torch(str(torch_checkpoint / name))
        for key, value in source.items():
            t = f.tensors[key]
            assert t.dtype == "BF16"
            want = value.to(torch.bfloat16)
            if want.ndim == 5:
                want = want.permute(*TORCH_TO_MLX_AXES[5])
            np.testing.assert_array_equal(
                t.array, want.contiguous().view(torch.int16).numpy().view(np.uint16))
    opt = read_safetensors(tmp_path / "out" / OPTIMIZER_FILE)
    assert {t.dtype for t in opt.tensors.values()} == {"F32", "U64"}  # moments keep fp32
    weights = mx.load(str(tmp_path / "out" / MODEL_FILE))
    assert {v.dtype for v in weights.values()} == {mx.bfloat16}


def test_dtype_fp16_equals_numpy_cast(mlx_checkpoint, tmp_path):
    mlx_to_torch(mlx_checkpoint, tmp_path / "out", dtype="fp16")
    source = read_safetensors(mlx_checkpoint / MODEL_FILE).tensors
    got = load_torch(str(tmp_path / "out" / MODEL_FILE))
    for key, t in source.items():
        want = t.array.astype(np.float16)
        if want.ndim == 5:
            want = want.transpose(0, 4, 1, 2, 3)
        assert got[key].dtype == torch.float16
        np.testing.assert_array_equal(got[key].numpy().view(np.uint16), want.view(np.uint16))


def test_dtype_bf16_then_fp32_is_exact(torch_bf16_checkpoint, tmp_path):
    """bf16 weights widened to fp32 and back lose nothing."""
    torch_to_mlx(torch_bf16_checkpoint, tmp_path / "f32", dtype="fp32")
    mlx_to_torch(tmp_path / "f32", tmp_path / "back", dtype="bf16")
    a = raw_bits(load_torch(str(torch_bf16_checkpoint / MODEL_FILE)))
    assert a == raw_bits(load_torch(str(tmp_path / "back" / MODEL_FILE)))


def test_a_single_safetensors_file_converts(torch_checkpoint, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "weights.safetensors").write_bytes((torch_checkpoint / EMA_FILE).read_bytes())
    result = run_script("torch_to_mlx", lone / "weights.safetensors",
                        tmp_path / "mlx.safetensors")
    assert result.returncode == 0, result.stderr
    assert "not checked" in result.stdout  # no config beside it
    got = mx.load(str(tmp_path / "mlx.safetensors"))
    want = load_torch(str(torch_checkpoint / EMA_FILE))
    assert set(got) == set(want)
    for k, v in want.items():
        v = v.numpy()
        np.testing.assert_array_equal(np.array(got[k]),
                                      v.transpose(TORCH_TO_MLX_AXES[5]) if v.ndim == 5 else v)
    # inside a checkpoint (config beside it), and the optimizer file too
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        out = tmp_path / f"mlx_{name}"
        torch_to_mlx(torch_checkpoint / name, out)
        with safe_open(str(out), framework="np") as f:
            assert f.metadata()["t2s_layout"] == "mlx"
    assert "step" in mx.load(str(tmp_path / f"mlx_{OPTIMIZER_FILE}"))
    with pytest.raises(ConvertError, match="config"):
        torch_to_mlx(torch_checkpoint / MODEL_FILE, tmp_path / "x.safetensors",
                     config=tmp_path / "nope.json")


def test_a_run_folder_converts_its_latest_checkpoint(torch_checkpoint, tmp_path):
    run_dir = torch_checkpoint.parent.parent
    report = torch_to_mlx(run_dir, tmp_path / "out")
    assert report.source == torch_checkpoint
    assert (tmp_path / "out" / MODEL_FILE).exists()
