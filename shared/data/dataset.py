"""Training clips: find them, decode them once, serve them fast.

A training folder holds GIF / MP4 clips with same-named `.txt` captions, or a `filename,text`
labels file. Every clip is decoded, resampled to `num_frames`, centre-cropped to a square and
resized to `image_size` exactly once; the result is cached as a uint8 `.npy` that later runs
memory-map, so decoding is never the bottleneck of training. A cache entry's name hashes the
source file's identity (path, size, mtime) and the preprocessing settings, so editing a clip or
changing the data config invalidates exactly what it must.

Bad input never crashes an epoch. A clip that cannot be used (undecodable, no caption, empty
caption) is skipped with one warning naming the file; a clip that can be repaired (one frame,
too few frames, grayscale, smaller than `image_size`) is repaired and noted. The report counts
both; `strict` turns any of them into a `DataError`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from shared.config import DataConfig
from shared.data.video import VIDEO_SUFFIXES, VideoError, read_video
from shared.io_atomic import write_atomic

log = logging.getLogger("text2sign.data")

# Bump when preprocessing changes in a way that invalidates every cached clip.
PREPROCESS_VERSION = 1
CACHE_DIRNAME = ".t2s_cache"


class DataError(RuntimeError):
    """Training data that cannot be used as asked; the message names the file and the fix."""


@dataclass(frozen=True)
class Clip:
    path: Path
    caption: str


@dataclass
class DataReport:
    """What happened to each input file: kept, repaired (with a note) or skipped (with why)."""

    kept: int = 0
    repaired: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.kept} clips ready"
        if self.repaired:
            text += f", {len(self.repaired)} repaired"
        if self.skipped:
            text += f", {len(self.skipped)} skipped (see the warnings above)"
        return text


# ---------------------------------------------------------------- finding clips and captions


def find_clips(config: DataConfig, report: DataReport) -> list[Clip]:
    """Clips of the folder with their captions, sorted by path; captionless ones go to report."""
    root = Path(config.data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder; make one with `t2s-torch data toy {root}` "
                        "or point data.data_dir at your clips")
    if config.labels_file:
        return _clips_from_labels(root, Path(config.labels_file), report)
    clips = []
    for path in sorted(p for p in root.rglob("*") if _is_video(p, root)):
        caption_path = path.with_suffix(".txt")
        if not caption_path.exists():
            report.skipped.append((path, f"no caption: add {caption_path.name} beside it"))
            continue
        caption = _clean_caption(caption_path.read_text(encoding="utf-8", errors="replace"))
        if not caption:
            report.skipped.append((path, f"empty caption in {caption_path.name}"))
            continue
        clips.append(Clip(path, caption))
    return clips


def _clips_from_labels(root: Path, labels: Path, report: DataReport) -> list[Clip]:
    labels = labels if labels.is_absolute() or labels.exists() else root / labels
    if not labels.exists():
        raise DataError(f"{labels}: labels file not found; give a `filename,text` CSV")
    clips = []
    # Without a header, or with just `filename,text`, everything after the first comma is the
    # caption (unquoted commas allowed); a header naming more columns (`filename,text,signer`,
    # for data.split_by) makes it a proper CSV whose caption is the text column alone.
    columns = 0
    with labels.open(newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or (line_no == 1 and [c.strip().lower() for c in row[:2]]
                           == ["filename", "text"]):
                if line_no == 1 and len(row) > 2:
                    columns = len(row)
                continue
            if len(row) < 2:
                report.skipped.append((labels, f"line {line_no}: expected filename,text"))
                continue
            path = root / row[0].strip()
            caption = _clean_caption(row[1] if columns else ",".join(row[1:]))
            if not path.exists():
                report.skipped.append((path, f"{labels.name} line {line_no}: file not found"))
            elif not caption:
                report.skipped.append((path, f"{labels.name} line {line_no}: empty caption"))
            else:
                clips.append(Clip(path, caption))
    return sorted(clips, key=lambda c: str(c.path))


def _is_video(path: Path, root: Path) -> bool:
    return (path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()
            and CACHE_DIRNAME not in path.relative_to(root).parts
            and not path.name.startswith("."))


def _clean_caption(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- preprocessing (pure functions)


def resample_frames(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """Uniformly pick `num_frames` across a long clip; pad a short one with its last frame."""
    n = len(frames)
    if n >= num_frames:
        index = np.round(np.linspace(0, n - 1, num_frames)).astype(int)
    else:
        index = np.concatenate([np.arange(n), np.full(num_frames - n, n - 1)])
    return frames[index]


def center_crop_square(frames: np.ndarray) -> np.ndarray:
    h, w = frames.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return frames[:, top:top + side, left:left + side]


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bicubic resize of square frames to `size` x `size`."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC))
                     for f in frames])


def preprocess_clip(frames: np.ndarray, num_frames: int, image_size: int) -> np.ndarray:
    """Decoded RGB uint8 (F', H, W, 3) -> training clip uint8 (num_frames, S, S, 3)."""
    return resize_frames(center_crop_square(resample_frames(frames, num_frames)), image_size)


def to_model_range(clip: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1], the range the diffusion model works in (the numpy
    reference of what each backend does on its device)."""
    out = np.multiply(clip, np.float32(1 / 127.5), dtype=np.float32)
    out -= np.float32(1.0)
    return out


def repair_notes(frames: np.ndarray, num_frames: int, image_size: int) -> list[str]:
    """What preprocessing had to paper over for this decoded clip (empty for a clean clip)."""
    notes = []
    if len(frames) < num_frames:
        notes.append(f"only {len(frames)} frame(s): padded to {num_frames} by repeating the last")
    if np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 1],
                                                                           frames[..., 2]):
        notes.append("grayscale: converted to RGB")
    if min(frames.shape[1:3]) < image_size:
        h, w = frames.shape[1:3]
        notes.append(f"{w}x{h} is smaller than image_size {image_size}: upscaled")
    return notes


# ---------------------------------------------------------------- the decoded-clip cache


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


# ---------------------------------------------------------------- the dataset


def split_indices(clips: Sequence[Clip], root: Path, val_fraction: float,
                  seed: int, groups: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Deterministic train / validation split by seed.

    Each clip's rank is a hash of (seed, its path relative to the data folder), so the split
    does not depend on the machine, on the folder's absolute location, or on listing order, and
    adding clips moves few existing ones across the line.

    With `groups` (one label per clip, see `clip_groups`), whole groups are ranked the same way
    and moved to validation until it holds at least `val_fraction` of the clips, always leaving
    one group for training: clips of one source video or one signer never straddle the line.
    """
    n = len(clips)
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    if groups is not None:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} group labels for {n} clips")
        members: dict[str, list[int]] = {}
        for i, group in enumerate(groups):
            members.setdefault(group, []).append(i)
        ranked = sorted(members, key=lambda g: hashlib.sha256(f"{seed}|{g}".encode()).hexdigest())
        val = []
        for group in ranked[:-1]:
            if len(val) >= n_val:
                break
            val += members[group]
        held = set(val)
        return [i for i in range(n) if i not in held], sorted(val)

    def rank(i: int) -> str:
        rel = Path(os.path.relpath(clips[i].path.resolve(), root.resolve())).as_posix()
        return hashlib.sha256(f"{seed}|{rel}".encode()).hexdigest()

    order = sorted(range(n), key=rank)
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return train, val


MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")  # what `data prepare` writes


def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV with a header line, or of a JSON-lines file (keys as columns)."""
    if path.suffix == ".jsonl":
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                rows.append({str(k): "" if v is None else str(v) for k, v in value.items()})
        return list(dict.fromkeys(k for r in rows for k in r)), rows
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
        return [h.strip() for h in reader.fieldnames or []], rows


def clip_groups(clips: Sequence[Clip], config: DataConfig) -> list[str] | None:
    """Each clip's split group under `config.split_by` (None: every clip alone).

    "source" and any other name are looked up, case-insensitively, as a column of the labels
    file (its first line must name the columns: `filename,text,signer`), else of the manifest
    `data prepare` wrote into the data folder (which always has `source`). A clip the table does
    not list, or whose cell is empty, is a group of its own.
    """
    by = config.split_by.strip()
    if not by:
        return None
    root = Path(config.data_dir)
    tables: list[tuple[Path, str]] = []  # (file, its file-name column)
    if config.labels_file:
        labels = Path(config.labels_file)
        tables.append((labels if labels.is_absolute() or labels.exists() else root / labels,
                       "filename"))
    tables += [(root / name, "output") for name in MANIFEST_NAMES if (root / name).is_file()]
    looked = []
    for path, name_column in tables:
        header, rows = _read_table(path)
        columns = {h.lower(): h for h in header}
        looked.append(f"{path} (columns: {', '.join(header) or 'none'})")
        if by.lower() not in columns or name_column not in columns:
            continue
        column, names = columns[by.lower()], columns[name_column]
        value = {(root / r[names]).resolve(): r.get(column, "") for r in rows if r.get(names)}
        out = []
        for clip in clips:
            group = value.get(clip.path.resolve(), "")
            out.append(f"{column}={group}" if group else f"clip={clip.path}")
        return out
    where = "; ".join(looked) if looked else f"no labels file and no manifest.csv in {root}"
    fix = ("prepare the folder with `data prepare` (its manifest records each clip's source "
           "video)" if by.lower() == "source" else
           f"add a {by!r} column to the labels file (its first line naming the columns), or "
           f"cut the clips with `data prepare --segments CSV --keep-column {by}`")
    raise DataError(f"data.split_by={by!r}: no such column in {where}; {fix}, or set "
                    "data.split_by='' to split clip by clip")


class ClipDataset:
    """Cached training clips of one split; item i is (uint8 (F, S, S, 3), caption).

    Construction scans the folder and decodes anything not yet cached (with a progress bar), so
    every bad file is found and reported before the first step, never in the middle of an epoch.
    """

    def __init__(self, config: DataConfig, split: str = "train", progress: bool = True):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, not {split!r}")
        self.config = config
        self.report = DataReport()
        found = find_clips(config, self.report)
        usable = prepare_cache(found, config, self.report, progress=progress)
        if config.strict and (self.report.skipped or self.report.repaired):
            path, why = (self.report.skipped or self.report.repaired)[0]
            raise DataError(f"{path}: {why} (strict mode; drop --strict to skip or repair such "
                            "files with a warning)")
        for path, why in self.report.skipped:
            log.warning("skipping %s: %s", path, why)
        for path, why in self.report.repaired:
            log.info("repaired %s: %s", path, why)
        self.report.kept = len(usable)
        if not usable:
            raise DataError(f"{config.data_dir}: no usable clips ({self.report.summary()}); "
                            "a clip is a .gif/.mp4 with a same-named .txt caption")
        # what the split kept apart, for the trainer's first line ("" without data.split_by)
        self.split_note = ""
        if split == "all":
            chosen = range(len(usable))
        else:
            kept = [c for c, _ in usable]
            groups = clip_groups(kept, config)
            train, val = split_indices(kept, Path(config.data_dir), config.val_fraction,
                                       config.seed, groups)
            chosen = train if split == "train" else val
            if groups is not None:
                self.split_note = (f" ({len(val)} held out for validation by "
                                   f"{config.split_by}: {len({groups[i] for i in val})} of "
                                   f"{len(set(groups))} groups)")
        self.clips = [usable[i][0] for i in chosen]
        self._arrays = [usable[i][1] for i in chosen]
        if self.report.skipped:
            log.warning("%s: %s", config.data_dir, self.report.summary())

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        """The cached uint8 clip, memory-mapped (no decode, no copy until used), and its caption."""
        return np.load(self._arrays[index], mmap_mode="r"), self.clips[index].caption

    @property
    def captions(self) -> list[str]:
        return [c.caption for c in self.clips]

    @property
    def arrays(self) -> list[Path]:
        """The cached `.npy` behind each item (uint8 pixels, unless `serve_arrays` changed it)."""
        return list(self._arrays)

    def serve_arrays(self, paths: Sequence[Path]) -> None:
        """Serve other cached arrays for the same clips, in the same order: latent mode's
        float16 latents (F, h, w, C) instead of uint8 pixels (see `shared.data.latents`)."""
        if len(paths) != len(self._arrays):
            raise ValueError(f"{len(paths)} arrays for {len(self._arrays)} clips")
        self._arrays = list(paths)


# ---------------------------------------------------------------- batches


@dataclass
class Batch:
    # uint8 (B, F, S, S, 3), the model's [-1, 1] being the device's first op; in latent mode
    # float16 latents (B, F, h, w, C), used as they are
    video: np.ndarray
    captions: list[str]
    indices: np.ndarray  # int64 (B,), positions in the dataset


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The same permutation on every rank for a given (seed, epoch): ranks then take strides."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


class BatchIterator:
    """Batches of a ClipDataset, assembled by a background thread `prefetch` batches ahead.

    Batches stay uint8: a quarter of the bytes to copy and to send to an accelerator, where
    mapping to [-1, 1] (`to_model_range`) is one cheap fused op instead of the loader's
    largest cost.

    `rank` / `world_size` shard each epoch's permutation by stride, so data-parallel ranks
    see disjoint clips from one shared seed. Iterating forever (`epochs=None`) suits step-based
    training; `start_batch` skips ahead so a resumed run continues the exact data stream.
    """

    def __init__(self, dataset: ClipDataset, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True, epochs: int | None = None,
                 prefetch: int = 4, rank: int = 0, world_size: int = 1, start_batch: int = 0):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epochs, self.prefetch = epochs, max(1, prefetch)
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        if self.batches_per_epoch() == 0:
            raise DataError(f"{len(dataset)} clips make no full batch of {batch_size} "
                            f"on {world_size} rank(s); lower the batch size or add clips")

    def batches_per_epoch(self) -> int:
        per_rank = len(range(self.rank, len(self.dataset), self.world_size))
        full, rest = divmod(per_rank, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def index_batches(self) -> Iterator[np.ndarray]:
        """The dataset indices of each batch, in order; no data is touched."""
        per_epoch = self.batches_per_epoch()
        epoch, skip = divmod(self.start_batch, per_epoch)
        while self.epochs is None or epoch < self.epochs:
            order = epoch_order(len(self.dataset), self.seed, epoch, self.shuffle)
            mine = order[self.rank::self.world_size]
            for b in range(skip, per_epoch):
                yield mine[b * self.batch_size:(b + 1) * self.batch_size]
            skip = 0
            epoch += 1

    def _make(self, indices: np.ndarray) -> Batch:
        video = np.stack([self.dataset[int(i)][0] for i in indices])
        return Batch(video, [self.dataset.clips[int(i)].caption for i in indices],
                     np.asarray(indices, dtype=np.int64))

    def __iter__(self) -> Iterator[Batch]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for indices in self.index_batches():
                    if not put(self._make(indices)):
                        return
                put(done)
            except BaseException as e:  # surfaced in the consumer, never lost in the thread
                put(e)

        worker = threading.Thread(target=produce, name="t2s-batches", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join(timeout=5)
