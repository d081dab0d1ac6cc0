"""t2s_torch.text_encoder and t2s_mlx.text_encoder, one suite over both backends: MiniLM (the
default) shapes, dtypes and pooling, freezing, the on-disk embedding cache, tiny BERTs from local
paths, chunking and half precision.

On torch the outputs are also checked against transformers run directly, and CLIP text and T5
encoders load; MLX (a BERT port) checks strict weight loading, sharded weights, the clear error
for unsupported architectures, and no torch on its import path. Numerical agreement of the MLX
port with transformers is in tests/parity/test_text_encoder_parity.py. MiniLM runs 32 tokens on
torch and 16 on MLX (the Linux MLX build's BLAS is slow; the cache test covers 32 there)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

from shared.config import ConfigError, TextEncoderConfig
from shared.text import (
    DEFAULT_TEXT_ENCODER,
    encoder_key,
    masked_mean_pool,
    resolve_text_encoder,
    tokenize,
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


@pytest.fixture(scope="module")
def minilm(backend):
    return _encoder(backend, TextEncoderConfig(max_length=_length(backend)))


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


# --------------------------------------------------------------------------- MiniLM


def test_minilm_shapes_dtypes_and_pooling(backend, minilm) -> None:
    """On torch also against transformers run directly."""
    n, length = len(CAPTIONS), _length(backend)
    out = minilm.encode(CAPTIONS)
    assert isinstance(out, _module(backend).EncodedText)
    assert out.states.shape == (n, length, 384) and out.states.dtype == backend.float32
    assert out.mask.shape == (n, length) and out.mask.dtype == backend.xp.int64
    assert out.pooled.shape == (n, 384) and out.pooled.dtype == backend.float32
    _, mask = tokenize(minilm.model_dir, CAPTIONS, length)
    np.testing.assert_array_equal(_np(out.mask), mask)
    # The long caption is truncated to max_length; "" is [CLS] [SEP].
    assert int(out.mask[CAPTIONS.index(LONG)].sum()) == length
    assert int(out.mask[0].sum()) == 2
    # The pooled embedding is shared.text's definition.
    np.testing.assert_allclose(_np(out.pooled), masked_mean_pool(_np(out.states), _np(out.mask)),
                               atol=1e-5)
    assert np.isfinite(_np(out.states)).all()
    if backend.name == "torch":
        _assert_matches(out, _reference(minilm.model_dir, CAPTIONS, minilm.max_length))


def test_minilm_properties(backend, minilm) -> None:
    assert minilm.hidden_size == 384
    assert minilm.max_length == _length(backend)
    assert minilm.key == encoder_key(resolve_text_encoder(DEFAULT_TEXT_ENCODER))
    assert minilm.cache is None
    assert "BertModel" in repr(minilm) and "hidden_size=384" in repr(minilm)
    if backend.name == "torch":
        assert minilm.device == backend.xp.device("cpu")


def test_frozen_and_deterministic(backend, minilm) -> None:
    assert _trainable(backend, minilm.model) == []
    if backend.name == "mlx":
        assert len(_parameters(backend, minilm.model)) == 5 + 6 * 16  # embeddings + 6 layers
    assert not minilm.model.training
    captions = CAPTIONS if backend.name == "torch" else CAPTIONS[:3]  # MLX: CPU time
    first, second = minilm.encode(captions), minilm.encode(captions)
    assert _equal(first, second)
    if backend.name == "torch":
        assert not first.states.requires_grad


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
    counter = _count(backend, minilm)
    try:
        out = minilm.encode(["b", "a", "b", "b"])
    finally:
        counter.stop()
    assert counter.batches == [2]
    assert _same(out.states[0], out.states[2])
    assert _same(out.states[0], out.states[3])
    assert _equal(_module(backend).EncodedText(*(t[:2] for t in out)),
                  minilm.encode(["b", "a"]))
    if backend.name == "torch":
        _assert_matches(out, _reference(minilm.model_dir, ["b", "a", "b", "b"], 32))


def test_lone_string_and_empty_batch(backend, minilm) -> None:
    assert minilm.encode("hello").states.shape == (1, _length(backend), 384)
    with pytest.raises(ValueError, match="at least one caption"):
        minilm.encode([])


def test_empty_embedding(backend, minilm) -> None:
    length = _length(backend)
    counter = _count(backend, minilm)
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
        assert _same(a, _broadcast(backend, b, a))
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
    encoder = _encoder(backend, TextEncoderConfig(), cache_dir=tmp_path)  # the default, 32
    counter = _count(backend, encoder)
    first = encoder.encode(["a sign", "Hello!", "a sign"])
    assert counter.batches == [2]  # two distinct captions, one forward
    assert first.states.shape == (3, 32, 384)
    assert _same(first.states[0], first.states[2])
    if backend.name == "torch":
        _assert_matches(first, _reference(encoder.model_dir, ["a sign", "Hello!", "a sign"],
                                          32))

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
    again = _encoder(backend, TextEncoderConfig(), cache_dir=tmp_path)
    counter = _count(backend, again)
    fourth = again.encode(["new caption"])
    assert counter.batches == []
    assert _same(fourth.pooled[0], third.pooled[1])
    again.empty_embedding()
    assert counter.batches == [1]
    again._empty = None
    again.empty_embedding()
    assert counter.batches == [1]  # "" came from the disk cache
    counter.stop()


# --------------------------------------------------------------------------- other encoders


def test_tiny_bert_from_local_path(backend, tiny_bert_dir: Path) -> None:
    encoder = _tiny(backend, tiny_bert_dir)
    assert type(encoder.model).__name__ == "BertModel"
    if backend.name == "torch":
        import transformers

        assert isinstance(encoder.model, transformers.BertModel)
    assert encoder.hidden_size == 48
    out = encoder.encode(CAPTIONS)
    assert out.states.shape == (len(CAPTIONS), 16, 48) and out.pooled.shape == (len(CAPTIONS), 48)
    assert int(out.mask[CAPTIONS.index(LONG)].sum()) == 16
    if backend.name == "torch":
        _assert_matches(out, _reference(tiny_bert_dir, CAPTIONS, 16))
    with pytest.raises(ConfigError, match="context_dim=48"):
        encoder.check_context_dim(384)


def test_chunked_forward(backend, tiny_bert_dir: Path) -> None:
    encoder = _tiny(backend, tiny_bert_dir, chunk_size=2)
    counter = _count(backend, encoder)
    out = encoder.encode(CAPTIONS)
    counter.stop()
    assert counter.batches == [2, 2, 1]
    whole = _tiny(backend, tiny_bert_dir).encode(CAPTIONS)
    for a, b in zip(out, whole):
        np.testing.assert_allclose(_np(a), _np(b), atol=1e-6)
    if backend.name == "torch":
        _assert_matches(out, _reference(tiny_bert_dir, CAPTIONS, 16))


def test_max_length_beyond_positions(backend, tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="text.max_length=128.*64 positions"):
        _tiny(backend, tiny_bert_dir, max_length=128)


def test_half_precision_outputs_float32(backend, tiny_bert_dir: Path) -> None:
    """bfloat16 (and on MLX float16) weights: float32 outputs near the float32 encoder's (on
    torch also near transformers run directly)."""
    reference = _tiny(backend, tiny_bert_dir).encode(CAPTIONS)
    dtypes = ([backend.bfloat16] if backend.name == "torch"
              else [backend.bfloat16, backend.xp.float16])
    for dtype in dtypes:
        encoder = _tiny(backend, tiny_bert_dir, dtype=dtype)
        assert all(p.dtype == dtype for p in _parameters(backend, encoder.model))
        out = encoder.encode(CAPTIONS)
        assert out.states.dtype == backend.float32 and out.pooled.dtype == backend.float32
        np.testing.assert_allclose(_np(out.states), _np(reference.states), atol=0.1)
        if backend.name == "torch":
            _assert_matches(out, _reference(tiny_bert_dir, CAPTIONS, 16), atol=0.1)


# ------------------------------------------------------------- torch: CLIP text and T5


def _clip_text_config(**overrides):
    # CLIP's own tokenizer is BPE; MiniLM's WordPiece files stand in (only the ids matter here).
    import transformers

    kwargs = dict(vocab_size=MINILM_VOCAB, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                  pad_token_id=0, bos_token_id=101, eos_token_id=102)
    kwargs.update(overrides)
    return transformers.CLIPTextConfig(**kwargs)


@pytest.mark.backends("torch")
def test_clip_text_model(backend, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    backend.xp.manual_seed(1)
    model_dir = _save_with_tokenizer(transformers.CLIPTextModel(_clip_text_config()), tmp_path)
    encoder = _tiny(backend, model_dir, max_length=24)
    assert isinstance(encoder.model, transformers.CLIPTextModel)
    assert encoder.hidden_size == 32
    reference_model = transformers.CLIPTextModel.from_pretrained(model_dir)
    _assert_matches(encoder.encode(CAPTIONS),
                    _reference(model_dir, CAPTIONS, 24, model=reference_model))


@pytest.mark.backends("torch")
def test_full_clip_checkpoint_loads_text_tower_only(backend, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    vision = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           image_size=32, patch_size=16)
    config = transformers.CLIPConfig(text_config=_clip_text_config().to_dict(),
                                     vision_config=vision.to_dict(), projection_dim=8)
    backend.xp.manual_seed(2)
    model_dir = _save_with_tokenizer(transformers.CLIPModel(config), tmp_path)
    encoder = _tiny(backend, model_dir, max_length=24)
    assert isinstance(encoder.model, transformers.CLIPTextModel)
    assert encoder.hidden_size == 32
    full = transformers.CLIPModel.from_pretrained(model_dir)
    _assert_matches(encoder.encode(CAPTIONS),
                    _reference(model_dir, CAPTIONS, 24, model=full.text_model))


@pytest.mark.backends("torch")
def test_t5_loads_encoder_only(backend, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(vocab_size=MINILM_VOCAB, d_model=32, d_kv=8, d_ff=64,
                                   num_layers=2, num_decoder_layers=1, num_heads=4)
    backend.xp.manual_seed(3)
    model_dir = _save_with_tokenizer(transformers.T5Model(config), tmp_path)
    encoder = _tiny(backend, model_dir)
    assert isinstance(encoder.model, transformers.T5EncoderModel)
    assert encoder.hidden_size == 32
    full = transformers.T5Model.from_pretrained(model_dir)
    _assert_matches(encoder.encode(CAPTIONS),
                    _reference(model_dir, CAPTIONS, 16, model=full.encoder))


# ------------------------------------------------- MLX: weight loading, unsupported encoders


def _copy_with_weights(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    weights = safetensors.numpy.load_file(str(src / "model.safetensors"))
    edit(weights)
    safetensors.numpy.save_file(weights, str(dst / "model.safetensors"))
    return dst


@pytest.mark.backends("mlx")
def test_weights_are_loaded_strictly(backend, tiny_bert_dir: Path, tmp_path: Path) -> None:
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
        with pytest.raises(_module(backend).TextEncoderWeightsError) as info:
            _tiny(backend, model_dir)
        assert what in str(info.value) and str(model_dir) in str(info.value)


@pytest.mark.backends("mlx")
def test_sharded_weights(backend, tiny_bert_dir: Path, tmp_path: Path) -> None:
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
    np.testing.assert_array_equal(np.array(_tiny(backend, model_dir).encode(CAPTIONS).states),
                                  np.array(_tiny(backend, tiny_bert_dir).encode(CAPTIONS).states))


@pytest.mark.backends("mlx")
def test_no_safetensors_weights(backend, tiny_bert_dir: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(tiny_bert_dir, tmp_path / "bin_only")
    (model_dir / "model.safetensors").rename(model_dir / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="reads model.safetensors only"):
        _tiny(backend, model_dir)


@pytest.mark.backends("mlx")
def test_clip_text_is_not_supported_yet(backend, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPTextConfig(vocab_size=MINILM_VOCAB, hidden_size=32,
                                         intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, max_position_embeddings=32)
    torch.manual_seed(1)
    model_dir = _save_with_tokenizer(transformers.CLIPTextModel(config), tmp_path)
    with pytest.raises(_module(backend).UnsupportedTextEncoderError) as info:
        _tiny(backend, model_dir)
    assert isinstance(info.value, NotImplementedError)
    message = str(info.value)
    assert "model_type='clip_text_model'" in message
    assert "supports BERT encoders" in message and "PyTorch backend (t2s-torch)" in message


@pytest.mark.backends("mlx")
@pytest.mark.parametrize("config", [{"model_type": "t5", "d_model": 32},
                                    {"model_type": "bert", "vocab_size": 10,
                                     "position_embedding_type": "relative_key"},
                                    {"model_type": "bert", "vocab_size": 10,
                                     "hidden_act": "quick_gelu"}],
                         ids=["t5", "relative_positions", "unknown_activation"])
def test_unsupported_configs(backend, config: dict, tmp_path: Path) -> None:
    # Refused from config.json alone, before any weights are read.
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(_module(backend).UnsupportedTextEncoderError, match="PyTorch backend"):
        _tiny(backend, tmp_path)


# --------------------------------------------------------------------------- import hygiene


@pytest.mark.backends("mlx")
def test_mlx_path_imports_neither_torch_nor_transformers(backend) -> None:
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
