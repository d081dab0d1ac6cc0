"""The `backend` fixture for suites that run once per backend (t2s_torch and t2s_mlx), in the
style of diffusers' shared model tests: a test takes `backend`, a small adapter that supplies
what differs between the backends (the module under test, arrays to and from numpy, dtypes,
the video layout, random generators), and is collected as `test_x[torch]` and `test_x[mlx]`.

`backend.device` is where the backend's device-taking tests run: torch's is the session's
`--device` (tests/conftest.py; the CPU by default), MLX's the CPU.

Every difference a shared test meets sits on the adapter, so test bodies read the same for both
backends and never ask `backend.name`: running a model without gradients (`no_grad`, `eval`),
parameters by name, checkpoint files and converters (`load_safetensors`, `convert_away`), a
quiet `trainer(config)`, the console script (`tool`) and its launchers (`launch`), stub models
(`backend.stubs(suite)`, tests/support/stubs.py), the text encoders (`backend.text`,
tests/support/text_encoder_cases.py), and each suite's per-backend settings (step counts, clip
sizes, thresholds: `backend.train` for test_train.py, `backend.latent`, `backend.preemption`,
`backend.valprobe`), with the reasons beside them.

A backend whose library is missing is skipped, the way tests/torch and tests/mlx skip
(pytest.importorskip). `@pytest.mark.backends("mlx")` runs a test on the named backends only;
a test that parametrizes "backend" itself (with indirect=["backend"]) pairs each backend with
its own values.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import signal
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import device_choice
import numpy as np
import pytest
import stubs
import text_encoder_cases

BACKENDS = ("torch", "mlx")

# MLX's CPU backend is much slower than torch's: its training tests shrink the toy clips.
SMALL_CLIPS = ("data.num_frames=2", "data.image_size=8")


class Backend:
    """What a shared test needs to know about one backend."""

    name: str
    channels_last: bool
    device: str
    small_clips: tuple[str, ...]  # config overrides: the toy clips 2 x 8 x 8 (MLX) or as they are
    cpu_args: tuple  # the CPU, for the functions that take a device (torch's; MLX's take none)
    traces_graph: bool  # train.log_graph writes the model graph to TensorBoard
    close: dict  # float32 against a float64 reference: assert_allclose's rtol and atol
    train: SimpleNamespace  # tests/backends/test_train.py's per-backend settings
    valprobe: tuple  # test_valprobe.py: (motions, frames per clip, overrides, evaluated steps)
    preemption: SimpleNamespace  # test_preemption.py: the training batch size, the stop signal
    latent: SimpleNamespace  # test_latent.py: the overfitting test's steps and loss windows

    def __repr__(self) -> str:
        return f"<backend {self.name}>"

    def module(self, name: str) -> ModuleType:
        """t2s_<backend>.<name>, e.g. backend.module("diffusion")."""
        return importlib.import_module(f"t2s_{self.name}.{name}")

    def trainer(self, config, log=lambda _: None):
        """The backend's Trainer for `config` on `self.device`, without a progress bar, its
        log lines handed to `log` (by default dropped)."""
        return self.module("train").Trainer(config, device=self.device, progress=False, log=log)

    @property
    def tool(self) -> str:
        """The backend's console script installed beside this Python (`t2s-torch`, `t2s-mlx`)."""
        return str(Path(sys.executable).parent / f"t2s-{self.name}")

    # Extra environment for the backend's training subprocesses (test_distributed.py).
    launch_env: dict[str, str] = {}

    def launch(self, processes: int, port: int, launcher: str | None = None) -> list[str]:
        """The command that starts `processes` local ranks of what follows it (`self.tool` and
        its arguments) under the backend's launcher, its rendezvous on `port`."""
        raise NotImplementedError

    def convert_away(self, src: Path, out: Path):
        """Convert a checkpoint (or one weights file) of this backend's layout into the other's:
        `shared.model.convert.torch_to_mlx` or `mlx_to_torch`."""
        from shared.model import convert

        other = next(name for name in BACKENDS if name != self.name)
        return getattr(convert, f"{self.name}_to_{other}")(src, out)

    def video_shape(self, b: int, c: int, f: int, h: int, w: int) -> tuple[int, ...]:
        """The backend's layout of a video batch: (B, C, F, H, W) or channels-last."""
        return (b, f, h, w, c) if self.channels_last else (b, c, f, h, w)

    @property
    def frame_axis(self) -> int:
        """The axis of F in a video batch."""
        return 1 if self.channels_last else 2

    def to_device(self, x):
        """`x` where a model built on `self.device` can take it (MLX: as it is)."""
        return x

    @property
    def library(self) -> str:
        """The library's import name, as logs and TensorBoard tags record it."""
        return self.xp.__name__.partition(".")[0]

    @property
    def on_device(self) -> dict:
        """Keyword arguments placing work on `self.device`, for the functions that take one."""
        return {}

    def as_loaded(self, model):
        """`model` as load_model places it (torch: a copy on the device, in its layout)."""
        return model

    def as_input(self, a: np.ndarray):
        """A numpy array as a caller may hand it to a model: MLX's take numpy itself."""
        return a

    def no_grad(self):
        """A context in which a model runs without recording gradients."""
        return contextlib.nullcontext()

    def eval(self, *arrays) -> None:
        """Compute lazily built arrays now (MLX); torch's are computed already."""

    def stubs(self, suite: str) -> tuple[type, ...]:
        """A suite's stub model classes for this backend, e.g. test_sample.py's (Stub, Broken):
        `stubs.<suite>_<backend>()` (tests/support/stubs.py)."""
        return getattr(stubs, f"{suite}_{self.name}")()


class TorchBackend(Backend):
    name = "torch"
    channels_last = False
    small_clips = ()
    traces_graph = True
    close = {"rtol": 1.3e-6, "atol": 1e-5}  # torch.testing.assert_close's float32 tolerances
    # test_train.py, on the tiny preset's own 4 x 16 x 16 clips. overfit: 100 steps, the last
    # 20 losses under 0.3 of the first 10; variants: 15 steps, the last five losses under the
    # first five.
    train = SimpleNamespace(
        overfit=(("train.steps=100", "train.warmup_steps=10"), 100, 20, 10, 0.3),
        resume=(),  # test_two_halves_with_resume_equal_one_run's extra overrides
        reload_steps=3,
        keep_last=(("train.steps=8", "train.checkpoint_every=2"), [6, 8]),  # (, steps kept)
        refuse_steps=2,
        good_steps=4,
        tensorboard=(4, 3),  # (steps, sample steps)
        variants=(("train.steps=15", "train.warmup_steps=3"), 15, 5, 5, 1.0),
    )
    # test_valprobe.py: the tiny preset's clips of three captions, evaluated at steps 2 and 4.
    valprobe = (("sway", "bow", "still"), 8, ("train.steps=4", "train.eval_steps=2"), [2, 4])
    # test_preemption.py: the tiny preset's clips at batch 4, stopped by SIGTERM (what
    # torchrun, Kubernetes and most schedulers send).
    preemption = SimpleNamespace(batch_size=4, stop=signal.SIGTERM)
    # test_latent.py, on the tiny preset's own 4 x 16 x 16 clips (8 x 8 latents): 80 steps, the
    # last 15 losses under 0.5 of the first 10 (single steps are noisy: windows).
    latent = SimpleNamespace(overfit=(("train.steps=80", "train.warmup_steps=10"), 15, 10, 0.5))

    @functools.cached_property
    def text(self) -> text_encoder_cases.TorchText:
        """The text-encoder suites' differences (tests/support/text_encoder_cases.py)."""
        return text_encoder_cases.TorchText(self)

    def __init__(self) -> None:
        import torch

        self.xp = torch
        self.nn = torch.nn
        self.float32, self.bfloat16 = torch.float32, torch.bfloat16
        self.index_dtype = torch.int64  # what randint and integer masks give
        self.np_index_dtype = np.int64
        self.device = device_choice.chosen()
        self.cpu_args = (torch.device("cpu"),)

    # One OpenMP thread per process: several ranks' workers on a small CPU spin against each
    # other.
    launch_env = {"OMP_NUM_THREADS": "1"}

    def launch(self, processes: int, port: int, launcher: str | None = None) -> list[str]:
        """torchrun (gloo on the CPU), or launcher="accelerate": accelerate's multi-GPU launcher,
        which runs gloo ranks on a CPU-only machine too."""
        if launcher == "accelerate":
            return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
                    f"--num_processes={processes}", "--num_machines=1", "--mixed_precision=no",
                    "--dynamo_backend=no", f"--main_process_port={port}"]
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
                f"--master_port={port}"]

    def to_device(self, x):
        return x.to(self.device)

    @property
    def on_device(self) -> dict:
        return {"device": self.device}

    def as_loaded(self, model):
        prefers_channels_last = self.module("device").prefers_channels_last
        return copy.deepcopy(model).to(self.device).use_channels_last(
            prefers_channels_last(self.device))

    def as_input(self, a: np.ndarray):
        return self.array(a)

    def no_grad(self):
        return self.xp.no_grad()

    def array(self, a, dtype=None):
        out = self.xp.from_numpy(np.ascontiguousarray(a))
        return out if dtype is None else out.to(dtype)

    def numpy(self, x) -> np.ndarray:
        x = x.detach().cpu()
        return (x.float() if x.dtype == self.bfloat16 else x).numpy()

    def astype(self, x, dtype):
        return x.to(dtype)

    def generator(self, seed: int):
        return self.xp.Generator().manual_seed(seed)

    def randn(self, shape, seed: int):
        return self.xp.randn(*shape, generator=self.generator(seed))

    def concat(self, arrays):
        return self.xp.cat(arrays)

    def seed(self, seed: int) -> None:
        """Seed the global generator (what model initialisation draws from)."""
        self.xp.manual_seed(seed)

    def perturb(self, model, scale: float) -> None:
        """Add scale * N(0, 1) from the global generator to every parameter."""
        with self.xp.no_grad():
            for p in model.parameters():
                p.add_(scale * self.xp.randn_like(p))

    def params(self, model) -> dict:
        """name -> parameter, in the backend's own arrays."""
        return dict(model.named_parameters())

    def parameter_keys(self, model) -> list[str]:
        return [n for n, _ in model.named_parameters()]

    def state_keys(self, model) -> list[str]:
        """The keys a checkpoint of `model` holds (torch: its state dict)."""
        return list(model.state_dict())

    def set_parameters(self, model, updates: dict) -> None:
        """Overwrite the named parameters with the given numpy (or backend) values."""
        named = dict(model.named_parameters())
        with self.xp.no_grad():
            for name, value in updates.items():
                named[name].copy_(self.xp.as_tensor(np.asarray(value)))

    def load_weights_strict(self, model, weights: dict) -> None:
        model.load_state_dict(weights, strict=True)

    def to_bfloat16(self, model):
        return model.to(self.bfloat16)

    def grads(self, model, loss_fn, *args) -> dict:
        """name -> d loss_fn(*args) / d parameter, in the backend's own arrays (torch: .grad,
        accumulated as backward() does)."""
        loss_fn(*args).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    def loss_and_grads(self, model, args) -> tuple[np.ndarray, dict]:
        model.zero_grad(set_to_none=True)
        out = model(*args)
        out.square().mean().backward()
        return self.numpy(out), {n: None if p.grad is None else self.numpy(p.grad)
                                 for n, p in model.named_parameters()}

    def load_safetensors(self, path: Path) -> dict:
        from safetensors.torch import load_file

        return load_file(path)

    def equal(self, a, b) -> bool:
        return self.xp.equal(a, b)

    def to_model_layout(self, x: np.ndarray):
        return self.module("sample").to_channels_first(x, self.xp.device("cpu"), self.float32)

    def from_model_layout(self, out) -> np.ndarray:
        return self.module("sample").to_channels_last(out)


class MLXBackend(Backend):
    name = "mlx"
    channels_last = True
    small_clips = SMALL_CLIPS
    cpu_args = ()
    traces_graph = False
    close = {"rtol": 1e-5, "atol": 1e-5}
    # test_train.py, on 2 x 8 x 8 clips, fewer steps. overfit (measured, AdamW with bias
    # correction, as torch): after 40 steps the last four losses average ~0.37 of the first three
    # (which start at ~1, a zero conv_out); variants (measured): the last four losses average
    # 0.55-0.65 of the first three after 20 steps.
    train = SimpleNamespace(
        overfit=((*SMALL_CLIPS, "train.steps=40", "train.warmup_steps=2"), 40, 4, 3, 0.55),
        # batch 2 of 8 clips: the resume lands mid-epoch and the second half crosses an epoch;
        # dropout and caption dropout both draw from MLX's generator inside the compiled step.
        resume=("train.batch_size=2", "train.cond_drop_prob=0.5"),
        reload_steps=2,
        keep_last=((*SMALL_CLIPS, "train.steps=4", "train.checkpoint_every=1"), [3, 4]),
        refuse_steps=1,
        good_steps=2,
        tensorboard=(2, 2),
        variants=((*SMALL_CLIPS, "train.steps=20", "train.warmup_steps=2"), 20, 4, 3, 0.75),
    )
    # test_valprobe.py: 2 x 16 x 16 clips of two captions, one evaluation after two steps.
    valprobe = (("sway", "bow"), 6, ("data.num_frames=2", "data.image_size=16", "train.steps=2",
                                     "train.eval_steps=1"), [2])
    # test_preemption.py: batch 2 of small clips, stopped by SIGUSR1 (what SLURM's --signal
    # sends), so the two backends' runs cover both stop signals.
    preemption = SimpleNamespace(batch_size=2, stop=signal.SIGUSR1)
    # test_latent.py, on 2 x 8 x 8 clips (4 x 4 latents): 100 steps, the last 20 losses under
    # 0.6 of the first 10.
    latent = SimpleNamespace(overfit=(("train.steps=100", "train.warmup_steps=2"), 20, 10, 0.6))

    @functools.cached_property
    def text(self) -> text_encoder_cases.MLXText:
        return text_encoder_cases.MLXText(self)

    def __init__(self) -> None:
        import mlx.core as mx
        import mlx.nn as nn

        self.xp = mx
        self.nn = nn
        self.float32, self.bfloat16 = mx.float32, mx.bfloat16
        self.index_dtype = mx.int32  # what randint and integer masks give
        self.np_index_dtype = np.int32
        self.device = "cpu"

    def launch(self, processes: int, port: int, launcher: str | None = None) -> list[str]:
        """mlx.launch --backend ring: local ranks over TCP loopback."""
        return [str(Path(sys.executable).parent / "mlx.launch"), "-n", str(processes),
                "--backend", "ring", "--starting-port", str(port)]

    def array(self, a, dtype=None):
        out = self.xp.array(np.asarray(a))
        return out if dtype is None else out.astype(dtype)

    def numpy(self, x) -> np.ndarray:
        return np.array(x.astype(self.float32) if x.dtype == self.bfloat16 else x)

    def astype(self, x, dtype):
        return x.astype(dtype)

    def generator(self, seed: int):
        return self.xp.random.key(seed)

    def randn(self, shape, seed: int):
        return self.xp.random.normal(shape, key=self.generator(seed))

    def concat(self, arrays):
        return self.xp.concatenate(arrays)

    def eval(self, *arrays) -> None:
        self.xp.eval(*arrays)

    def seed(self, seed: int) -> None:
        self.xp.random.seed(seed)

    def perturb(self, model, scale: float) -> None:
        from mlx.utils import tree_map

        normal = self.xp.random.normal
        model.update(tree_map(lambda p: p + scale * normal(p.shape), model.parameters()))

    def params(self, model) -> dict:
        from mlx.utils import tree_flatten

        return dict(tree_flatten(model.parameters()))

    def parameter_keys(self, model) -> list[str]:
        return self.module("unet").parameter_keys(model)

    def state_keys(self, model) -> list[str]:
        from mlx.utils import tree_flatten

        return [k for k, _ in tree_flatten(model.trainable_parameters())]

    def set_parameters(self, model, updates: dict) -> None:
        from mlx.utils import tree_unflatten

        model.update(tree_unflatten([(n, self.xp.array(np.asarray(v)))
                                     for n, v in updates.items()]))

    def load_weights_strict(self, model, weights: dict) -> None:
        model.load_weights(list(weights.items()), strict=True)

    def to_bfloat16(self, model):
        model.set_dtype(self.bfloat16)
        return model

    def grads(self, model, loss_fn, *args) -> dict:
        from mlx.utils import tree_flatten

        _, grads = self.nn.value_and_grad(model, loss_fn)(*args)
        return dict(tree_flatten(grads))

    def loss_and_grads(self, model, args) -> tuple[np.ndarray, dict]:
        from mlx.utils import tree_flatten

        mx = self.xp

        def loss_fn(*a):
            out = model(*a)
            return mx.mean(out * out), out

        (_, out), grads = self.nn.value_and_grad(model, loss_fn)(*args)
        mx.eval(out, grads)
        return self.numpy(out), {n: self.numpy(g) for n, g in tree_flatten(grads)}

    def load_safetensors(self, path: Path) -> dict:
        return self.xp.load(str(path))

    def equal(self, a, b) -> bool:
        return np.array(a).tobytes() == np.array(b).tobytes()

    def to_model_layout(self, x: np.ndarray):
        return self.array(x)

    def from_model_layout(self, out) -> np.ndarray:
        return np.array(out)


_REQUIRES = {"torch": ("torch", TorchBackend), "mlx": ("mlx.core", MLXBackend)}
_LOADED: dict[str, Backend] = {}


def load_backend(name: str) -> Backend:
    """The adapter for `name`; skips the test when its library is not installed."""
    if name not in _LOADED:
        library, cls = _REQUIRES[name]
        pytest.importorskip(library)
        _LOADED[name] = cls()
    return _LOADED[name]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "backends(*names): run a tests/backends test only on these backends")


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "backend" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return  # the test pairs backends with its own values (indirect=["backend"])
    marker = metafunc.definition.get_closest_marker("backends")
    names = list(marker.args) if marker else list(BACKENDS)
    unknown = set(names) - set(BACKENDS)
    assert not unknown, f"unknown backends {unknown}"
    metafunc.parametrize("backend", names, ids=names, indirect=True)


@pytest.fixture(scope="module")
def backend(request) -> Backend:
    """Module-scoped (the adapter holds no state), so module-scoped fixtures may build on it."""
    return load_backend(request.param)
