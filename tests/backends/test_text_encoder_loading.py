"""t2s_torch.text_encoder and t2s_mlx.text_encoder, one suite over both backends: tiny BERTs from
local paths, chunking, positions and half precision (on torch also against transformers run
directly: `backend.text.check_reference`); on torch CLIP text and T5 encoders load; MLX
(a BERT port) checks strict weight loading, sharded weights, the clear error for unsupported
architectures, and no torch on its import path. Numerical agreement of the MLX port with
transformers is in tests/parity/test_text_encoder_parity.py (MiniLM itself:
test_text_encoder.py)."""

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
from text_encoder_cases import (  # tests/support/text_encoder_cases.py
    CAPTIONS,
    LONG,
    MINILM_VOCAB,
    REPO,
    _assert_matches,
    _np,
    _reference,
    _save_with_tokenizer,
    _tiny,
)

from shared.config import ConfigError


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


# --------------------------------------------------------------------------- other encoders


def test_tiny_bert_from_local_path(backend, tiny_bert_dir: Path) -> None:
    encoder = _tiny(backend, tiny_bert_dir)
    assert type(encoder.model) is backend.text.model_class("BertModel")
    assert encoder.hidden_size == 48
    out = encoder.encode(CAPTIONS)
    assert out.states.shape == (len(CAPTIONS), 16, 48) and out.pooled.shape == (len(CAPTIONS), 48)
    assert int(out.mask[CAPTIONS.index(LONG)].sum()) == 16
    backend.text.check_reference(out, tiny_bert_dir, CAPTIONS, 16)
    with pytest.raises(ConfigError, match="context_dim=48"):
        encoder.check_context_dim(384)


def test_chunked_forward(backend, tiny_bert_dir: Path) -> None:
    encoder = _tiny(backend, tiny_bert_dir, chunk_size=2)
    counter = backend.text.count(encoder)
    out = encoder.encode(CAPTIONS)
    counter.stop()
    assert counter.batches == [2, 2, 1]
    whole = _tiny(backend, tiny_bert_dir).encode(CAPTIONS)
    for a, b in zip(out, whole):
        np.testing.assert_allclose(_np(a), _np(b), atol=1e-6)
    backend.text.check_reference(out, tiny_bert_dir, CAPTIONS, 16)


def test_max_length_beyond_positions(backend, tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="text.max_length=128.*64 positions"):
        _tiny(backend, tiny_bert_dir, max_length=128)


def test_half_precision_outputs_float32(backend, tiny_bert_dir: Path) -> None:
    """bfloat16 and float16 weights: float32 outputs near the float32 encoder's (on torch also
    near transformers run directly)."""
    reference = _tiny(backend, tiny_bert_dir).encode(CAPTIONS)
    for dtype in (backend.bfloat16, backend.xp.float16):
        encoder = _tiny(backend, tiny_bert_dir, dtype=dtype)
        assert all(p.dtype == dtype for p in backend.params(encoder.model).values())
        out = encoder.encode(CAPTIONS)
        assert out.states.dtype == backend.float32 and out.pooled.dtype == backend.float32
        np.testing.assert_allclose(_np(out.states), _np(reference.states), atol=0.1)
        backend.text.check_reference(out, tiny_bert_dir, CAPTIONS, 16, atol=0.1)


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
        with pytest.raises(backend.text.module().TextEncoderWeightsError) as info:
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
    with pytest.raises(backend.text.module().UnsupportedTextEncoderError) as info:
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
    with pytest.raises(backend.text.module().UnsupportedTextEncoderError, match="PyTorch backend"):
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
