"""The text-encoder suites' shared cases (tests/backends/test_text_encoder*.py): captions,
building either backend's encoder, comparing outputs across frameworks, counting forward
calls, and transformers run directly as the reference. Importable as `text_encoder_cases`
(pyproject: pytest `pythonpath`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.config import TextEncoderConfig
from shared.model.text import (
    DEFAULT_TEXT_ENCODER,
    resolve_text_encoder,
)

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
MINILM_VOCAB = 30522
LONG = " ".join(["a long caption that has to be truncated because it keeps on going"] * 6)
CAPTIONS = ["", "Hello, world!", "THE QUICK Brown fox; jumps -- over the lazy dog?!",
            "sign 'thank you' twice", LONG]


# --------------------------------------------------------------------------- helpers


def _module(backend):
    """t2s_<backend>.text_encoder; the torch one runs transformers."""
    if backend.name == "torch":
        pytest.importorskip("transformers")
    return backend.module("text_encoder")


def _encoder(backend, config: TextEncoderConfig, **kwargs):
    """A TextEncoder on the CPU."""
    if backend.name == "torch":
        kwargs.setdefault("device", "cpu")
    return _module(backend).TextEncoder(config, **kwargs)


def _tiny(backend, model_dir: Path, max_length: int = 16, **kwargs):
    return _encoder(backend, TextEncoderConfig(name=str(model_dir), max_length=max_length),
                    **kwargs)


def _length(backend) -> int:
    """The minilm fixture's max_length: 16 on MLX to halve the CPU time."""
    return 32 if backend.name == "torch" else 16


def _same(a, b) -> bool:
    """Same shape, dtype and values (torch tensors or MLX arrays)."""
    return (tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype
            and np.array_equal(np.asarray(_np(a)), np.asarray(_np(b))))


def _np(x) -> np.ndarray:
    """A torch tensor or an MLX array (float32 or integer, as the encoders return) in numpy."""
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    return np.array(x)


def _equal(a, b) -> bool:
    return all(_same(x, y) for x, y in zip(a, b))


def _broadcast(backend, b, a):
    """b (one row) broadcast to a's shape."""
    return b.expand_as(a) if backend.name == "torch" else backend.xp.broadcast_to(b, a.shape)


def _parameters(backend, model) -> list:
    if backend.name == "torch":
        return list(model.parameters())
    from mlx.utils import tree_flatten

    return [v for _, v in tree_flatten(model.parameters())]


def _trainable(backend, model) -> list:
    if backend.name == "torch":
        return [p for p in model.parameters() if p.requires_grad]
    from mlx.utils import tree_flatten

    return tree_flatten(model.trainable_parameters())


class ForwardCounter:
    """torch: counts forward calls of a module (a hook) and the batch size of each."""

    def __init__(self, encoder):
        self.batches: list[int] = []
        self.handle = encoder.model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.batches.append(int(ids.shape[0]))

    def reset(self) -> None:
        self.batches.clear()

    def stop(self) -> None:
        self.handle.remove()


class CallCounter:
    """MLX: stands in for `encoder.model`, counting forward calls and the batch size of each."""

    def __init__(self, model):
        self.model = model
        self.batches: list[int] = []

    def __call__(self, input_ids, attention_mask):
        self.batches.append(int(input_ids.shape[0]))
        return self.model(input_ids, attention_mask)

    def __getattr__(self, name):  # hidden_size, max_positions, ...
        return getattr(self.model, name)

    def reset(self) -> None:
        self.batches.clear()


class _Swapped:
    """MLX: a CallCounter put in place of encoder.model; stop() puts the model back."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.counter = CallCounter(encoder.model)
        encoder.model = self.counter

    @property
    def batches(self) -> list[int]:
        return self.counter.batches

    def reset(self) -> None:
        self.counter.reset()

    def stop(self) -> None:
        if isinstance(self.encoder.model, CallCounter):
            self.encoder.model = self.encoder.model.model


def _count(backend, encoder):
    """Counts the encoder's forward calls (and batch sizes) until stop()."""
    return ForwardCounter(encoder) if backend.name == "torch" else _Swapped(encoder)


def _save_with_tokenizer(model, out: Path) -> Path:
    model.save_pretrained(out)
    minilm = resolve_text_encoder(DEFAULT_TEXT_ENCODER)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, out / name)
    return out


def _reference(model_dir: Path, captions: list[str], max_length: int, model=None):
    """torch: an independent path: AutoTokenizer + the model run by hand + sentence-transformers
    pooling."""
    import torch

    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(captions, padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt")
    if model is None:
        model = transformers.AutoModel.from_pretrained(model_dir)
    model = model.float().eval()
    with torch.no_grad():
        states = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"]
    weights = mask.unsqueeze(-1).float()
    pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return states, mask, pooled


def _assert_matches(out, ref: tuple, atol: float = 1e-5) -> None:
    """torch: the encoder's output against _reference."""
    import torch

    states, mask, pooled = ref
    assert out.states.dtype == torch.float32 and out.pooled.dtype == torch.float32
    assert out.mask.dtype == torch.int64
    assert torch.equal(out.mask, mask.to(torch.int64))
    torch.testing.assert_close(out.states, states, atol=atol, rtol=1e-4)
    torch.testing.assert_close(out.pooled, pooled, atol=atol, rtol=1e-4)
