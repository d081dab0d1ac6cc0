"""The text-encoder suites' shared cases (tests/backends/test_text_encoder*.py): captions,
comparing outputs across frameworks, counting forward calls, and transformers run directly as
the reference. What differs between the backends (building an encoder, the minilm fixture's
length, counting calls, the reference check) is `TorchText` / `MLXText`, which the adapter
hands out as `backend.text` (tests/backends/conftest.py), so the suites' bodies never branch.
Importable as `text_encoder_cases` (pyproject: pytest `pythonpath`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.config import DEFAULT_TEXT_ENCODER, TextEncoderConfig
from shared.model.text_lookup import resolve_text_encoder

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
MINILM_VOCAB = 30522
LONG = " ".join(["a long caption that has to be truncated because it keeps on going"] * 6)
CAPTIONS = ["", "Hello, world!", "THE QUICK Brown fox; jumps -- over the lazy dog?!",
            "sign 'thank you' twice", LONG]


# --------------------------------------------------------------------------- helpers


def _tiny(backend, model_dir: Path, max_length: int = 16, **kwargs):
    """A TextEncoder over the tiny model saved in `model_dir`, on the CPU."""
    return backend.text.encoder(TextEncoderConfig(name=str(model_dir), max_length=max_length),
                                **kwargs)


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


# ------------------------------------------------------- what differs: `backend.text`


class TorchText:
    """The torch side of the text-encoder suites (`backend.text`, tests/backends/conftest.py):
    transformers models on the CPU at 32 tokens, each output also checked against transformers
    run directly."""

    length = 32  # the minilm fixture's max_length
    frozen_captions = CAPTIONS
    # transformers' BertModel keeps its pooler (a dense weight and bias) that the project
    # never runs: it pools token states itself (shared.model.text_encoder.masked_mean_pool).
    minilm_parameters = 5 + 6 * 16 + 2
    device_in_repr = "device=cpu, "  # the device the encoder was asked for

    def __init__(self, backend):
        self.backend = backend

    def module(self):
        """t2s_torch.text_encoder; it runs transformers."""
        pytest.importorskip("transformers")
        return self.backend.module("text_encoder")

    def encoder(self, config: TextEncoderConfig, **kwargs):
        """A TextEncoder on the CPU."""
        return self.module().TextEncoder(config, **{"device": "cpu", **kwargs})

    def model_class(self, name: str) -> type:
        """The class the encoder runs for architecture `name`: transformers' own."""
        import transformers

        return getattr(transformers, name)

    def broadcast(self, b, a):
        """b (one row) broadcast to a's shape."""
        return b.expand_as(a)

    def trainable(self, model) -> list:
        return [p for p in model.parameters() if p.requires_grad]

    def records_grad(self, x) -> bool:
        """Whether autograd would track `x` into a graph."""
        return x.requires_grad

    def count(self, encoder) -> ForwardCounter:
        """Counts the encoder's forward calls (and batch sizes) until stop()."""
        return ForwardCounter(encoder)

    def check_reference(self, out, model_dir: Path, captions: list[str], max_length: int,
                        atol: float = 1e-5) -> None:
        """`out` against transformers run directly on the same captions."""
        _assert_matches(out, _reference(model_dir, captions, max_length), atol=atol)


class MLXText:
    """The MLX side of the text-encoder suites: the project's BERT port at 16 tokens for the
    minilm fixture (the Linux MLX build's BLAS is slow; the cache test covers 32)."""

    length = 16
    frozen_captions = CAPTIONS[:3]  # CPU time
    minilm_parameters = 5 + 6 * 16  # embeddings + 6 layers, no pooler
    device_in_repr = ""  # MLX arrays live in unified memory: no device to name

    def __init__(self, backend):
        self.backend = backend

    def module(self):
        return self.backend.module("text_encoder")

    def encoder(self, config: TextEncoderConfig, **kwargs):
        return self.module().TextEncoder(config, **kwargs)

    def model_class(self, name: str) -> type:
        """The port's class of that name (t2s_mlx.text_encoder.BertModel)."""
        return getattr(self.module(), name)

    def broadcast(self, b, a):
        return self.backend.xp.broadcast_to(b, a.shape)

    def trainable(self, model) -> list:
        from mlx.utils import tree_flatten

        return tree_flatten(model.trainable_parameters())

    def records_grad(self, x) -> bool:
        """MLX arrays carry no graph: gradients are of functions (mx.grad), so never."""
        return False

    def count(self, encoder) -> _Swapped:
        return _Swapped(encoder)

    def check_reference(self, out, model_dir: Path, captions: list[str], max_length: int,
                        atol: float = 1e-5) -> None:
        """Nothing here: the port against transformers is tests/parity/
        test_text_encoder_parity.py's, with the tolerances padding positions need."""
