"""Tokenizing captions for either backend with `tokenizers` alone.

Both backends feed their encoder the same int64 batches (input_ids and attention_mask, shape
(B, L) with L = `TextEncoderConfig.max_length`), tokenized here as transformers' fast tokenizer
would, so the MLX path never imports torch or transformers. A model directory saved without
tokenizer.json but with a BERT vocab.txt gets its WordPiece tokenizer rebuilt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

# The files that decide how a model directory tokenizes (and so the mask and the tokens).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")


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
                  for f in TOKENIZER_FILES)
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
