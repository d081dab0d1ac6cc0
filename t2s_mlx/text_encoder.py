"""The frozen text encoder on MLX: captions in, token states + mask + pooled embedding out.

The MLX twin of `t2s_torch.text_encoder`, with the same methods and outputs (as `mx.array`s).
The framework-free half lives in `shared.model`: finding the model directory (`text_lookup`),
tokenizing (`text_tokenizer`), the encoder key and the on-disk embedding cache (`text_cache`),
and the encoder's bookkeeping (chunks, cache, empty caption, checks), the output contract both
backends keep and the pooling definition (`text_encoder`). Both backends key the cache by the
encoder's content and store float32, so an embedding computed by one is read by the other
without running the model.

The model itself is a small MLX port of transformers' BertModel that reads the same Hugging Face
`model.safetensors` (no torch or transformers import anywhere on this path). Architectures are
looked up by config.json's `model_type` in `_ARCHITECTURES`; BERT is the only one for now, and a
CLIP text port is added there (a builder taking the config dict and the weights) when wanted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from shared.config import TextEncoderConfig
from shared.model.text_encoder import BaseTextEncoder
from shared.model.text_tokenizer import load_tokenizer


class UnsupportedTextEncoderError(NotImplementedError):
    """An encoder architecture (or setting) the MLX port does not run; says what to use instead."""


class TextEncoderWeightsError(ValueError):
    """Weights that do not fit the architecture of config.json: missing, unexpected, mis-shaped."""


class EncodedText(NamedTuple):
    """Encoder output as MLX arrays.

    states float32 (B, L, D), mask int64 (B, L) (1 = real token), pooled float32 (B, D).
    """

    states: mx.array
    mask: mx.array
    pooled: mx.array


def masked_mean_pool(states: mx.array, mask: mx.array) -> mx.array:
    """Mean of states (B, L, D) over positions where mask (B, L) is nonzero -> (B, D).

    The MLX twin of `shared.model.text_encoder.masked_mean_pool`; a row without real tokens pools
    to zeros.
    """
    weights = mx.expand_dims(mask.astype(states.dtype), -1)
    return (states * weights).sum(axis=1) / mx.maximum(weights.sum(axis=1), 1e-9)


class EncoderModel(Protocol):
    """What an architecture builder returns: a frozen module mapping token ids to states."""

    hidden_size: int
    max_positions: int | None

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array: ...


# --------------------------------------------------------------------------- BERT

# transformers' ACT2FN names -> MLX. "gelu" is the exact (erf) GELU, as in transformers.
_ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "gelu": nn.gelu,
    "gelu_new": nn.gelu_approx,  # the tanh approximation
    "gelu_pytorch_tanh": nn.gelu_approx,
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": mx.tanh,
}


@dataclass(frozen=True)
class BertConfig:
    """The fields of a BERT config.json the forward pass needs (defaults: transformers')."""

    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2

    @classmethod
    def from_dict(cls, config: dict[str, Any], where: Path | str) -> BertConfig:
        fields = {k: config[k] for k in cls.__dataclass_fields__ if k in config}
        if "vocab_size" not in fields:
            raise ValueError(f"{where}: config.json has no vocab_size")
        bert = cls(**fields)
        position = config.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise UnsupportedTextEncoderError(
                f"{where}: position_embedding_type={position!r}; the MLX BERT port supports "
                "'absolute' position embeddings only. Use the PyTorch backend (t2s-torch) for "
                "this encoder.")
        if config.get("is_decoder"):
            raise UnsupportedTextEncoderError(
                f"{where}: is_decoder=true (causal BERT); the MLX port runs bidirectional "
                "encoders only. Use the PyTorch backend (t2s-torch) for this encoder.")
        if not isinstance(bert.hidden_act, str) or bert.hidden_act not in _ACTIVATIONS:
            raise UnsupportedTextEncoderError(
                f"{where}: hidden_act={bert.hidden_act!r} is not one the MLX BERT port knows "
                f"({', '.join(sorted(_ACTIVATIONS))}). Use the PyTorch backend (t2s-torch).")
        if bert.hidden_size % bert.num_attention_heads:
            raise ValueError(f"{where}: hidden_size={bert.hidden_size} is not a multiple of "
                             f"num_attention_heads={bert.num_attention_heads}")
        return bert


# Module attribute names follow transformers' BertModel, so parameter paths are the Hugging Face
# weight names (`encoder.layer.0.attention.self.query.weight`, ...) and load without a map.


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings,
                                                config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, input_ids: mx.array) -> mx.array:
        length = input_ids.shape[1]
        # token_type_ids are all 0 (one segment), as transformers uses when none are passed.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings.weight[:length]
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def __call__(self, x: mx.array, additive_mask: mx.array) -> mx.array:
        b, length, d = x.shape

        def heads(t: mx.array) -> mx.array:
            return t.reshape(b, length, self.num_heads, -1).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        out = mx.fast.scaled_dot_product_attention(
            q, k, v, scale=1.0 / math.sqrt(d // self.num_heads), mask=additive_mask)
        return out.transpose(0, 2, 1, 3).reshape(b, length, d)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        # `self` as an attribute name mirrors transformers' `attention.self.query` paths.
        setattr(self, "self", BertSelfAttention(config))  # noqa: B010
        self.output = BertSelfOutput(config)

    def __call__(self, x: mx.array, additive_mask: mx.array) -> mx.array:
        return self.output(self["self"](x, additive_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self._act = _ACTIVATIONS[config.hidden_act]

    def __call__(self, x: mx.array) -> mx.array:
        return self._act(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def __call__(self, x: mx.array, additive_mask: mx.array) -> mx.array:
        x = self.attention(x, additive_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = [BertLayer(config) for _ in range(config.num_hidden_layers)]

    def __call__(self, x: mx.array, additive_mask: mx.array) -> mx.array:
        for layer in self.layer:
            x = layer(x, additive_mask)
        return x


class BertModel(nn.Module):
    """transformers' BertModel without the pooler: (input_ids, attention_mask) -> last hidden
    state (B, L, D). Padding keys are masked out of attention with the dtype's most negative
    value added to their scores, as transformers does (padding queries still get states)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def max_positions(self) -> int | None:
        return self.config.max_position_embeddings

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        x = self.embeddings(input_ids)
        keep = attention_mask.astype(mx.bool_)[:, None, None, :]  # (B, 1, 1, L) over keys
        additive = mx.where(keep, mx.array(0.0, x.dtype), mx.array(mx.finfo(x.dtype).min,
                                                                   x.dtype))
        return self.encoder(x, additive)


# Weights a BERT checkpoint may carry that the encoder does not use: the pooler, pre-training /
# task heads, and the non-persistent buffers old transformers versions saved.
_BERT_UNUSED = ("pooler.", "cls.")
_BERT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def _bert_weight_names(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Hugging Face BERT names -> BertModel's: the `bert.` prefix of headed checkpoints
    (BertForMaskedLM, ...) dropped along with their heads, old TF-port LayerNorm gamma/beta
    renamed, the pooler and saved buffers left out."""
    prefixed = any(name.startswith("bert.") for name in weights)
    out = {}
    for name, value in weights.items():
        if prefixed:
            if not name.startswith("bert."):
                continue  # a task head next to the encoder
            name = name[len("bert."):]
        if name.startswith(_BERT_UNUSED) or name in _BERT_BUFFERS:
            continue
        if name.endswith(".gamma"):
            name = name[:-len("gamma")] + "weight"
        elif name.endswith(".beta"):
            name = name[:-len("beta")] + "bias"
        out[name] = value
    return out


def _build_bert(config: dict[str, Any], model_dir: Path, dtype: mx.Dtype) -> BertModel:
    model = BertModel(BertConfig.from_dict(config, model_dir))
    weights = _bert_weight_names(load_safetensors(model_dir))
    load_strict(model, weights, model_dir, dtype)
    return model


# --------------------------------------------------------------------------- loading

# config.json model_type -> builder(config dict, model dir, dtype): an nn.Module with the
# EncoderModel interface and its weights loaded (load_model freezes it). A CLIP text port
# registers "clip" and "clip_text_model" here (a full CLIP checkpoint keeps the text tower's
# weights under `text_model.`; take those, as the torch backend's CLIPTextModel does).
_ARCHITECTURES: dict[str, Callable[[dict[str, Any], Path, mx.Dtype], nn.Module]] = {
    "bert": _build_bert,
}


def load_model(model_dir: str | Path, dtype: mx.Dtype = mx.float32) -> EncoderModel:
    """The MLX encoder for a resolved model directory, weights in `dtype`, frozen, eval mode."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model_type = str(config.get("model_type", "")).lower()
    builder = _ARCHITECTURES.get(model_type)
    if builder is None:
        raise UnsupportedTextEncoderError(
            f"text encoder {model_dir} has model_type={model_type or None!r}: the MLX text "
            f"encoder supports BERT encoders (model_type {', '.join(map(repr, _ARCHITECTURES))};"
            " e.g. the default sentence-transformers/all-MiniLM-L6-v2) for now. The PyTorch "
            "backend (t2s-torch) runs the rest (CLIP text, T5 encoders, any transformers "
            "encoder); or pick a BERT encoder with --set text.name=...")
    model = builder(config, model_dir, dtype)
    model.freeze()
    model.eval()
    return model  # type: ignore[return-value]  # nn.Module implementing EncoderModel


def load_safetensors(model_dir: Path) -> dict[str, mx.array]:
    """All weights of a directory's model.safetensors (or its shards, via the index file)."""
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [model_dir / f for f in dict.fromkeys(weight_map.values())]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{model_dir}: no safetensors weights; the MLX backend reads model.safetensors "
            "only. Re-save the model with transformers' save_pretrained (safetensors is its "
            "default) or use the PyTorch backend.")
    weights: dict[str, mx.array] = {}
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: a weight shard named in {index.name} is missing")
        loaded = mx.load(str(path))
        if not isinstance(loaded, dict):
            raise TextEncoderWeightsError(f"{path}: not a safetensors file of named weights")
        weights.update(loaded)
    return weights


def load_strict(model: nn.Module, weights: dict[str, mx.array], where: Path | str,
                dtype: mx.Dtype) -> None:
    """Set every parameter of `model` from `weights` (cast to `dtype`), insisting they match."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(weights[k].shape)}, model "
                    f"{tuple(expected[k].shape)}"
                    for k in set(expected) & set(weights)
                    if tuple(weights[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        def show(names: list[str]) -> str:
            return ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: {show(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {show(unexpected)}")
        if shapes:
            problems.append(f"{len(shapes)} of the wrong shape: {show(shapes)}")
        raise TextEncoderWeightsError(
            f"{where}: the safetensors weights do not match the {type(model).__name__} that "
            f"config.json describes -- {'; '.join(problems)}")
    params = [(k, v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v)
              for k, v in weights.items()]
    model.update(tree_unflatten(params))
    mx.eval(model.parameters())


# --------------------------------------------------------------------------- the encoder


class TextEncoder(BaseTextEncoder):
    """A frozen Hugging Face text encoder (BERT for now) run by MLX.

    The bookkeeping (cache, chunks, empty caption, checks) is `shared.model.text_encoder`'s, so the
    disk cache is the same files the PyTorch `TextEncoder` reads and writes; this class runs
    the MLX port.
    """

    def __init__(self, config: TextEncoderConfig, cache_dir: str | Path | None = None,
                 dtype: mx.Dtype = mx.float32, chunk_size: int = 128):
        super().__init__(config, dtype, cache_dir, chunk_size)

    def _open(self) -> None:
        # The model first: an unsupported architecture is refused from config.json alone.
        self.model = load_model(self.model_dir, self.dtype)
        self.tokenizer = load_tokenizer(self.model_dir)

    @property
    def hidden_size(self) -> int:
        """Width D of the token states: what `ModelConfig.context_dim` must be."""
        return int(self.model.hidden_size)

    def _max_positions(self) -> int | None:
        return self.model.max_positions

    def _encode_chunk(self, ids: np.ndarray, mask: np.ndarray) -> EncodedText:
        mask = mx.array(mask)
        states = self.model(mx.array(ids.astype(np.int32)), mask)
        # Frozen: nothing flows back into the encoder even inside a training step's grad.
        states = mx.stop_gradient(states.astype(mx.float32))
        part = EncodedText(states, mask, masked_mean_pool(states, mask))
        mx.eval(*part)
        return part

    def _concat(self, parts: list[EncodedText]) -> EncodedText:
        return EncodedText(*(mx.concatenate(ts) for ts in zip(*parts)))

    def _from_numpy(self, arrays: Sequence[np.ndarray]) -> EncodedText:
        return EncodedText(*(mx.array(a) for a in arrays))

    def _to_numpy(self, encoded: EncodedText) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.array(t) for t in encoded)

    def _rows(self, encoded: EncodedText, rows: list[int]) -> EncodedText:
        index = mx.array(rows)
        return EncodedText(*(mx.take(t, index, axis=0) for t in encoded))

    def _broadcast(self, encoded: EncodedText, batch_size: int) -> EncodedText:
        return EncodedText(*(mx.broadcast_to(t, (batch_size, *t.shape[1:])) for t in encoded))
