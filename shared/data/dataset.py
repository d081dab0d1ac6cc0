"""Training clips served fast: one split's cached clips, and batches of them.

`ClipDataset` finds a folder's clips (`shared.data.clips`), decodes anything not yet cached
(`shared.data.decode_cache`) and keeps one split of them (`shared.data.splits`), so every bad
file is found and reported before the first step. `BatchIterator` assembles batches on a
background thread, sharded across data-parallel ranks and resumable at any batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.config import DataConfig
from shared.data.clips import DataError, DataReport, find_clips
from shared.data.decode_cache import prepare_cache
from shared.data.splits import clip_groups, split_indices

log = logging.getLogger("text2sign.data")


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
