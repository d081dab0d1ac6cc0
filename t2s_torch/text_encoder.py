"""The frozen text encoder on PyTorch: captions in, token states + mask + pooled embedding out.

The framework-free half lives in `shared.model`: finding the model directory (`text_lookup`),
tokenizing (`text_tokenizer`), the encoder key and the on-disk embedding cache (`text_cache`),
and the encoder's bookkeeping, the output contract both backends keep and the pooling
definition (`text_encoder`); this file only runs the transformers model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from shared.config import TextEncoderConfig
from shared.model.text_encoder import BaseTextEncoder
from shared.model.text_tokenizer import load_tokenizer
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

    The torch twin of `shared.model.text_encoder.masked_mean_pool`; a row without real tokens
    pools to zeros.
    """
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


class TextEncoder(BaseTextEncoder):
    """A frozen Hugging Face text encoder (BERT-like, CLIP text, T5 encoder) in eval mode.

    The bookkeeping (cache, chunks, empty caption, checks) is `shared.model.text_encoder`'s; this
    class runs the transformers model. `device` None picks the best available one (see
    `t2s_torch.device.select_device`).
    """

    def __init__(self, config: TextEncoderConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = None,
                 chunk_size: int = 128):
        self._requested_device = device
        super().__init__(config, dtype, cache_dir, chunk_size)

    def _open(self) -> None:
        self.device = select_device(self._requested_device)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = _load_model(self.model_dir).to(device=self.device, dtype=self.dtype)
        self.model.eval().requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        """Width D of the token states: what `ModelConfig.context_dim` must be."""
        config = self.model.config
        size = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        if size is None:
            raise ValueError(f"{self.model_dir}: cannot tell the encoder's hidden size from "
                             "its config.json")
        return int(size)

    def _max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    @torch.no_grad()
    def _compute(self, captions: list[str]) -> EncodedText:
        # no_grad, not inference_mode: inference tensors could not be saved for backward when
        # the UNet's cross-attention uses them in training.
        return super()._compute(captions)

    def _encode_chunk(self, ids: np.ndarray, mask: np.ndarray) -> EncodedText:
        ids = torch.from_numpy(ids).to(self.device)
        mask = torch.from_numpy(mask).to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        return EncodedText(states, mask, masked_mean_pool(states, mask))

    def _concat(self, parts: list[EncodedText]) -> EncodedText:
        return EncodedText(*(torch.cat(ts) for ts in zip(*parts)))

    def _from_numpy(self, arrays: Sequence[np.ndarray]) -> EncodedText:
        return EncodedText(*(torch.from_numpy(a).to(self.device) for a in arrays))

    def _to_numpy(self, encoded: EncodedText) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(t.cpu().numpy() for t in encoded)

    def _rows(self, encoded: EncodedText, rows: list[int]) -> EncodedText:
        index = torch.tensor(rows, device=self.device)
        return EncodedText(*(t.index_select(0, index) for t in encoded))

    def _broadcast(self, encoded: EncodedText, batch_size: int) -> EncodedText:
        # read-only views of one row
        return EncodedText(*(t.expand(batch_size, *t.shape[1:]) for t in encoded))

    def _describe_device(self) -> str:
        return f"device={self.device}, "


def _load_model(model_dir: Path) -> torch.nn.Module:
    """The transformers model for a resolved directory: the text/encoder part only."""
    import transformers

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    class_name = _ENCODER_CLASSES.get(str(config.get("model_type", "")).lower(), "AutoModel")
    return getattr(transformers, class_name).from_pretrained(model_dir)
