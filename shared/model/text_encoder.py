"""The frozen text encoder's bookkeeping, written once over the backends' transformer code.

`BaseTextEncoder` holds everything that is not the model: finding the model directory,
tokenizing in chunks, de-duplicating captions, the on-disk embedding cache, the empty caption's
embedding, and the checks of `text.max_length` and `model.context_dim`. A backend's
`TextEncoder` subclasses it and supplies the hooks below (load the model, run one tokenized
chunk, move arrays between numpy and its tensors).

What each backend's text encoder must return for a batch tokenized by `TextTokenizer.tokenize`
(`shared.model.text_tokenizer`; input_ids and attention_mask int64, shape (B, L) with
L = `TextEncoderConfig.max_length`):

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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import ConfigError, TextEncoderConfig
from shared.model.text_cache import EmbeddingCache, encoder_key
from shared.model.text_lookup import resolve_text_encoder


class BaseTextEncoder:
    """Captions in, `EncodedText` (states (B, L, D), mask (B, L), pooled (B, D)) out.

    `dtype` is what the encoder computes in (outputs are always float32). With `cache_dir`,
    every caption's embedding is computed once ever and then read from
    `shared.model.text_cache.EmbeddingCache`, the same files for both backends. Not a framework
    module on purpose: its weights never join a trainer's optimizer or state dict.
    """

    model: Any
    tokenizer: Any

    def __init__(self, config: TextEncoderConfig, dtype: Any, cache_dir: str | Path | None,
                 chunk_size: int):
        self.config = config
        self.max_length = int(config.max_length)
        self.model_dir = resolve_text_encoder(config.name)
        self.dtype = dtype
        self.chunk_size = int(chunk_size)
        self._open()
        self._check_positions()
        self.key = encoder_key(self.model_dir)
        self.cache = (EmbeddingCache(cache_dir, self.key, self.max_length)
                      if cache_dir is not None else None)
        self._empty: Any = None

    # ----------------------------------------------------------------- what a backend supplies

    def _open(self) -> None:
        """Set `self.tokenizer` and `self.model` (frozen, eval mode), in the order whose errors
        should come first."""
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        """Width D of the token states: what `ModelConfig.context_dim` must be."""
        raise NotImplementedError

    def _max_positions(self) -> int | None:
        raise NotImplementedError

    def _encode_chunk(self, ids: np.ndarray, mask: np.ndarray) -> Any:
        """One tokenized chunk through the model: an `EncodedText` of float32 tensors."""
        raise NotImplementedError

    def _concat(self, parts: list[Any]) -> Any:
        raise NotImplementedError

    def _from_numpy(self, arrays: Sequence[np.ndarray]) -> Any:
        raise NotImplementedError

    def _to_numpy(self, encoded: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _rows(self, encoded: Any, rows: list[int]) -> Any:
        """`encoded` with its rows picked (repeats allowed)."""
        raise NotImplementedError

    def _broadcast(self, encoded: Any, batch_size: int) -> Any:
        """A one-row `encoded` as `batch_size` rows (views where the framework has them)."""
        raise NotImplementedError

    def _describe_device(self) -> str:
        """`device=..., ` for `repr`, or nothing where arrays have no device."""
        return ""

    # ----------------------------------------------------------------- the encoder

    def check_context_dim(self, context_dim: int) -> None:
        """Raise ConfigError unless the UNet's cross-attention width matches this encoder."""
        if int(context_dim) != self.hidden_size:
            raise ConfigError(
                f"model.context_dim={context_dim}, but the text encoder {self.config.name!r} "
                f"gives {self.hidden_size}-wide token states; pass "
                f"--set model.context_dim={self.hidden_size}")

    def encode(self, captions: Sequence[str] | str) -> Any:
        """Embed a batch of captions (through the on-disk cache when there is one)."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not captions:
            raise ValueError("encode needs at least one caption")
        if self.cache is not None:
            return self._from_numpy(self.cache.get_or_compute(captions, self._compute_numpy))
        unique = list(dict.fromkeys(captions))
        out = self._compute(unique)
        if len(unique) == len(captions):
            return out
        where = {c: i for i, c in enumerate(unique)}
        return self._rows(out, [where[c] for c in captions])

    def empty_embedding(self, batch_size: int = 1) -> Any:
        """The unconditional embedding (of ""), for classifier-free guidance.

        Computed once per encoder (and read from / written to the disk cache like any caption);
        returned broadcast to `batch_size` rows.
        """
        if self._empty is None:
            self._empty = self.encode([""])
        return self._broadcast(self._empty, batch_size)

    def _compute(self, captions: list[str]) -> Any:
        parts = []
        for start in range(0, len(captions), self.chunk_size):
            ids, mask = self.tokenizer.tokenize(captions[start:start + self.chunk_size],
                                                self.max_length)
            parts.append(self._encode_chunk(ids, mask))
        if len(parts) == 1:
            return parts[0]
        return self._concat(parts)

    def _compute_numpy(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._to_numpy(self._compute(captions))

    def _check_positions(self) -> None:
        limit = self._max_positions()
        if isinstance(limit, int) and self.max_length > limit:
            raise ConfigError(
                f"text.max_length={self.max_length} exceeds the {limit} positions of the text "
                f"encoder {self.config.name!r}; pass --set text.max_length={limit} or less")

    def __repr__(self) -> str:
        return (f"TextEncoder({self.config.name!r}, {type(self.model).__name__}, "
                f"hidden_size={self.hidden_size}, max_length={self.max_length}, "
                f"{self._describe_device()}dtype={self.dtype}, key={self.key})")


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
