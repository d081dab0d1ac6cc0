"""t2s_mlx.text_encoder: the MLX BERT port behind the TextEncoder API of the torch twin. MiniLM
(the default) shapes, freezing, the on-disk cache, tiny BERTs from local paths, strict weight
loading, the clear error for unsupported architectures, and no torch on the import path.
Numerical agreement with transformers is in tests/parity/test_text_encoder_parity.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

import safetensors.numpy  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from shared.config import ConfigError, TextEncoderConfig  # noqa: E402
from shared.text import (  # noqa: E402
    DEFAULT_TEXT_ENCODER,
    encoder_key,
    masked_mean_pool,
    resolve_text_encoder,
    tokenize,
)
from t2s_mlx.text_encoder import (  # noqa: E402
    EncodedText,
    TextEncoder,
    TextEncoderWeightsError,
    UnsupportedTextEncoderError,
)

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
MINILM_VOCAB = 30522
LONG = " ".join(["a long caption that has to be truncated because it keeps on going"] * 6)
CAPTIONS = ["", "Hello, world!", "THE QUICK Brown fox; jumps -- over the lazy dog?!",
            "sign 'thank you' twice", LONG]


# --------------------------------------------------------------------------- helpers


class CallCounter:
    """Stands in for `encoder.model`, counting forward calls and the batch size of each."""

    def __init__(self, model):
        self.model = model
        self.batches: list[int] = []

    def __call__(self, input_ids, attention_mask):
        self.batches.append(int(input_ids.shape[0]))
        return self.model(input_ids, attention_mask)

    def __getattr__(self, name):  # hidden_size, max_positions, ...
        return getattr(self.model, name)


def _count_calls(encoder: TextEncoder) -> CallCounter:
    counter = CallCounter(encoder.model)
    encoder.model = counter
    return counter


def _uncount(encoder: TextEncoder) -> None:
    if isinstance(encoder.model, CallCounter):
        encoder.model = encoder.model.model


def _equal(a: EncodedText, b: EncodedText) -> bool:
    return all(x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y)
               for x, y in zip(a, b))


def _save_with_tokenizer(model, out: Path) -> Path:
    model.save_pretrained(out)
    minilm = resolve_text_encoder(DEFAULT_TEXT_ENCODER)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, out / name)
    return out


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    # 16 tokens, not the default 32, to halve the CPU time (the Linux MLX build's BLAS is slow);
    # the default length is covered by the cache test and the parity tests.
    return TextEncoder(TextEncoderConfig(max_length=16))


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=MINILM_VOCAB, hidden_size=48,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=96, max_position_embeddings=64)
    torch.manual_seed(0)
    return _save_with_tokenizer(transformers.BertModel(config),
                                tmp_path_factory.mktemp("tiny_bert"))


def _tiny(model_dir: Path, max_length: int = 16, **kwargs) -> TextEncoder:
    return TextEncoder(TextEncoderConfig(name=str(model_dir), max_length=max_length), **kwargs)


# --------------------------------------------------------------------------- MiniLM


def test_minilm_shapes_and_dtypes(minilm: TextEncoder) -> None:
    out = minilm.encode(CAPTIONS)
    assert isinstance(out, EncodedText)
    assert out.states.shape == (len(CAPTIONS), 16, 384) and out.states.dtype == mx.float32
    assert out.mask.shape == (len(CAPTIONS), 16) and out.mask.dtype == mx.int64
    assert out.pooled.shape == (len(CAPTIONS), 384) and out.pooled.dtype == mx.float32
    _, mask = tokenize(minilm.model_dir, CAPTIONS, 16)
    np.testing.assert_array_equal(np.array(out.mask), mask)
    assert int(out.mask[0].sum()) == 2  # "" is [CLS] [SEP]
    assert int(out.mask[CAPTIONS.index(LONG)].sum()) == 16  # truncated to max_length
    # The pooled embedding is shared.text's definition.
    np.testing.assert_allclose(np.array(out.pooled),
                               masked_mean_pool(np.array(out.states), mask), atol=1e-5)
    assert np.isfinite(np.array(out.states)).all()


def test_minilm_properties(minilm: TextEncoder) -> None:
    assert minilm.hidden_size == 384
    assert minilm.max_length == 16
    assert minilm.key == encoder_key(resolve_text_encoder(DEFAULT_TEXT_ENCODER))
    assert minilm.cache is None
    assert "BertModel" in repr(minilm) and "hidden_size=384" in repr(minilm)


def test_frozen_and_deterministic(minilm: TextEncoder) -> None:
    assert tree_flatten(minilm.model.trainable_parameters()) == []
    assert len(tree_flatten(minilm.model.parameters())) == 5 + 6 * 16  # embeddings + 6 layers
    assert not minilm.model.training
    assert _equal(minilm.encode(CAPTIONS[:3]), minilm.encode(CAPTIONS[:3]))


def test_outputs_usable_in_training_step(minilm: TextEncoder) -> None:
    # Encoding inside a loss function (as a training step may) works and gives the gradient of
    # the caller's own parameters; the encoder contributes constants.
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


def test_repeated_captions_run_once(minilm: TextEncoder) -> None:
    counter = _count_calls(minilm)
    try:
        out = minilm.encode(["b", "a", "b", "b"])
    finally:
        _uncount(minilm)
    assert counter.batches == [2]
    assert np.array_equal(out.states[0], out.states[2])
    assert np.array_equal(out.states[0], out.states[3])
    assert _equal(EncodedText(*(t[:2] for t in out)), minilm.encode(["b", "a"]))


def test_lone_string_and_empty_batch(minilm: TextEncoder) -> None:
    assert minilm.encode("hello").states.shape == (1, 16, 384)
    with pytest.raises(ValueError, match="at least one caption"):
        minilm.encode([])


def test_empty_embedding(minilm: TextEncoder) -> None:
    counter = _count_calls(minilm)
    try:
        minilm._empty = None
        one = minilm.empty_embedding()
        many = minilm.empty_embedding(3)
    finally:
        _uncount(minilm)
    assert counter.batches == [1]
    assert one.states.shape == (1, 16, 384) and many.states.shape == (3, 16, 384)
    assert many.mask.shape == (3, 16) and many.pooled.shape == (3, 384)
    ref = minilm.encode([""])
    for a, b in zip(many, ref):
        assert np.array_equal(a, mx.broadcast_to(b, a.shape))
    assert int(many.mask[0].sum()) == 2  # [CLS] [SEP], not zeros
    assert float(mx.abs(many.pooled).max()) > 0


def test_context_dim_check(minilm: TextEncoder) -> None:
    minilm.check_context_dim(384)
    with pytest.raises(ConfigError) as info:
        minilm.check_context_dim(512)
    message = str(info.value)
    assert "512" in message and "384" in message and "--set model.context_dim=384" in message


# --------------------------------------------------------------------------- embedding cache


def test_cache_computes_each_caption_once(tmp_path: Path) -> None:
    encoder = TextEncoder(TextEncoderConfig(), cache_dir=tmp_path)  # the default, 32 tokens
    counter = _count_calls(encoder)
    first = encoder.encode(["a sign", "Hello!", "a sign"])
    assert counter.batches == [2]  # two distinct captions, one forward
    assert first.states.shape == (3, 32, 384)
    assert np.array_equal(first.states[0], first.states[2])

    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 2
    assert all(f.parent.parent.name == f"{encoder.key}-L32" for f in files)
    assert set(safetensors.numpy.load_file(str(files[0]))) == {"states", "mask", "pooled"}

    counter.batches.clear()
    second = encoder.encode(["a sign", "Hello!", "a sign"])
    assert counter.batches == []  # all read from disk
    assert _equal(first, second)

    third = encoder.encode(["Hello!", "new caption", "a sign"])
    assert counter.batches == [1]  # only the new caption
    assert np.array_equal(third.states[0], first.states[1])
    assert np.array_equal(third.states[2], first.states[0])
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3

    # Computed once ever: a fresh encoder over the same cache runs nothing, "" included.
    again = TextEncoder(TextEncoderConfig(), cache_dir=tmp_path)
    counter = _count_calls(again)
    fourth = again.encode(["new caption"])
    assert counter.batches == []
    assert np.array_equal(fourth.pooled[0], third.pooled[1])
    again.empty_embedding()
    assert counter.batches == [1]
    again._empty = None
    again.empty_embedding()
    assert counter.batches == [1]  # "" came from the disk cache


# --------------------------------------------------------------------------- other encoders


def test_tiny_bert_from_local_path(tiny_bert_dir: Path) -> None:
    encoder = _tiny(tiny_bert_dir)
    assert type(encoder.model).__name__ == "BertModel"
    assert encoder.hidden_size == 48
    out = encoder.encode(CAPTIONS)
    assert out.states.shape == (len(CAPTIONS), 16, 48) and out.pooled.shape == (len(CAPTIONS), 48)
    assert int(out.mask[CAPTIONS.index(LONG)].sum()) == 16
    with pytest.raises(ConfigError, match="context_dim=48"):
        encoder.check_context_dim(384)


def test_chunked_forward(tiny_bert_dir: Path) -> None:
    encoder = _tiny(tiny_bert_dir, chunk_size=2)
    counter = _count_calls(encoder)
    out = encoder.encode(CAPTIONS)
    assert counter.batches == [2, 2, 1]
    whole = _tiny(tiny_bert_dir).encode(CAPTIONS)
    for a, b in zip(out, whole):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6)


def test_max_length_beyond_positions(tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="text.max_length=128.*64 positions"):
        _tiny(tiny_bert_dir, max_length=128)


def test_half_precision_outputs_float32(tiny_bert_dir: Path) -> None:
    reference = _tiny(tiny_bert_dir).encode(CAPTIONS)
    for dtype in (mx.bfloat16, mx.float16):
        encoder = _tiny(tiny_bert_dir, dtype=dtype)
        assert all(v.dtype == dtype for _, v in tree_flatten(encoder.model.parameters()))
        out = encoder.encode(CAPTIONS)
        assert out.states.dtype == mx.float32 and out.pooled.dtype == mx.float32
        np.testing.assert_allclose(np.array(out.states), np.array(reference.states), atol=0.1)


def _copy_with_weights(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    weights = safetensors.numpy.load_file(str(src / "model.safetensors"))
    edit(weights)
    safetensors.numpy.save_file(weights, str(dst / "model.safetensors"))
    return dst


def test_weights_are_loaded_strictly(tiny_bert_dir: Path, tmp_path: Path) -> None:
    name = "encoder.layer.1.attention.self.key.weight"

    def drop(w):
        del w[name]

    def extra(w):
        w["encoder.layer.2.output.dense.weight"] = np.zeros((48, 96), np.float32)

    def reshape(w):
        w[name] = np.zeros((48, 24), np.float32)

    for edit, what in ((drop, "1 missing: " + name), (extra, "1 unexpected: encoder.layer.2"),
                       (reshape, f"1 of the wrong shape: {name}: checkpoint (48, 24), "
                                 "model (48, 48)")):
        model_dir = _copy_with_weights(tiny_bert_dir, tmp_path / edit.__name__, edit)
        with pytest.raises(TextEncoderWeightsError) as info:
            _tiny(model_dir)
        assert what in str(info.value) and str(model_dir) in str(info.value)


def test_sharded_weights(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(tiny_bert_dir, tmp_path / "sharded")
    weights = safetensors.numpy.load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        safetensors.numpy.save_file({k: weights[k] for k in keys}, str(model_dir / shard))
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    np.testing.assert_array_equal(np.array(_tiny(model_dir).encode(CAPTIONS).states),
                                  np.array(_tiny(tiny_bert_dir).encode(CAPTIONS).states))


def test_no_safetensors_weights(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(tiny_bert_dir, tmp_path / "bin_only")
    (model_dir / "model.safetensors").rename(model_dir / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="reads model.safetensors only"):
        _tiny(model_dir)


def test_clip_text_is_not_supported_yet(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPTextConfig(vocab_size=MINILM_VOCAB, hidden_size=32,
                                         intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, max_position_embeddings=32)
    torch.manual_seed(1)
    model_dir = _save_with_tokenizer(transformers.CLIPTextModel(config), tmp_path)
    with pytest.raises(UnsupportedTextEncoderError) as info:
        _tiny(model_dir)
    assert isinstance(info.value, NotImplementedError)
    message = str(info.value)
    assert "model_type='clip_text_model'" in message
    assert "supports BERT encoders" in message and "PyTorch backend (t2s-torch)" in message


@pytest.mark.parametrize("config", [{"model_type": "t5", "d_model": 32},
                                    {"model_type": "bert", "vocab_size": 10,
                                     "position_embedding_type": "relative_key"},
                                    {"model_type": "bert", "vocab_size": 10,
                                     "hidden_act": "quick_gelu"}],
                         ids=["t5", "relative_positions", "unknown_activation"])
def test_unsupported_configs(config: dict, tmp_path: Path) -> None:
    # Refused from config.json alone, before any weights are read.
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedTextEncoderError, match="PyTorch backend"):
        _tiny(tmp_path)


# --------------------------------------------------------------------------- import hygiene


def test_mlx_path_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\n"
        "import t2s_mlx.text_encoder as te\n"
        "from shared.config import TextEncoderConfig\n"
        "encoder = te.TextEncoder(TextEncoderConfig(max_length=8))\n"
        "assert encoder.encode(['hello']).states.shape == (1, 8, 384)\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('torch', 'transformers', 'sentence_transformers')))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
