"""The MLX BERT port against transformers' BertModel on the same safetensors (MiniLM and tiny
random BERTs), and the embedding cache shared by the two backends' TextEncoders.

Tolerances (fp32): states of real tokens and the pooled embedding within 1e-4 of transformers.
States at padding positions get 1e-3: they are computed (as in transformers) but never used --
cross-attention masks them and pooling skips them -- and they are ill-conditioned (a padding
query attends to the few real keys of a short caption), so float32 rounding grows there: on
MiniLM transformers' own fp32 states are ~6e-5 off its fp64 ones at padding positions against
~2e-6 at real tokens, and the MLX port lands at ~1.5e-4 of transformers there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from text_encoder_cases import _reference  # noqa: E402  (tests/support)

from shared.config import DEFAULT_TEXT_ENCODER, TextEncoderConfig  # noqa: E402
from shared.model.text_lookup import resolve_text_encoder  # noqa: E402
from t2s_mlx import text_encoder as mlx_te  # noqa: E402
from t2s_torch import text_encoder as torch_te  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
MINILM_VOCAB = 30522
LONG = " ".join(["a long caption that has to be truncated because it keeps on going"] * 6)
CAPTIONS = ["", "Hello, world!", "THE QUICK Brown fox; jumps -- over the lazy dog?!",
            "sign 'thank you' twice", "Café déjà vu... (ÀÉÎ) 123 #@!", LONG]
REAL_ATOL = 1e-4   # states at real tokens, pooled
PAD_ATOL = 1e-3    # states at padding positions (see the module docstring)


# --------------------------------------------------------------------------- helpers


def _diffs(out, ref) -> dict[str, float]:
    states, mask, pooled = ref
    np.testing.assert_array_equal(np.array(out.mask), mask)  # same tokenization
    d = np.abs(np.array(out.states) - states)
    real = mask.astype(bool)
    return {"real": float(d[real].max()),
            "pad": float(d[~real].max()) if (~real).any() else 0.0,
            "pooled": float(np.abs(np.array(out.pooled) - pooled).max())}


def _reference_numpy(*args, **kwargs) -> list[np.ndarray]:
    """transformers end to end (`text_encoder_cases._reference`), as numpy for the MLX side."""
    return [a.numpy() for a in _reference(*args, **kwargs)]


def _assert_parity(out, ref, label: str) -> dict[str, float]:
    diffs = _diffs(out, ref)
    print(f"{label}: max abs diff {diffs}")
    assert diffs["real"] <= REAL_ATOL and diffs["pooled"] <= REAL_ATOL, diffs
    assert diffs["pad"] <= PAD_ATOL, diffs
    return diffs


def _save_with_tokenizer(model, out: Path) -> Path:
    model.save_pretrained(out)
    minilm = resolve_text_encoder(DEFAULT_TEXT_ENCODER)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, out / name)
    return out


def _tiny_config(**overrides) -> transformers.BertConfig:
    kwargs = dict(vocab_size=MINILM_VOCAB, hidden_size=48, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=96, max_position_embeddings=64)
    kwargs.update(overrides)
    return transformers.BertConfig(**kwargs)


class CallCounter:
    """Stands in for the MLX encoder's model, counting forward calls."""

    def __init__(self, model):
        self.model = model
        self.calls = 0

    def __call__(self, input_ids, attention_mask):
        self.calls += 1
        return self.model(input_ids, attention_mask)

    def __getattr__(self, name):
        return getattr(self.model, name)


class TorchForwardCounter:
    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return resolve_text_encoder(DEFAULT_TEXT_ENCODER)


@pytest.fixture(scope="module")
def minilm_torch(minilm_dir: Path):
    return transformers.BertModel.from_pretrained(minilm_dir).eval()


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("max_length", [16, 32])
def test_minilm_matches_transformers(minilm_dir: Path, minilm_torch, max_length: int) -> None:
    encoder = mlx_te.TextEncoder(TextEncoderConfig(max_length=max_length))
    out = encoder.encode(CAPTIONS)
    assert out.states.shape == (len(CAPTIONS), max_length, 384)
    ref = _reference_numpy(minilm_dir, CAPTIONS, max_length, model=minilm_torch)
    assert ref[1][CAPTIONS.index(LONG)].sum() == max_length  # truncated
    assert ref[1][0].sum() == 2  # "" is [CLS] [SEP]
    _assert_parity(out, ref, f"MiniLM L={max_length}")


@pytest.mark.parametrize("variant", ["bert", "gelu_new", "masked_lm_checkpoint"])
def test_tiny_random_bert_matches_transformers(tmp_path: Path, variant: str) -> None:
    torch.manual_seed(0)
    if variant == "masked_lm_checkpoint":
        # Weights named `bert.encoder...` next to a `cls.` head: the encoder part is loaded.
        full = transformers.BertForMaskedLM(_tiny_config())
        model_dir = _save_with_tokenizer(full, tmp_path)
        reference_model = transformers.BertForMaskedLM.from_pretrained(model_dir).bert
    else:
        config = _tiny_config(hidden_act="gelu_new") if variant == "gelu_new" else _tiny_config()
        model_dir = _save_with_tokenizer(transformers.BertModel(config), tmp_path)
        reference_model = None
    encoder = mlx_te.TextEncoder(TextEncoderConfig(name=str(model_dir), max_length=16))
    assert encoder.hidden_size == 48
    out = encoder.encode(CAPTIONS)
    _assert_parity(out, _reference_numpy(model_dir, CAPTIONS, 16, model=reference_model),
                   f"tiny BERT ({variant})")


def test_mlx_and_torch_encoders_agree(minilm_dir: Path) -> None:
    """The two TextEncoder classes end to end (tokenizing, dedup, pooling), not only models."""
    captions = ["b", "Hello, world!", "b", ""]
    m = mlx_te.TextEncoder(TextEncoderConfig(max_length=16)).encode(captions)
    t = torch_te.TextEncoder(TextEncoderConfig(max_length=16), device="cpu").encode(captions)
    _assert_parity(m, tuple(x.numpy() for x in t), "TextEncoder MLX vs torch")


# --------------------------------------------------------------------------- shared cache


def test_cache_written_by_torch_is_read_by_mlx(tmp_path: Path) -> None:
    config = TextEncoderConfig()
    torch_encoder = torch_te.TextEncoder(config, device="cpu", cache_dir=tmp_path)
    written = torch_encoder.encode(["a sign", "THANK YOU!", ""])
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 3

    mlx_encoder = mlx_te.TextEncoder(config, cache_dir=tmp_path)
    assert mlx_encoder.key == torch_encoder.key
    counter = CallCounter(mlx_encoder.model)
    mlx_encoder.model = counter
    read = mlx_encoder.encode(["THANK YOU!", "a sign", "", "a sign"])
    mlx_encoder.empty_embedding()
    assert counter.calls == 0  # nothing recomputed: the torch embeddings, bit for bit
    for got, want in zip(read, written):
        np.testing.assert_array_equal(np.array(got), want.numpy()[[1, 0, 2, 0]])
    assert sorted(tmp_path.rglob("*.safetensors")) == files  # and nothing rewritten


def test_cache_written_by_mlx_is_read_by_torch(tmp_path: Path) -> None:
    config = TextEncoderConfig(max_length=16)
    mlx_encoder = mlx_te.TextEncoder(config, cache_dir=tmp_path)
    written = mlx_encoder.encode(["a sign", "Good morning."])

    torch_encoder = torch_te.TextEncoder(config, device="cpu", cache_dir=tmp_path)
    assert torch_encoder.key == mlx_encoder.key
    counter = TorchForwardCounter(torch_encoder.model)
    read = torch_encoder.encode(["Good morning.", "a sign"])
    counter.handle.remove()
    assert counter.calls == 0
    for got, want in zip(read, written):
        np.testing.assert_array_equal(got.numpy(), np.array(want)[[1, 0]])
    # What MLX cached is what torch would have computed, to the parity tolerance.
    fresh = torch_te.TextEncoder(config, device="cpu").encode(["Good morning.", "a sign"])
    swapped = mlx_te.EncodedText(*(mx.take(t, mx.array([1, 0]), axis=0) for t in written))
    _assert_parity(swapped, tuple(t.numpy() for t in fresh), "MLX-cached vs torch-computed")
