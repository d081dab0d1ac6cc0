"""`collect_stats` on folders whose every property the tests chose: a hand-made one (with
duplicates, a missing caption and a broken file), the toy set, and a prepared folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.data.prepare import PrepareConfig, prepare_corpus
from shared.data.stats import caption_words, collect_stats
from shared.data.toy import VOCABULARY, make_toy_dataset
from shared.data.video import write_video


def bar_clip(frames: int, h: int, w: int, seed: int) -> np.ndarray:
    """Frames that all differ (a GIF writer would merge identical neighbours)."""
    video = np.full((frames, h, w, 3), 30 + 20 * seed, np.uint8)
    for k in range(frames):
        video[k, :, k] = 255
    return video


def add(folder: Path, name: str, video: np.ndarray, caption: str | None, fps: int = 10) -> Path:
    path = write_video(folder / name, video, fps=fps)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "clips"
    a = add(root, "a.gif", bar_clip(6, 18, 32, 0), "Hello world!")
    add(root, "b.gif", bar_clip(10, 18, 32, 1), "hello there")
    add(root, "sub/c.mp4", bar_clip(12, 20, 36, 2), "Hello world!")
    shutil.copy(a, root / "d.gif")
    (root / "d.txt").write_text("good", encoding="utf-8")
    add(root, "e.gif", bar_clip(4, 18, 32, 3), None)  # no caption: training skips it
    (root / "f.gif").write_bytes(b"GIF89a broken")
    (root / "f.txt").write_text("broken", encoding="utf-8")
    return root


def test_counts_distributions_vocabulary_and_duplicates(folder: Path):
    stats = collect_stats(folder, progress=False)
    d = stats.to_dict()
    assert d["clips"] == 4
    assert sorted(s["path"] for s in d["skipped"]) == ["e.gif", "f.gif"]
    assert d["frames"]["min"] == 6 and d["frames"]["max"] == 12
    assert d["frame_counts"] == {"6": 2, "10": 1, "12": 1}
    assert d["duration_s"]["min"] == pytest.approx(0.6) and \
        d["duration_s"]["max"] == pytest.approx(1.2)
    assert d["resolution"] == {"32x18": 3, "36x20": 1}
    assert d["fps"] == {"10": 4}
    # hello x3, world x2, there x1, good x1 (case and punctuation do not make new words)
    assert d["vocabulary_size"] == 4 and d["words_seen_once"] == 2
    assert list(d["top_words"].items())[:2] == [("hello", 3), ("world", 2)]
    assert d["caption_words"]["min"] == 1 and d["caption_words"]["max"] == 2
    assert d["duplicate_captions"] == {"captions": 1, "clips": 2, "top": {"Hello world!": 2}}
    assert d["duplicate_files"] == [["a.gif", "d.gif"]]
    json.dumps(d)  # the --json output is plain JSON


def test_text_report_names_the_key_numbers(folder: Path):
    text = collect_stats(folder, progress=False).format()
    assert text.splitlines()[0].endswith("4 clips (2 skipped)")
    assert "skipped e.gif: no caption" in text
    assert "vocabulary  4 words, 2 seen only once" in text
    assert "32x18 x3, 36x20 x1" in text
    assert "a.gif = d.gif" in text


def test_labels_file_is_honoured(folder: Path):
    (folder / "labels.csv").write_text("filename,text\na.gif,one\nb.gif,two words\n")
    d = collect_stats(folder, labels_file="labels.csv", progress=False).to_dict()
    assert d["clips"] == 2 and d["vocabulary_size"] == 3


def test_toy_set(tmp_path: Path):
    written = make_toy_dataset(tmp_path / "toy", n=5, num_frames=8, height=36, width=64,
                               progress=False)
    d = collect_stats(tmp_path / "toy", progress=False).to_dict()
    words = {w for _, caption in written for w in caption_words(caption)}
    assert d["clips"] == 5 and not d["skipped"]
    assert d["frame_counts"] == {"8": 5} and d["resolution"] == {"64x36": 5}
    assert d["vocabulary_size"] == len(words) and words <= set(VOCABULARY)


def test_prepared_folder(folder: Path, tmp_path: Path):
    summary = prepare_corpus(folder, tmp_path / "prepared", None,
                             PrepareConfig(num_frames=5, progress=False))
    d = collect_stats(tmp_path / "prepared", progress=False).to_dict()
    assert d["clips"] == summary.total == 5  # e.gif is captioned "e" by its name here
    assert d["resolution"] == {"320x180": 5} and d["frame_counts"] == {"5": 5}
    assert d["duplicate_files"] == [["a.gif", "d.gif"]]  # same source, same bytes
