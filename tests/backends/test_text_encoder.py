"""t2s_torch.text_encoder and t2s_mlx.text_encoder, one suite over both backends: MiniLM (the
default) shapes, dtypes and pooling, freezing, use in a training graph or step, repeated and empty
captions, and the on-disk embedding cache (other encoders and weight loading:
test_text_encoder_loading.py; the shared cases: tests/support/text_encoder_cases.py).

On torch the outputs are also checked against transformers run directly (on MLX the parity
suite does). MiniLM runs 32 tokens on torch and 16 on MLX (the Linux MLX build's BLAS is slow;
the cache test covers 32 there). What differs is `backend.text` (tests/support/
text_encoder_cases.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open
from text_encoder_cases import (  # tests/support/text_encoder_cases.py
    CAPTIONS,
    LONG,
    _equal,
    _np,
    _same,
)

from shared.config import DEFAULT_TEXT_ENCODER, ConfigError, TextEncoderConfig
from shared.model.text_cache import encoder_key
from shared.model.text_encoder import masked_mean_pool
from shared.model.text_lookup import resolve_text_encoder
from shared.model.text_tokenizer import tokenize


@pytest.fixture(scope="module")
def minilm(backend):
    return backend.text.encoder(TextEncoderConfig(max_length=backend.text.length))


# --------------------------------------------------------------------------- MiniLM


def test_minilm_shapes_dtypes_and_pooling(backend, minilm) -> None:
    """On torch also against transformers run directly."""
    n, length = len(CAPTIONS), backend.text.length
    out = minilm.encode(CAPTIONS)
    assert isinstance(out, backend.text.module().EncodedText)
    assert out.states.shape == (n, length, 384) and out.states.dtype == backend.float32
    assert out.mask.shape == (n, length) and out.mask.dtype == backend.xp.int64
    assert out.pooled.shape == (n, 384) and out.pooled.dtype == backend.float32
    _, mask = tokenize(minilm.model_dir, CAPTIONS, length)
    np.testing.assert_array_equal(_np(out.mask), mask)
    # The long caption is truncated to max_length; "" is [CLS] [SEP].
    assert int(out.mask[CAPTIONS.index(LONG)].sum()) == length
    assert int(out.mask[0].sum()) == 2
    # The pooled embedding is shared.model.text_encoder's definition.
    np.testing.assert_allclose(_np(out.pooled), masked_mean_pool(_np(out.states), _np(out.mask)),
                               atol=1e-5)
    assert np.isfinite(_np(out.states)).all()
    backend.text.check_reference(out, minilm.model_dir, CAPTIONS, minilm.max_length)


def test_minilm_properties(backend, minilm) -> None:
    assert minilm.hidden_size == 384
    assert minilm.max_length == backend.text.length
    assert minilm.key == encoder_key(resolve_text_encoder(DEFAULT_TEXT_ENCODER))
    assert minilm.cache is None
    assert "BertModel" in repr(minilm) and "hidden_size=384" in repr(minilm)
    assert f", {backend.text.device_in_repr}dtype=" in repr(minilm)  # torch: the CPU asked for


def test_frozen_and_deterministic(backend, minilm) -> None:
    assert backend.text.trainable(minilm.model) == []
    assert len(backend.params(minilm.model)) == backend.text.minilm_parameters
    assert not minilm.model.training
    captions = backend.text.frozen_captions
    first, second = minilm.encode(captions), minilm.encode(captions)
    assert _equal(first, second)
    assert not backend.text.records_grad(first.states)


@pytest.mark.backends("torch")
def test_outputs_usable_in_training_graph(backend, minilm) -> None:
    # Inference-mode tensors could not be saved for backward by cross-attention.
    torch = backend.xp
    out = minilm.encode(["hello"])
    layer = torch.nn.Linear(384, 4)
    (layer(out.states).sum() + layer(out.pooled).sum()).backward()
    assert layer.weight.grad is not None


@pytest.mark.backends("mlx")
def test_outputs_usable_in_training_step(backend, minilm) -> None:
    # Encoding inside a loss function (as a training step may) works and gives the gradient of
    # the caller's own parameters; the encoder contributes constants.
    mx = backend.xp

    def loss(w):
        out = minilm.encode(["hello"])
        return (out.states @ w).sum() + (out.pooled @ w).sum()

    w = mx.zeros((384, 4))
    value, grad = mx.value_and_grad(loss)(w)
    out = minilm.encode(["hello"])
    expected = out.states.sum(axis=(0, 1)) + out.pooled.sum(axis=0)
    np.testing.assert_allclose(np.array(grad),
                               np.repeat(np.array(expected)[:, None], 4, axis=1), rtol=1e-5)
    assert float(value) == 0.0


def test_repeated_captions_run_once(backend, minilm) -> None:
    counter = backend.text.count(minilm)
    try:
        out = minilm.encode(["b", "a", "b", "b"])
    finally:
        counter.stop()
    assert counter.batches == [2]
    assert _same(out.states[0], out.states[2])
    assert _same(out.states[0], out.states[3])
    assert _equal(backend.text.module().EncodedText(*(t[:2] for t in out)),
                  minilm.encode(["b", "a"]))
    backend.text.check_reference(out, minilm.model_dir, ["b", "a", "b", "b"], minilm.max_length)


def test_lone_string_and_empty_batch(backend, minilm) -> None:
    assert minilm.encode("hello").states.shape == (1, backend.text.length, 384)
    with pytest.raises(ValueError, match="at least one caption"):
        minilm.encode([])


def test_empty_embedding(backend, minilm) -> None:
    length = backend.text.length
    counter = backend.text.count(minilm)
    try:
        minilm._empty = None
        one = minilm.empty_embedding()
        many = minilm.empty_embedding(3)
    finally:
        counter.stop()
    assert counter.batches == [1]
    assert one.states.shape == (1, length, 384) and many.states.shape == (3, length, 384)
    assert many.mask.shape == (3, length) and many.pooled.shape == (3, 384)
    ref = minilm.encode([""])
    for a, b in zip(many, ref):
        assert _same(a, backend.text.broadcast(b, a))
    assert int(many.mask[0].sum()) == 2  # [CLS] [SEP], not zeros
    assert float(np.abs(_np(many.pooled)).max()) > 0


def test_context_dim_check(backend, minilm) -> None:
    minilm.check_context_dim(384)
    with pytest.raises(ConfigError) as info:
        minilm.check_context_dim(512)
    message = str(info.value)
    assert "512" in message and "384" in message and "--set model.context_dim=384" in message


# --------------------------------------------------------------------------- embedding cache


def test_cache_computes_each_caption_once(backend, tmp_path: Path) -> None:
    encoder = backend.text.encoder(TextEncoderConfig(), cache_dir=tmp_path)  # the default, 32
    counter = backend.text.count(encoder)
    first = encoder.encode(["a sign", "Hello!", "a sign"])
    assert counter.batches == [2]  # two distinct captions, one forward
    assert first.states.shape == (3, 32, 384)
    assert _same(first.states[0], first.states[2])
    backend.text.check_reference(first, encoder.model_dir, ["a sign", "Hello!", "a sign"], 32)

    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 2
    assert all(f.parent.parent.name == f"{encoder.key}-L32" for f in files)
    assert set(safetensors.numpy.load_file(str(files[0]))) == {"states", "mask", "pooled"}
    with safe_open(str(files[0]), framework="np") as f:
        assert set(f.keys()) == {"states", "mask", "pooled"}
        assert f.metadata()["encoder_key"] == encoder.key

    counter.reset()
    second = encoder.encode(["a sign", "Hello!", "a sign"])
    assert counter.batches == []  # all read from disk
    assert _equal(first, second)

    counter.reset()
    third = encoder.encode(["Hello!", "new caption", "a sign"])
    assert counter.batches == [1]  # only the new caption
    assert _same(third.states[0], first.states[1])
    assert _same(third.states[2], first.states[0])
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3
    counter.stop()

    # Computed once ever: a fresh encoder over the same cache runs nothing, "" included.
    again = backend.text.encoder(TextEncoderConfig(), cache_dir=tmp_path)
    counter = backend.text.count(again)
    fourth = again.encode(["new caption"])
    assert counter.batches == []
    assert _same(fourth.pooled[0], third.pooled[1])
    again.empty_embedding()
    assert counter.batches == [1]
    again._empty = None
    again.empty_embedding()
    assert counter.batches == [1]  # "" came from the disk cache
    counter.stop()
