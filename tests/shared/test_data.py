"""The dataset on real GIF / MP4 files, good and bad, written by the tests themselves."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.config import DataConfig
from shared.data.clips import DataError
from shared.data.dataset import BatchIterator, ClipDataset
from shared.data.decode_cache import cache_root
from shared.data.preprocess import center_crop_square, resample_frames, to_model_range
from shared.data.splits import split_indices
from shared.data.video import write_video


def _clip(seed: int, frames: int = 6, h: int = 18, w: int = 32) -> np.ndarray:
    """A clip whose frames are distinguishable: frame k is a flat colour with a bar at column k."""
    rng = np.random.default_rng(seed)
    video = np.empty((frames, h, w, 3), np.uint8)
    video[:] = rng.integers(40, 200, size=3, dtype=np.uint8)
    for k in range(frames):
        video[k, :, (k * 3) % w] = 255
    return video


def _write(folder: Path, name: str, video: np.ndarray, caption: str | None) -> Path:
    path = write_video(folder / name, video, fps=8)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def _config(folder: Path, **kw) -> DataConfig:
    base = dict(data_dir=str(folder), num_frames=4, image_size=8, val_fraction=0.0)
    return DataConfig(**{**base, **kw})


@pytest.fixture
def good_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(6):
        _write(folder, f"clip{i}.gif", _clip(i), f"word{i} sign")
    _write(folder, "movie.mp4", _clip(99, frames=10, h=20, w=36), "from an mp4")
    return folder


# ------------------------------------------------------------------ preprocessing


def test_resample_keeps_ends_and_pads_short_clips():
    frames = np.arange(10)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    long = resample_frames(frames, 4)
    assert [int(f[0, 0, 0]) for f in long] == [0, 3, 6, 9]
    short = resample_frames(frames[:3], 5)
    assert [int(f[0, 0, 0]) for f in short] == [0, 1, 2, 2, 2]


def test_center_crop_takes_the_middle_square():
    frame = np.zeros((1, 4, 10, 3), np.uint8)
    frame[0, :, 3:7] = 255  # the middle 4 columns of 10
    crop = center_crop_square(frame)
    assert crop.shape == (1, 4, 4, 3)
    assert crop.min() == 255


def test_model_range_endpoints():
    x = to_model_range(np.array([0, 255], np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [-1.0, 1.0])


# ------------------------------------------------------------------ loading and caching


def test_gif_and_mp4_load_with_captions(good_folder: Path):
    ds = ClipDataset(_config(good_folder), split="all", progress=False)
    assert len(ds) == 7
    video, caption = ds[ds.captions.index("from an mp4")]
    assert video.shape == (4, 8, 8, 3) and video.dtype == np.uint8
    assert caption == "from an mp4" and sorted(ds.captions)[0] == "from an mp4"
    assert ds.report.skipped == [] and ds.report.kept == 7


def test_cached_pixels_match_direct_preprocessing(good_folder: Path):
    ds = ClipDataset(_config(good_folder), split="all", progress=False)
    i = ds.captions.index("word2 sign")
    source = _clip(2)
    # frame choice 0, 2, 3, 5 of 6; centre 18x18 of 18x32; resize to 8: bar columns move.
    expected_frames = source[[0, 2, 3, 5]][:, :, 7:25]
    expected = np.stack([np.asarray(Image.fromarray(f).resize((8, 8), Image.Resampling.BICUBIC))
                         for f in expected_frames])
    got = ds[i][0]
    # GIF palettes can shift colours by a few levels; the structure must be the same.
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 6


def test_labels_file(tmp_path: Path):
    folder = tmp_path / "lab"
    folder.mkdir()
    _write(folder, "a.gif", _clip(1), None)
    _write(folder, "b.gif", _clip(2), None)
    (folder / "labels.csv").write_text('filename,text\na.gif,"hello, friend"\nb.gif,thanks\n'
                                       "missing.gif,ghost\n")
    ds = ClipDataset(_config(folder, labels_file="labels.csv"), split="all", progress=False)
    assert sorted(ds.captions) == ["hello, friend", "thanks"]
    assert [p.name for p, _ in ds.report.skipped] == ["missing.gif"]


def test_bad_clip_among_good_ones_is_named_in_one_warning(good_folder: Path, caplog):
    bad = good_folder / "broken.gif"
    bad.write_bytes(b"GIF89a this is not really a gif")
    bad.with_suffix(".txt").write_text("broken clip")
    with caplog.at_level(logging.WARNING, logger="text2sign.data"):
        ds = ClipDataset(_config(good_folder), split="all", progress=False)
    assert len(ds) == 7
    naming = [r for r in caplog.records if "broken.gif" in r.getMessage()]
    assert len(naming) == 1 and naming[0].levelno == logging.WARNING
    assert "1 skipped" in ds.report.summary()


def test_truncated_mp4_is_skipped(good_folder: Path, caplog):
    data = (good_folder / "movie.mp4").read_bytes()
    cut = good_folder / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    cut.with_suffix(".txt").write_text("cut short")
    with caplog.at_level(logging.WARNING, logger="text2sign.data"):
        ds = ClipDataset(_config(good_folder), split="all", progress=False)
    assert "cut short" not in ds.captions
    assert [p.name for p, _ in ds.report.skipped] == ["cut.mp4"]


def test_missing_and_empty_captions_are_skipped(good_folder: Path, caplog):
    _write(good_folder, "nocap.gif", _clip(7), None)
    _write(good_folder, "blank.gif", _clip(8), "  \n ")
    with caplog.at_level(logging.WARNING, logger="text2sign.data"):
        ds = ClipDataset(_config(good_folder), split="all", progress=False)
    assert len(ds) == 7
    reasons = {p.name: why for p, why in ds.report.skipped}
    assert "no caption" in reasons["nocap.gif"] and "nocap.txt" in reasons["nocap.gif"]
    assert "empty caption" in reasons["blank.gif"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "nocap.gif" in messages and "blank.gif" in messages


def test_repairable_clips_are_repaired(tmp_path: Path):
    folder = tmp_path / "odd"
    folder.mkdir()
    _write(folder, "single.gif", _clip(1, frames=1), "one frame")
    gray = Image.fromarray(np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (20, 1)), mode="L")
    gray.save(folder / "gray.gif")
    (folder / "gray.txt").write_text("gray")
    _write(folder, "tiny.gif", _clip(3, frames=5, h=5, w=7), "tiny odd size")
    ds = ClipDataset(_config(folder, image_size=8), split="all", progress=False)
    assert sorted(ds.captions) == ["gray", "one frame", "tiny odd size"]
    one = ds[ds.captions.index("one frame")][0]
    assert one.shape == (4, 8, 8, 3) and all(np.array_equal(one[0], f) for f in one)
    g = ds[ds.captions.index("gray")][0]
    assert g.shape == (4, 8, 8, 3)
    notes = {p.name: why for p, why in ds.report.repaired}
    assert "padded" in notes["single.gif"] and "grayscale" in notes["gray.gif"]
    assert "upscaled" in notes["tiny.gif"]


def test_strict_makes_bad_input_an_error(good_folder: Path):
    _write(good_folder, "nocap.gif", _clip(7), None)
    with pytest.raises(DataError, match="nocap.gif"):
        ClipDataset(_config(good_folder, strict=True), split="all", progress=False)


def test_empty_folder_error_says_what_a_clip_is(tmp_path: Path):
    with pytest.raises(DataError, match="same-named .txt"):
        ClipDataset(_config(tmp_path), progress=False)
    with pytest.raises(DataError, match="no such data folder"):
        ClipDataset(_config(tmp_path / "nope"), progress=False)


def test_cache_is_reused_and_invalidated(good_folder: Path):
    cfg = _config(good_folder)
    ClipDataset(cfg, split="all", progress=False)
    root = cache_root(cfg)
    entries = sorted(root.glob("*.npy"))
    assert len(entries) == 7
    stamps = {p.name: p.stat().st_mtime_ns for p in entries}
    first = ClipDataset(cfg, split="all", progress=False)
    before = first[first.captions.index("word0 sign")][0].mean()

    # nothing changed: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in root.glob("*.npy")} == stamps

    # A changed source gets a new entry and its old one is pruned.
    changed = good_folder / "clip0.gif"
    write_video(changed, 255 - _clip(0), fps=8)
    os.utime(changed, ns=(1, 1_000_000_000_123))
    ds = ClipDataset(cfg, split="all", progress=False)
    now = {p.name for p in root.glob("*.npy")}
    assert len(now) == 7 and len(now - set(stamps)) == 1
    inverted = ds[ds.captions.index("word0 sign")][0]
    assert abs(inverted.mean() - (255 - before)) < 8

    # Another data config is another cache folder.
    other = _config(good_folder, image_size=16)
    assert cache_root(other) != root
    assert ClipDataset(other, split="all", progress=False)[0][0].shape == (4, 16, 16, 3)


def test_split_is_deterministic_disjoint_and_seeded(good_folder: Path):
    cfg = _config(good_folder, val_fraction=0.3)
    train = ClipDataset(cfg, split="train", progress=False)
    val = ClipDataset(cfg, split="val", progress=False)
    assert len(val) == 2 and len(train) == 5
    assert set(train.captions).isdisjoint(val.captions)
    again = ClipDataset(cfg, split="val", progress=False)
    assert again.captions == val.captions
    clips = ClipDataset(cfg, split="all", progress=False).clips
    splits = {tuple(split_indices(clips, good_folder, 0.3, seed)[1]) for seed in range(8)}
    assert len(splits) > 1


# ------------------------------------------------------------------ batches


def test_batches_cover_each_epoch_once_and_shard_by_rank(good_folder: Path):
    ds = ClipDataset(_config(good_folder), split="all", progress=False)
    single = list(BatchIterator(ds, 2, seed=3, epochs=1, drop_last=False))
    assert [b.video.shape for b in single] == [(2, 4, 8, 8, 3)] * 3 + [(1, 4, 8, 8, 3)]
    assert single[0].video.dtype == np.uint8
    seen = np.concatenate([b.indices for b in single])
    assert sorted(seen) == list(range(7)) and list(seen) != list(range(7))
    b0 = single[0]
    np.testing.assert_array_equal(b0.video[0], ds[int(b0.indices[0])][0])
    assert b0.captions[0] == ds.captions[int(b0.indices[0])]

    shards = [np.concatenate([b.indices for b in BatchIterator(ds, 1, seed=3, epochs=1, rank=r,
                                                                world_size=2)])
              for r in range(2)]
    assert set(shards[0]).isdisjoint(shards[1])
    assert sorted(np.concatenate(shards)) == list(range(7))


def test_epochs_differ_and_resume_continues_the_stream(good_folder: Path):
    ds = ClipDataset(_config(good_folder), split="all", progress=False)
    stream = [b.indices for b in BatchIterator(ds, 3, seed=1, epochs=3)]
    assert len(stream) == 6
    assert not np.array_equal(np.concatenate(stream[:2]), np.concatenate(stream[2:4]))
    resumed = [b.indices for b in BatchIterator(ds, 3, seed=1, epochs=3, start_batch=3)]
    assert all(np.array_equal(a, b) for a, b in zip(resumed, stream[3:], strict=True))


def test_infinite_iterator_stops_cleanly_and_errors_surface(good_folder: Path):
    ds = ClipDataset(_config(good_folder), split="all", progress=False)
    for i, _ in enumerate(BatchIterator(ds, 2, prefetch=1)):
        if i == 10:
            break
    # A file that vanishes after caching surfaces in the consumer, not silently in the thread.
    for npy in cache_root(ds.config).glob("*.npy"):
        npy.unlink()
    with pytest.raises(FileNotFoundError):
        next(iter(BatchIterator(ds, 2)))
    with pytest.raises(DataError, match="no full batch"):
        BatchIterator(ds, 8)
