"""The frozen text encoder's bookkeeping, written once over the backends' transformer code.

`BaseTextEncoder` holds everything that is not the model: finding the model directory,
tokenizing in chunks, de-duplicating captions, the on-disk embedding cache, the empty caption's
embedding, and the checks of `text.max_length` and `model.context_dim`. A backend's
`TextEncoder` subclasses it and supplies the hooks below (load the model, run one tokenized
chunk, move arrays between numpy and its tensors); see `shared.model.text` for the output contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import ConfigError, TextEncoderConfig
from shared.model.text import EmbeddingCache, encoder_key, resolve_text_encoder


class BaseTextEncoder:
    """Captions in, `EncodedText` (states (B, L, D), mask (B, L), pooled (B, D)) out.

    `dtype` is what the encoder computes in (outputs are always float32). With `cache_dir`,
    every caption's embedding is computed once ever and then read from
    `shared.model.text.EmbeddingCache`, the same files for both backends. Not a framework module on
    purpose: its weights never join a trainer's optimizer or state dict.
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
