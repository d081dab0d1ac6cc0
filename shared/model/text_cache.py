"""Text-encoder outputs cached on disk, keyed by the encoder's content and the caption.

The text encoder is frozen, so a caption's embedding is computed once ever: `encoder_key` names
an encoder by what its files hold (not where they are), and `EmbeddingCache` keeps one small
safetensors file per (encoder, length, caption), shared by both backends and written atomically.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import safetensors.numpy

from shared.io_atomic import write_bytes_atomic
from shared.model.safetensors_io import read_raw_header
from shared.model.text_tokenizer import TOKENIZER_FILES

_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".npz")
_MIB = 1 << 20
_CACHE_FORMAT = "t2s-text-embedding-v1"


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
    files = [model_dir / f for f in ("config.json", *TOKENIZER_FILES)
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
