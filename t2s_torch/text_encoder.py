"""The frozen text encoder on PyTorch: captions in, token states + mask + pooled embedding out.

The framework-free half (finding the model directory, tokenizing, the encoder key, the on-disk
embedding cache, the pooling definition) lives in `shared.text`; this file only runs the
transformers model. See `shared/text.py` for the output contract both backends keep.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from shared.config import ConfigError, TextEncoderConfig
from shared.text import EmbeddingCache, encoder_key, load_tokenizer, resolve_text_encoder
from t2s_torch.device import select_device

# config.json model_type -> the transformers class that runs only the text / encoder part.
# Anything else (BERT, RoBERTa, MPNet, ...) goes through AutoModel.
_ENCODER_CLASSES = {
    "clip": "CLIPTextModel",
    "clip_text_model": "CLIPTextModel",
    "siglip": "SiglipTextModel",
    "siglip_text_model": "SiglipTextModel",
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
}


class EncodedText(NamedTuple):
    """Encoder output as torch tensors on the encoder's device.

    states float32 (B, L, D), mask int64 (B, L) (1 = real token), pooled float32 (B, D).
    """

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


def masked_mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of states (B, L, D) over positions where mask (B, L) is nonzero -> (B, D).

    The torch twin of `shared.text.masked_mean_pool`; a row without real tokens pools to zeros.
    """
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


class TextEncoder:
    """A frozen Hugging Face text encoder (BERT-like, CLIP text, T5 encoder) in eval mode.

    `device` None picks the best available one (see `t2s_torch.device.select_device`); `dtype`
    is what the encoder computes in (outputs are always float32). With `cache_dir`, every
    caption's embedding is computed once ever and then read from `shared.text.EmbeddingCache`.
    Not an `nn.Module` on purpose: its weights never join a trainer's optimizer, state dict or
    `.train()` switch.
    """

    def __init__(self, config: TextEncoderConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = None,
                 chunk_size: int = 128):
        self.config = config
        self.max_length = int(config.max_length)
        self.model_dir = resolve_text_encoder(config.name)
        self.device = select_device(device)
        self.dtype = dtype
        self.chunk_size = int(chunk_size)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = _load_model(self.model_dir).to(device=self.device, dtype=dtype)
        self.model.eval().requires_grad_(False)
        self._check_positions()
        self.key = encoder_key(self.model_dir)
        self.cache = (EmbeddingCache(cache_dir, self.key, self.max_length)
                      if cache_dir is not None else None)
        self._empty: EncodedText | None = None

    @property
    def hidden_size(self) -> int:
        """Width D of the token states: what `ModelConfig.context_dim` must be."""
        config = self.model.config
        size = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        if size is None:
            raise ValueError(f"{self.model_dir}: cannot tell the encoder's hidden size from "
                             "its config.json")
        return int(size)

    def check_context_dim(self, context_dim: int) -> None:
        """Raise ConfigError unless the UNet's cross-attention width matches this encoder."""
        if int(context_dim) != self.hidden_size:
            raise ConfigError(
                f"model.context_dim={context_dim}, but the text encoder {self.config.name!r} "
                f"gives {self.hidden_size}-wide token states; pass "
                f"--set model.context_dim={self.hidden_size}")

    def encode(self, captions: Sequence[str] | str) -> EncodedText:
        """Embed a batch of captions (through the on-disk cache when there is one)."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not captions:
            raise ValueError("encode needs at least one caption")
        if self.cache is not None:
            batch = self.cache.get_or_compute(captions, self._compute_numpy)
            return EncodedText(*(torch.from_numpy(a).to(self.device) for a in batch))
        unique = list(dict.fromkeys(captions))
        out = self._compute(unique)
        if len(unique) == len(captions):
            return out
        where = {c: i for i, c in enumerate(unique)}
        index = torch.tensor([where[c] for c in captions], device=self.device)
        return EncodedText(*(t.index_select(0, index) for t in out))

    def empty_embedding(self, batch_size: int = 1) -> EncodedText:
        """The unconditional embedding (of ""), for classifier-free guidance.

        Computed once per encoder (and read from / written to the disk cache like any caption);
        returned expanded to `batch_size` rows, as read-only views of one row.
        """
        if self._empty is None:
            self._empty = self.encode([""])
        return EncodedText(*(t.expand(batch_size, *t.shape[1:]) for t in self._empty))

    # ------------------------------------------------------------------ running the model

    @torch.no_grad()
    def _compute(self, captions: list[str]) -> EncodedText:
        # no_grad, not inference_mode: inference tensors could not be saved for backward when
        # the UNet's cross-attention uses them in training.
        parts = []
        for start in range(0, len(captions), self.chunk_size):
            ids, mask = self.tokenizer.tokenize(captions[start:start + self.chunk_size],
                                                self.max_length)
            ids = torch.from_numpy(ids).to(self.device)
            mask = torch.from_numpy(mask).to(self.device)
            states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            parts.append(EncodedText(states, mask, masked_mean_pool(states, mask)))
        if len(parts) == 1:
            return parts[0]
        return EncodedText(*(torch.cat(ts) for ts in zip(*parts)))

    def _compute_numpy(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(t.cpu().numpy() for t in self._compute(captions))

    def _check_positions(self) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and self.max_length > limit:
            raise ConfigError(
                f"text.max_length={self.max_length} exceeds the {limit} positions of the text "
                f"encoder {self.config.name!r}; pass --set text.max_length={limit} or less")

    def __repr__(self) -> str:
        return (f"TextEncoder({self.config.name!r}, {type(self.model).__name__}, "
                f"hidden_size={self.hidden_size}, max_length={self.max_length}, "
                f"device={self.device}, dtype={self.dtype}, key={self.key})")


def _load_model(model_dir: Path) -> torch.nn.Module:
    """The transformers model for a resolved directory: the text/encoder part only."""
    import transformers

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    class_name = _ENCODER_CLASSES.get(str(config.get("model_type", "")).lower(), "AutoModel")
    return getattr(transformers, class_name).from_pretrained(model_dir)
