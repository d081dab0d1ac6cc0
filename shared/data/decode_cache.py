"""Decoded clips cached on disk, so decoding is paid once.

Every clip is decoded and preprocessed (`shared.data.preprocess`) exactly once; the result is
cached as a uint8 `.npy` that later runs memory-map, so decoding is never the bottleneck of
training. A cache entry's name hashes the source file's identity (path, size, mtime) and the
preprocessing settings, so editing a clip or changing the data config invalidates exactly what
it must. A clip that cannot be decoded is recorded too, so it is not retried on
every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from shared.config import DataConfig
from shared.data.clips import CACHE_DIRNAME, Clip, DataReport
from shared.data.preprocess import PREPROCESS_VERSION, preprocess_clip, repair_notes
from shared.data.video import VideoError, read_video
from shared.io_atomic import write_atomic


def cache_root(config: DataConfig) -> Path:
    """One folder per (data folder, preprocessing settings): entries of other settings stay."""
    name = f"pixels-v{PREPROCESS_VERSION}-f{config.num_frames}-s{config.image_size}"
    if not config.cache_dir:
        return Path(config.data_dir) / CACHE_DIRNAME / name
    data_id = hashlib.sha256(str(Path(config.data_dir).resolve()).encode()).hexdigest()[:12]
    return Path(config.cache_dir) / f"{Path(config.data_dir).resolve().name}-{data_id}" / name


def cache_key(path: Path) -> str:
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def _decode_into_cache(clip: Clip, entry: Path, config: DataConfig) -> dict:
    """Decode one clip into `<entry>.npy` + `<entry>.json`; the JSON, written last, marks it done.

    A clip that cannot be decoded gets a JSON too, so it is not retried on every run.
    """
    try:
        frames, _ = read_video(clip.path)
        result = {"status": "ok", "notes": repair_notes(frames, config.num_frames,
                                                        config.image_size)}
        array = preprocess_clip(frames, config.num_frames, config.image_size)
        write_atomic(entry.with_suffix(".npy"), lambda f: np.save(f, array))
    except (VideoError, OSError, ValueError) as e:
        result = {"status": "skipped", "notes": [str(e).removeprefix(f"{clip.path}: ")]}
    write_atomic(entry.with_suffix(".json"),
                  lambda f: f.write(json.dumps(result).encode()))
    return result


def prepare_cache(clips: Sequence[Clip], config: DataConfig, report: DataReport,
                  progress: bool = True) -> list[tuple[Clip, Path]]:
    """Make sure every clip is decoded in the cache; return the usable (clip, .npy path) pairs."""
    root = cache_root(config)
    root.mkdir(parents=True, exist_ok=True)
    entries = [root / cache_key(c.path) for c in clips]
    todo = [(c, e) for c, e in zip(clips, entries) if not e.with_suffix(".json").exists()]
    if todo:
        workers = min(len(todo), os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            jobs = pool.map(lambda ce: _decode_into_cache(ce[0], ce[1], config), todo)
            for _ in tqdm(jobs, total=len(todo), desc="decoding clips", unit="clip",
                          disable=not progress):
                pass
    usable = []
    for clip, entry in zip(clips, entries):
        result = json.loads(entry.with_suffix(".json").read_text())
        if result["status"] == "ok" and entry.with_suffix(".npy").exists():
            usable.append((clip, entry.with_suffix(".npy")))
            for note in result["notes"]:
                report.repaired.append((clip.path, note))
        else:
            report.skipped.append((clip.path, "; ".join(result["notes"]) or "not decodable"))
    _prune(root, {e.name for e in entries})
    return usable


def _prune(root: Path, keep: set[str]) -> None:
    """Drop entries whose source changed or vanished, so the cache does not grow forever."""
    for path in root.iterdir():
        stem = path.name.split(".")[0] if not path.name.startswith(".") else None
        if stem and stem not in keep:
            path.unlink(missing_ok=True)
