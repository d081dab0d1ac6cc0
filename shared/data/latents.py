"""Latent mode, framework-free: which VAE, what it does to shapes, and the latent cache.

In latent mode the 3D UNet runs on the latents of a pretrained image autoencoder (diffusers'
AutoencoderKL, e.g. the Stable Diffusion VAE) instead of on pixels: a 128 x 128 RGB frame becomes
a 16 x 16 x 4 latent, about 50x less UNet work. Frames are encoded one by one (the VAE is 2D), so
a clip's latents are (F, h, w, C), channels-last like the pixel cache.

This module owns everything that needs no framework:

- finding the VAE (`resolve_vae`: a local folder, a pipeline folder with `vae/`, or a Hugging Face
  id already in the local cache) and reading its `config.json` (`VAEInfo`);
- `vae_hash`: a hash of its weights file. A run records it (`data.vae_hash`) because latents are
  only meaningful to the VAE that made them: sampling refuses another one, and the cache folder is
  named by it, so a different VAE never reads stale latents;
- `bind_vae`: what latent mode changes in a Config (UNet in/out channels = latent channels, the
  spatial size the UNet sees = image_size / the VAE's downsampling);
- the latent cache beside the pixel cache, `.t2s_cache/latents-v1-<vae hash>-f{F}-s{S}/`, one
  float16 `.npy` per clip named like its pixel entry (whose name hashes the source file), so an
  edited clip, another data config or another VAE each invalidate exactly what they must.
  float16 halves the bytes; its rounding (~5e-4 relative) is far below the VAE's own
  reconstruction error.

Latents are stored already scaled (`(mean - shift_factor) * scaling_factor`, unit variance for the
SD VAE), which is what the diffusion model trains on; the backends' `LatentVAE.decode` undoes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from shared.config import Config, DataConfig
from shared.io_atomic import write_atomic

if TYPE_CHECKING:
    from shared.data.dataset import ClipDataset

log = logging.getLogger("text2sign.latents")

VAE_CONFIG = "config.json"
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
LATENT_VERSION = 1
LATENT_DTYPE = np.float16
_HUB_PATTERNS = [VAE_CONFIG, VAE_WEIGHTS, f"vae/{VAE_CONFIG}", f"vae/{VAE_WEIGHTS}"]


class VAENotFoundError(FileNotFoundError):
    """A VAE name or path that does not lead to a usable folder; says how to fix it."""


class VAEMismatchError(ValueError):
    """Latents made by one VAE offered to a model trained on another's."""


# ------------------------------------------------------------------------------ the VAE itself


@dataclass(frozen=True)
class VAEInfo:
    """What both backends need to know about an AutoencoderKL, from its config.json."""

    path: Path
    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    norm_num_groups: int
    scaling_factor: float
    shift_factor: float
    use_quant_conv: bool
    use_post_quant_conv: bool
    mid_block_add_attention: bool

    @property
    def downsample(self) -> int:
        """Pixels per latent along each side: one halving per encoder level but the last."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def weights(self) -> Path:
        return self.path / VAE_WEIGHTS

    @classmethod
    def read(cls, path: str | Path) -> VAEInfo:
        """Parse a VAE folder's config.json, refusing architectures the ports do not build."""
        path = Path(path)
        try:
            c: dict[str, Any] = json.loads((path / VAE_CONFIG).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise VAENotFoundError(f"{path / VAE_CONFIG}: cannot read the VAE config ({e})") \
                from None
        kind = c.get("_class_name", "AutoencoderKL")
        down = set(c.get("down_block_types", ["DownEncoderBlock2D"]))
        up = set(c.get("up_block_types", ["UpDecoderBlock2D"]))
        if (kind != "AutoencoderKL" or down != {"DownEncoderBlock2D"}
                or up != {"UpDecoderBlock2D"} or c.get("act_fn", "silu") != "silu"):
            raise VAENotFoundError(
                f"{path}: a {kind} with blocks {sorted(down | up)}; latent mode reads a diffusers "
                "AutoencoderKL with DownEncoderBlock2D / UpDecoderBlock2D blocks and SiLU (the "
                "Stable Diffusion VAE family)")
        shift = c.get("shift_factor")
        return cls(path=path, in_channels=int(c.get("in_channels", 3)),
                   out_channels=int(c.get("out_channels", 3)),
                   block_out_channels=tuple(int(x) for x in c.get("block_out_channels", [64])),
                   layers_per_block=int(c.get("layers_per_block", 1)),
                   latent_channels=int(c.get("latent_channels", 4)),
                   norm_num_groups=int(c.get("norm_num_groups", 32)),
                   scaling_factor=float(c.get("scaling_factor", 0.18215)),
                   shift_factor=float(shift) if shift is not None else 0.0,
                   use_quant_conv=bool(c.get("use_quant_conv", True)),
                   use_post_quant_conv=bool(c.get("use_post_quant_conv", True)),
                   mid_block_add_attention=bool(c.get("mid_block_add_attention", True)))


def resolve_vae(name_or_path: str | Path, download: bool | None = None) -> Path:
    """The local folder (config.json + diffusion_pytorch_model.safetensors) of a VAE.

    In order: a local folder (or a pipeline folder holding `vae/`); a Hugging Face id
    (`org/name`, or `org/name/vae` for a pipeline's VAE) from the local hub cache, then, unless
    `download` is False or HF_HUB_OFFLINE is set, downloaded. Every failure names the local-folder
    way out, because the usual cause is an offline machine.
    """
    name = str(name_or_path)
    if not name:
        raise VAENotFoundError("no VAE given; pass --vae with a local folder or a Hugging Face id")
    path = Path(name).expanduser()
    if path.exists():
        return _check_vae_dir(path, name)
    if os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 2:
        raise VAENotFoundError(f"VAE {name!r}: no such folder")
    return _hub_vae(name, download)


def _check_vae_dir(path: Path, name: str) -> Path:
    if (path / "vae" / VAE_CONFIG).is_file() and not (path / VAE_CONFIG).is_file():
        path = path / "vae"  # a whole pipeline folder: its VAE
    if not (path / VAE_CONFIG).is_file() or not (path / VAE_WEIGHTS).is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) if path.is_dir() else ""
        raise VAENotFoundError(
            f"VAE {name!r}: {path} needs {VAE_CONFIG} and {VAE_WEIGHTS} (what diffusers' "
            f"AutoencoderKL.save_pretrained writes; found: {found or 'nothing'})")
    return path


def _hub_vae(name: str, download: bool | None) -> Path:
    parts = name.split("/")
    repo, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    fix = (f"point --vae at a local folder instead: on a machine with internet run "
           f"`hf download {repo}` (or AutoencoderKL.from_pretrained(...).save_pretrained(DIR)) "
           "and pass that folder")
    try:
        import huggingface_hub
    except ImportError:
        raise VAENotFoundError(f"VAE {name!r} is not a local folder and huggingface_hub is not "
                               f"installed to look in the Hugging Face cache; {fix}") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    allow = (not offline) if download is None else download
    errors = []
    for local_only in (True, False) if allow else (True,):
        try:
            snapshot = Path(huggingface_hub.snapshot_download(
                repo, local_files_only=local_only, allow_patterns=_HUB_PATTERNS))
        except Exception as e:  # hub, network and validation errors vary widely
            errors.append(type(e).__name__)
            continue
        return _check_vae_dir(snapshot / subfolder if subfolder else snapshot, name)
    how = "and could not be downloaded" if allow else "and downloading is off (offline)"
    raise VAENotFoundError(f"VAE {name!r} is not a local folder nor in the Hugging Face cache, "
                           f"{how} ({', '.join(errors)}); {fix}")


_HASHES: dict[tuple[str, int, int], str] = {}


def vae_hash(path: str | Path) -> str:
    """16 hex digits of the sha256 of the VAE's weights file (content, not path: a copy of the
    folder has the same hash). Remembered per (file, size, mtime) within a process."""
    weights = Path(path) / VAE_WEIGHTS
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with weights.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()[:16]
    return _HASHES[key]


# ------------------------------------------------------------------------------ the config


def bind_vae(config: Config) -> VAEInfo:
    """Resolve `config.data.vae` and make the config agree with it (in place).

    Sets the UNet's in/out channels to the latent channels, `data.vae_downsample`, and
    `data.vae_hash` (a run that already has one, i.e. a resumed run, must be given the same VAE).
    """
    info = VAEInfo.read(resolve_vae(config.data.vae))
    check_vae(config, vae_hash(info.path), info.path)
    d, m = config.data, config.model
    d.vae_hash = vae_hash(info.path)
    d.vae_downsample = info.downsample
    m.in_channels = m.out_channels = info.latent_channels
    config.validate()
    return info


def check_vae(config: Config, found_hash: str, where: str | Path) -> None:
    """Refuse a VAE other than the one `config` was trained with, in one line."""
    want = config.data.vae_hash
    if want and want != found_hash:
        raise VAEMismatchError(
            f"the VAE at {where} (weights hash {found_hash}) is not the one this model was "
            f"trained with ({config.data.vae!r}, hash {want}); its latents would decode to "
            "noise. Point at the original VAE folder (sample: vae=..., train: --vae)")


# ------------------------------------------------------------------------------ the latent cache


def latent_cache_root(data: DataConfig, vae_hash_: str) -> Path:
    """Beside the pixel cache: one folder per (VAE, frames, size)."""
    from shared.data.decode_cache import cache_root

    pixels = cache_root(data)
    name = f"latents-v{LATENT_VERSION}-{vae_hash_}-f{data.num_frames}-s{data.image_size}"
    return pixels.parent / name


def prepare_latents(dataset: ClipDataset, vae_hash_: str,
                    encode: Callable[[np.ndarray], np.ndarray],
                    progress: bool = True, rank: int = 0, world_size: int = 1) -> list[Path]:
    """Encode every clip of `dataset` not yet in the latent cache; return the latent paths.

    `encode` maps one uint8 clip (F, S, S, 3) to its scaled latents (F, h, w, C) (a backend's
    `LatentVAE.encode`). Each entry is written atomically, so an interrupted run resumes where
    it stopped. Entries whose pixel entry is gone (the clip changed or vanished) are pruned.
    Data-parallel ranks each encode the missing ones of every `world_size`-th clip (then meet at
    a barrier).
    """
    from shared.data.decode_cache import cache_root

    root = latent_cache_root(dataset.config, vae_hash_)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / p.name for p in dataset.arrays]
    # a fixed share of all clips (not of the missing ones, whose list changes as ranks write)
    todo = [i for i in range(rank, len(paths), world_size) if not paths[i].exists()]
    for i in tqdm(todo, desc="encoding latents", unit="clip", disable=not progress):
        latents = np.asarray(encode(np.asarray(dataset[i][0])), dtype=LATENT_DTYPE)
        write_atomic(paths[i], lambda f, a=latents: np.save(f, a))
    pixels = {p.stem for p in cache_root(dataset.config).glob("*.npy")}
    for stale in root.glob("*.npy"):
        if stale.stem not in pixels:
            stale.unlink(missing_ok=True)
    return paths


def use_latents(dataset: ClipDataset, vae_hash_: str, encode: Callable[[np.ndarray], np.ndarray],
                progress: bool = True, rank: int = 0, world_size: int = 1,
                barrier: Callable[[], None] = lambda: None) -> None:
    """Make `dataset` serve cached latents (encoding the missing ones first) instead of pixels.

    With several ranks, each encodes its share of what is missing, `barrier` waits for all of
    them, and every rank then serves the complete cache. (A data set of many thousand clips is
    better encoded up front with `data encode`, so no rank waits long at the barrier.)
    """
    prepare_latents(dataset, vae_hash_, encode, progress, rank, world_size)
    barrier()
    dataset.serve_arrays(prepare_latents(dataset, vae_hash_, encode, progress=False))



def encode_data(config: Config, load_vae: Callable[[], Any], progress: bool = True) -> str:
    """`data encode`: every usable clip of the data folder into the latent cache; a summary.

    `load_vae` builds a backend's `LatentVAE`; it is only called when something is missing.
    """
    from shared.data.dataset import ClipDataset

    bind_vae(config)
    dataset = ClipDataset(config.data, split="all", progress=progress)
    root = latent_cache_root(config.data, config.data.vae_hash)
    before = sum((root / p.name).exists() for p in dataset.arrays)
    vae: list[Any] = []

    def encode(clip: np.ndarray) -> np.ndarray:
        if not vae:
            vae.append(load_vae())
            check_vae(config, vae[0].hash, vae[0].info.path)
        return vae[0].encode(clip)

    prepare_latents(dataset, config.data.vae_hash, encode, progress)
    d = config.data
    return (f"{len(dataset)} clips: {len(dataset) - before} encoded, {before} already cached "
            f"({d.num_frames} x {d.model_size} x {d.model_size} x "
            f"{config.model.in_channels} latents in {root})")
