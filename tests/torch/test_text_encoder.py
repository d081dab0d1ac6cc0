"""t2s_torch.text_encoder against transformers run directly: MiniLM (the default), tiny BERT,
CLIP text and T5 encoders saved in the test; frozen weights; the on-disk embedding cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from shared.config import ConfigError, TextEncoderConfig  # noqa: E402
from shared.text import (  # noqa: E402
    DEFAULT_TEXT_ENCODER,
    encoder_key,
    masked_mean_pool,
    resolve_text_encoder,
)
from t2s_torch.text_encoder import EncodedText, TextEncoder  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
MINILM_VOCAB = 30522
LONG = " ".join(["a long caption that has to be truncated because it keeps on going"] * 6)
CAPTIONS = ["", "Hello, world!", "THE QUICK Brown fox; jumps -- over the lazy dog?!",
            "sign 'thank you' twice", LONG]


# --------------------------------------------------------------------------- helpers


def _reference(model_dir: Path, captions: list[str], max_length: int, model=None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Independent path: AutoTokenizer + the model run by hand + sentence-transformers pooling."""
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


def _assert_matches(out: EncodedText, ref: tuple, atol: float = 1e-5) -> None:
    states, mask, pooled = ref
    assert out.states.dtype == torch.float32 and out.pooled.dtype == torch.float32
    assert out.mask.dtype == torch.int64
    assert torch.equal(out.mask, mask.to(torch.int64))
    torch.testing.assert_close(out.states, states, atol=atol, rtol=1e-4)
    torch.testing.assert_close(out.pooled, pooled, atol=atol, rtol=1e-4)


def _save_with_tokenizer(model, out: Path) -> Path:
    model.save_pretrained(out)
    minilm = resolve_text_encoder(DEFAULT_TEXT_ENCODER)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, out / name)
    return out


class ForwardCounter:
    """Counts forward calls of a module and the batch size of each."""

    def __init__(self, module: torch.nn.Module):
        self.batches: list[int] = []
        self.handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.batches.append(int(ids.shape[0]))

    def reset(self) -> None:
        self.batches.clear()


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(), device="cpu")


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = transformers.BertConfig(vocab_size=MINILM_VOCAB, hidden_size=48,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=96, max_position_embeddings=64)
    torch.manual_seed(0)
    return _save_with_tokenizer(transformers.BertModel(config),
                                tmp_path_factory.mktemp("tiny_bert"))


# --------------------------------------------------------------------------- MiniLM


def test_minilm_matches_transformers(minilm: TextEncoder) -> None:
    out = minilm.encode(CAPTIONS)
    ref = _reference(minilm.model_dir, CAPTIONS, minilm.max_length)
    _assert_matches(out, ref)
    assert out.states.shape == (len(CAPTIONS), 32, 384)
    assert out.pooled.shape == (len(CAPTIONS), 384)
    # The long caption is truncated to max_length; "" is [CLS] [SEP].
    assert out.mask[CAPTIONS.index(LONG)].sum() == 32
    assert out.mask[0].sum() == 2
    # The pooled embedding is shared.text's definition.
    np.testing.assert_allclose(out.pooled.numpy(),
                               masked_mean_pool(out.states.numpy(), out.mask.numpy()),
                               atol=1e-5)


def test_minilm_properties(minilm: TextEncoder) -> None:
    assert minilm.hidden_size == 384
    assert minilm.key == encoder_key(resolve_text_encoder(DEFAULT_TEXT_ENCODER))
    assert minilm.device == torch.device("cpu")
    assert "BertModel" in repr(minilm)


def test_frozen_and_deterministic(minilm: TextEncoder) -> None:
    assert not any(p.requires_grad for p in minilm.model.parameters())
    assert not minilm.model.training
    first, second = minilm.encode(CAPTIONS), minilm.encode(CAPTIONS)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert not first.states.requires_grad


def test_outputs_usable_in_training_graph(minilm: TextEncoder) -> None:
    # Inference-mode tensors could not be saved for backward by cross-attention.
    out = minilm.encode(["hello"])
    layer = torch.nn.Linear(384, 4)
    (layer(out.states).sum() + layer(out.pooled).sum()).backward()
    assert layer.weight.grad is not None


def test_repeated_captions_run_once(minilm: TextEncoder) -> None:
    counter = ForwardCounter(minilm.model)
    try:
        out = minilm.encode(["b", "a", "b", "b"])
    finally:
        counter.handle.remove()
    assert counter.batches == [2]
    assert torch.equal(out.states[0], out.states[2])
    _assert_matches(out, _reference(minilm.model_dir, ["b", "a", "b", "b"], 32))


def test_lone_string_and_empty_batch(minilm: TextEncoder) -> None:
    assert minilm.encode("hello").states.shape == (1, 32, 384)
    with pytest.raises(ValueError, match="at least one caption"):
        minilm.encode([])


def test_empty_embedding(minilm: TextEncoder) -> None:
    counter = ForwardCounter(minilm.model)
    try:
        minilm._empty = None
        one = minilm.empty_embedding()
        many = minilm.empty_embedding(3)
    finally:
        counter.handle.remove()
    assert counter.batches == [1]
    assert one.states.shape == (1, 32, 384) and many.states.shape == (3, 32, 384)
    ref = minilm.encode([""])
    for a, b in zip(many, ref):
        assert torch.equal(a, b.expand_as(a))
    assert many.mask[0].sum() == 2  # [CLS] [SEP], not zeros


def test_context_dim_check(minilm: TextEncoder) -> None:
    minilm.check_context_dim(384)
    with pytest.raises(ConfigError) as info:
        minilm.check_context_dim(512)
    message = str(info.value)
    assert "512" in message and "384" in message and "--set model.context_dim=384" in message


# --------------------------------------------------------------------------- embedding cache


def test_cache_computes_each_caption_once(tmp_path: Path) -> None:
    encoder = TextEncoder(TextEncoderConfig(), device="cpu", cache_dir=tmp_path)
    counter = ForwardCounter(encoder.model)
    first = encoder.encode(["a sign", "Hello!", "a sign"])
    assert counter.batches == [2]  # two distinct captions, one forward
    _assert_matches(first, _reference(encoder.model_dir, ["a sign", "Hello!", "a sign"], 32))

    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 2
    assert all(f.parent.parent.name == f"{encoder.key}-L32" for f in files)
    with safe_open(str(files[0]), framework="np") as f:
        assert set(f.keys()) == {"states", "mask", "pooled"}
        assert f.metadata()["encoder_key"] == encoder.key

    counter.reset()
    second = encoder.encode(["a sign", "Hello!", "a sign"])
    assert counter.batches == []
    for a, b in zip(first, second):
        assert torch.equal(a, b)

    counter.reset()
    third = encoder.encode(["Hello!", "new caption", "a sign"])
    assert counter.batches == [1]  # only the new caption
    assert torch.equal(third.states[0], first.states[1])
    assert torch.equal(third.states[2], first.states[0])
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3
    counter.handle.remove()

    # Computed once ever: a fresh encoder over the same cache runs nothing, empty string too.
    again = TextEncoder(TextEncoderConfig(), device="cpu", cache_dir=tmp_path)
    counter = ForwardCounter(again.model)
    fourth = again.encode(["new caption"])
    assert counter.batches == []
    assert torch.equal(fourth.pooled[0], third.pooled[1])
    again.empty_embedding()
    assert counter.batches == [1]
    again._empty = None
    again.empty_embedding()
    assert counter.batches == [1]  # "" came from the disk cache
    counter.handle.remove()


# --------------------------------------------------------------------------- other encoders


def test_tiny_bert_from_local_path(tiny_bert_dir: Path) -> None:
    encoder = TextEncoder(TextEncoderConfig(name=str(tiny_bert_dir), max_length=16),
                          device="cpu")
    assert isinstance(encoder.model, transformers.BertModel)
    assert encoder.hidden_size == 48
    out = encoder.encode(CAPTIONS)
    assert out.states.shape == (len(CAPTIONS), 16, 48)
    _assert_matches(out, _reference(tiny_bert_dir, CAPTIONS, 16))
    with pytest.raises(ConfigError, match="context_dim=48"):
        encoder.check_context_dim(384)


def test_chunked_forward(tiny_bert_dir: Path) -> None:
    encoder = TextEncoder(TextEncoderConfig(name=str(tiny_bert_dir), max_length=16),
                          device="cpu", chunk_size=2)
    counter = ForwardCounter(encoder.model)
    out = encoder.encode(CAPTIONS)
    counter.handle.remove()
    assert counter.batches == [2, 2, 1]
    _assert_matches(out, _reference(tiny_bert_dir, CAPTIONS, 16))


def test_max_length_beyond_positions(tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="text.max_length=128.*64 positions"):
        TextEncoder(TextEncoderConfig(name=str(tiny_bert_dir), max_length=128), device="cpu")


def test_encoder_dtype_bf16_outputs_float32(tiny_bert_dir: Path) -> None:
    encoder = TextEncoder(TextEncoderConfig(name=str(tiny_bert_dir), max_length=16),
                          device="cpu", dtype=torch.bfloat16)
    assert next(encoder.model.parameters()).dtype == torch.bfloat16
    out = encoder.encode(CAPTIONS)
    assert out.states.dtype == torch.float32 and out.pooled.dtype == torch.float32
    _assert_matches(out, _reference(tiny_bert_dir, CAPTIONS, 16), atol=0.1)


def _clip_text_config(**overrides) -> transformers.CLIPTextConfig:
    # CLIP's own tokenizer is BPE; MiniLM's WordPiece files stand in (only the ids matter here).
    kwargs = dict(vocab_size=MINILM_VOCAB, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                  pad_token_id=0, bos_token_id=101, eos_token_id=102)
    kwargs.update(overrides)
    return transformers.CLIPTextConfig(**kwargs)


def test_clip_text_model(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model_dir = _save_with_tokenizer(transformers.CLIPTextModel(_clip_text_config()), tmp_path)
    encoder = TextEncoder(TextEncoderConfig(name=str(model_dir), max_length=24), device="cpu")
    assert isinstance(encoder.model, transformers.CLIPTextModel)
    assert encoder.hidden_size == 32
    reference_model = transformers.CLIPTextModel.from_pretrained(model_dir)
    _assert_matches(encoder.encode(CAPTIONS),
                    _reference(model_dir, CAPTIONS, 24, model=reference_model))


def test_full_clip_checkpoint_loads_text_tower_only(tmp_path: Path) -> None:
    vision = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           image_size=32, patch_size=16)
    config = transformers.CLIPConfig(text_config=_clip_text_config().to_dict(),
                                     vision_config=vision.to_dict(), projection_dim=8)
    torch.manual_seed(2)
    model_dir = _save_with_tokenizer(transformers.CLIPModel(config), tmp_path)
    encoder = TextEncoder(TextEncoderConfig(name=str(model_dir), max_length=24), device="cpu")
    assert isinstance(encoder.model, transformers.CLIPTextModel)
    assert encoder.hidden_size == 32
    full = transformers.CLIPModel.from_pretrained(model_dir)
    _assert_matches(encoder.encode(CAPTIONS),
                    _reference(model_dir, CAPTIONS, 24, model=full.text_model))


def test_t5_loads_encoder_only(tmp_path: Path) -> None:
    config = transformers.T5Config(vocab_size=MINILM_VOCAB, d_model=32, d_kv=8, d_ff=64,
                                   num_layers=2, num_decoder_layers=1, num_heads=4)
    torch.manual_seed(3)
    model_dir = _save_with_tokenizer(transformers.T5Model(config), tmp_path)
    encoder = TextEncoder(TextEncoderConfig(name=str(model_dir), max_length=16), device="cpu")
    assert isinstance(encoder.model, transformers.T5EncoderModel)
    assert encoder.hidden_size == 32
    full = transformers.T5Model.from_pretrained(model_dir)
    _assert_matches(encoder.encode(CAPTIONS),
                    _reference(model_dir, CAPTIONS, 16, model=full.encoder))
