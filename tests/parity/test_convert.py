"""The checkpoint converters (shared/convert.py, convert/*.py) between the torch and MLX bodies.

Checkpoints are written by the real backends (`save_checkpoint` with a randomised tiny UNet, an
EMA copy and an AdamW that took one real step), converted through the library or the real
scripts, and read back by the other backend: round trips are bit-exact, converted weights give
the other UNet the same outputs, casts equal torch's and numpy's, refusals are one line naming
the fix, and the input is never touched.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
optim = pytest.importorskip("mlx.optimizers")

from mlx.utils import tree_flatten, tree_map  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file as save_numpy  # noqa: E402
from safetensors.torch import load_file as load_torch  # noqa: E402

import t2s_mlx.checkpoint as mlx_ckpt  # noqa: E402
import t2s_torch.checkpoint as torch_ckpt  # noqa: E402
from shared.checkpoint import (  # noqa: E402
    CHECKSUMS_FILE,
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    TORCH_TO_MLX_AXES,
    TRAINER_STATE_FILE,
    check_checksums,
    tensor_metadata,
)
from shared.config import Config, preset  # noqa: E402
from shared.convert import (  # noqa: E402
    convert,
    convert_optimizer,
    mlx_to_torch,
    torch_to_mlx,
)
from shared.layouts import parameter_shapes  # noqa: E402
from shared.safetensors_io import (  # noqa: E402
    ConvertError,
    RawTensor,
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    read_safetensors,
    write_safetensors,
)
from t2s_mlx.unet import UNet3D as MLXUNet3D  # noqa: E402
from t2s_torch.unet import UNet3D as TorchUNet3D  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"torch_to_mlx": ROOT / "convert" / "torch_to_mlx.py",
           "mlx_to_torch": ROOT / "convert" / "mlx_to_torch.py"}
FRAMES, SIZE, TOKENS = 4, 16, 6
FORWARD_ATOL = 1e-4
STEP = 7


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """torch's OpenMP workers and MLX's CPU threads fight over the cores in one process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**model_changes) -> Config:
    config = preset("tiny")
    config.model = replace(config.model, **model_changes)
    return config


def numpy_inputs(config: Config, batch: int = 2, seed: int = 1):
    rng = np.random.default_rng(seed)
    m = config.model
    x = rng.standard_normal((batch, m.in_channels, FRAMES, SIZE, SIZE), dtype=np.float32)
    t = np.array([3, 700][:batch])
    context = rng.standard_normal((batch, TOKENS, m.context_dim), dtype=np.float32)
    mask = np.ones((batch, TOKENS), dtype=bool)
    mask[1:, 4:] = False
    pooled = rng.standard_normal((batch, m.context_dim), dtype=np.float32)
    return x, t, context, mask, pooled


def torch_forward(model, args) -> np.ndarray:
    x, t, context, mask, pooled = (torch.from_numpy(a) for a in args)
    with torch.no_grad():
        return model(x.to(next(model.parameters()).dtype), t, context, mask, pooled).float().numpy()


def mlx_forward(model, args) -> np.ndarray:
    x, t, context, mask, pooled = args
    out = model(mx.array(x.transpose(0, 2, 3, 4, 1)), mx.array(t), mx.array(context),
                mx.array(mask), mx.array(pooled))
    mx.eval(out)
    return np.array(out.astype(mx.float32)).transpose(0, 4, 1, 2, 3)  # to (B, C, F, H, W)


# ---------------------------------------------------------------------------------------------
# checkpoints written by the real backends


def make_torch_checkpoint(run_dir: Path, config: Config, dtype=torch.float32) -> Path:
    torch.manual_seed(0)
    model = TorchUNet3D(config.model)
    with torch.no_grad():  # randomise everything, zero-initialised and dirac layers included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model, ema = model.to(dtype), ema.to(dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(2):  # two real steps: moments and step counters far from their start
        x, t, context, mask, pooled = (torch.from_numpy(a) for a in numpy_inputs(config))
        out = model(x.to(dtype), t, context, mask, pooled)
        out.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    state = {"micro_batch": 2, "grad_accum": 1, "ema_updates": STEP,
             "generator": torch_ckpt.encode_bytes(torch.Generator().manual_seed(1).get_state()),
             "torch_rng": torch_ckpt.encode_bytes(torch.get_rng_state()),
             "param_groups": [{k: v for k, v in g.items() if k != "params"}
                              for g in optimizer.param_groups]}
    return torch_ckpt.save_checkpoint(run_dir, STEP, config, model.eval(), ema.eval(), optimizer,
                                      state)


def make_mlx_checkpoint(run_dir: Path, config: Config) -> Path:
    mx.random.seed(0)
    model = MLXUNet3D(config.model)
    model.update(tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), model.parameters()))
    ema = MLXUNet3D(config.model)
    ema.update(tree_map(lambda p: p + 0.01 * mx.random.normal(p.shape), model.parameters()))
    optimizer = optim.AdamW(learning_rate=1e-3, weight_decay=0.01)
    optimizer.init(model.trainable_parameters())
    x, t, context, mask, pooled = numpy_inputs(config)

    def loss_fn(m):
        out = m(mx.array(x.transpose(0, 2, 3, 4, 1)), mx.array(t), mx.array(context),
                mx.array(mask), mx.array(pooled))
        return (out * out).mean()

    for _ in range(2):
        _, grads = nn.value_and_grad(model, loss_fn)(model)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)
    model.eval()
    ema.eval()
    state = {"micro_batch": 2, "grad_accum": 1, "ema_updates": STEP}
    return mlx_ckpt.save_checkpoint(run_dir, STEP, config, model, ema, optimizer, state)


@pytest.fixture(scope="module")
def config() -> Config:
    return tiny_config()


@pytest.fixture(scope="module")
def torch_checkpoint(tmp_path_factory, config) -> Path:
    return make_torch_checkpoint(tmp_path_factory.mktemp("torch_run"), config)


@pytest.fixture(scope="module")
def torch_bf16_checkpoint(tmp_path_factory, config) -> Path:
    return make_torch_checkpoint(tmp_path_factory.mktemp("torch_bf16_run"), config,
                                 torch.bfloat16)


@pytest.fixture(scope="module")
def mlx_checkpoint(tmp_path_factory, config) -> Path:
    return make_mlx_checkpoint(tmp_path_factory.mktemp("mlx_run"), config)


def snapshot(path: Path) -> dict[str, tuple[str, int]]:
    """Every file under `path`: its sha256 and mtime (ns)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in files}


def raw_bits(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.dtype, tuple, bytes]]:
    """Each tensor's dtype, shape and exact bytes (NaN-proof, -0-proof comparison)."""
    return {k: (v.dtype, tuple(v.shape), v.contiguous().reshape(-1).view(torch.uint8)
                .numpy().tobytes()) for k, v in tensors.items()}


def run_script(name: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS[name]), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


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


# ---------------------------------------------------------------------------------------------
# refusals, through the real scripts


def copy_checkpoint(source: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in source.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


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
