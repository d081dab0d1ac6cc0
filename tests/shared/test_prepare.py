"""`prepare_corpus` on a small How2Sign-shaped corpus of real videos the tests write themselves.

Every source frame says where it came from: frame k of a video is a bar filled from the left
over 2 (k + 1) of the picture's 96 columns, in a colour that names the video. Reading the bar
back from a prepared (resized, letterboxed, GIF-quantised) frame tells which video and which
source frame it shows, so the tests can check that each clip was cut from the right time range.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

import shared.data.prepare as prepare
from shared.config import DataConfig
from shared.data.clips import DataError
from shared.data.dataset import BatchIterator, ClipDataset
from shared.data.prepare import PrepareConfig, parse_columns, prepare_corpus
from shared.data.prepare_cut import fit_frames
from shared.data.prepare_plan import (
    BAD_TIME,
    DUPLICATE_NAME,
    EMPTY_CAPTION,
    END_BEFORE_START,
    MISSING_VIDEO,
    PAST_END,
    UNDECODABLE,
    caption_from_name,
    parse_time,
)
from shared.data.video import read_video, write_video

H, W, FPS = 64, 96, 10
FILLS = {0: (240, 240, 40), 1: (240, 240, 220), 2: (240, 240, 130)}
FRAMES = 8
CONFIG = PrepareConfig(num_frames=FRAMES, progress=False)

HEADER = ["VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED",
          "END_REALIGNED", "SENTENCE"]
# VIDEO_NAME -> (file, video id, frames); vid_c lives in a subfolder and is a .mov.
VIDEOS = {"vid_a": ("vid_a.mp4", 0, 40), "vid_b": ("vid_b.mp4", 1, 30),
          "vid_c": ("sub/vid_c.mov", 2, 30)}
GOOD = [  # (VIDEO_NAME, SENTENCE_NAME, start, end, SENTENCE) -> lines 2..6
    ("vid_a", "vid_a_0", 0.5, 2.5, "Hello, how are you?"),
    ("vid_a", "vid_a_1", 2.0, 3.8, "I am fine"),
    ("vid_b", "vid_b_0", 0.0, 1.5, "thank you"),
    ("vid_b", "vid_b_3", 2.0, 3.05, "ends within a frame of the end"),
    ("vid_c", "vid_c_0", 1.0, 2.9, "see you tomorrow"),
]
BAD = [  # (line, row, reason) -> lines 7..13
    (7, ("nowhere", "nowhere_0", "0.5", "2.0", "no such video"), MISSING_VIDEO),
    (8, ("vid_a", "vid_a_2", "3.0", "2.0", "backwards"), END_BEFORE_START),
    (9, ("vid_b", "vid_b_1", "2.0", "5.0", "past the end"), PAST_END),
    (10, ("vid_a", "vid_a_3", "1.0", "2.0", "   "), EMPTY_CAPTION),
    (11, ("broken", "broken_0", "0.0", "1.0", "never decodes"), UNDECODABLE),
    (12, ("vid_b", "vid_b_2", "soon", "2.0", "bad start"), BAD_TIME),
    (13, ("vid_a", "vid_a_0", "0.0", "1.0", "same name as line 2"), DUPLICATE_NAME),
]


def coded_video(n: int, video_id: int, h: int = H, w: int = W) -> np.ndarray:
    frames = np.full((n, h, w, 3), 50, np.uint8)
    for k in range(n):
        frames[k, :, : 2 * (k + 1)] = FILLS[video_id]
    return frames


def write_av(path: Path, frames: np.ndarray, fps: int = FPS, gop: int = 5) -> Path:
    """An H.264 file with a keyframe every `gop` frames, so cutting has to seek for real."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def read_code(frame: np.ndarray, source_width: int = W) -> tuple[int, int]:
    """(video id, source frame index) of a prepared frame, from its middle row: the bar's share
    of the picture (black letterbox columns excluded) and the bar's colour."""
    row = frame[frame.shape[0] // 2].astype(int)
    picture = row.max(axis=1) > 20
    bar = row.mean(axis=1) > 120
    k = round(bar.sum() / picture.sum() * source_width / 2 - 1)
    blue = row[bar, 2].mean()
    video_id = min(FILLS, key=lambda v: abs(FILLS[v][2] - blue))
    return video_id, k


def write_segments(path: Path, rows: list[tuple], delimiter: str = "\t") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        writer.writerow(HEADER)
        for i, (video, name, start, end, text) in enumerate(rows):
            writer.writerow([f"v{i}", video, f"s{i}", name, start, end, text])
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("how2sign")
    videos = root / "raw_videos"
    for name, video_id, n in VIDEOS.values():
        write_av(videos / name, coded_video(n, video_id))
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing else" * 20)
    # How2Sign's release is tab-separated despite the .csv name.
    segments = write_segments(root / "how2sign_realigned_train.csv",
                              [*GOOD, *(row for _, row, _ in BAD)])
    return videos, segments


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    videos, segments = corpus
    out = tmp_path_factory.mktemp("prepared") / "out"
    return out, prepare_corpus(videos, out, segments, CONFIG)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ clips, captions, manifest


def test_each_segment_is_cut_from_its_own_video_and_time_range(prepared):
    out, summary = prepared
    assert summary.total == summary.written == len(GOOD)
    for video, name, start, end, text in GOOD:
        frames, _ = read_video(out / f"{name}.gif")
        assert frames.shape == (FRAMES, 180, 320, 3)
        codes = [read_code(f) for f in frames]
        _, video_id, length = VIDEOS[video]
        assert {v for v, _ in codes} == {video_id}, name
        ks = [k for _, k in codes]
        first, last = round(start * FPS), min(round(end * FPS), length) - 1
        assert ks == sorted(ks) and first <= ks[0] <= first + 2 and last - 2 <= ks[-1] <= last, \
            (name, ks)
        assert (out / f"{name}.txt").read_text(encoding="utf-8") == text + "\n"


def test_letterbox_keeps_the_whole_picture_centred(prepared):
    out, _ = prepared
    frame = read_video(out / "vid_a_0.gif")[0][0]
    # 64 x 96 scaled to a height of 180 is 270 wide: 25 black columns on each side.
    assert frame[:, :24].max() < 10 and frame[:, -24:].max() < 10
    assert frame[:, 26:-26].min(axis=2).min() > 30


def test_manifest_lists_every_clip_with_a_matching_checksum(prepared, corpus):
    out, _ = prepared
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_output = {r["output"]: r for r in rows}
    assert sorted(by_output) == sorted(f"{g[1]}.gif" for g in GOOD)
    for line, (video, name, start, end, text) in enumerate(GOOD, start=2):
        row = by_output[f"{name}.gif"]
        assert hashlib.sha256((out / row["output"]).read_bytes()).hexdigest() == row["sha256"]
        assert Path(row["source"]).stem == video and row["caption"] == text
        assert (float(row["start"]), float(row["end"])) == (start, end)
        assert int(row["line"]) == line and int(row["frames"]) == FRAMES
    assert row["source"] == "sub/vid_c.mov"  # relative to the source folder, not absolute


def test_bad_rows_are_reported_by_line_and_reason(prepared):
    out, summary = prepared
    assert [(b.line, b.reason) for b in summary.bad] == [(line, why) for line, _, why in BAD]
    assert all("how2sign_realigned_train.csv line" in b.where for b in summary.bad)
    assert summary.counts() == {why: 1 for _, _, why in BAD}
    with (out / "rejected.csv").open(newline="", encoding="utf-8") as f:
        rejected = list(csv.DictReader(f))
    assert [(int(r["line"]), r["reason"]) for r in rejected] == [(b.line, b.reason)
                                                                 for b in summary.bad]
    assert not (out / "nowhere_0.gif").exists() and not (out / "vid_b_1.gif").exists()
    assert "7 bad rows skipped" in summary.format()


def test_strict_stops_at_the_first_bad_row_naming_file_and_line(corpus, tmp_path):
    videos, segments = corpus
    strict = PrepareConfig(num_frames=FRAMES, strict=True, progress=False)
    with pytest.raises(DataError, match=r"how2sign_realigned_train.csv line 7: missing video"):
        prepare_corpus(videos, tmp_path / "out", segments, strict)
    assert not (tmp_path / "out").exists()  # stopped before any work
    # A bad row found only by decoding (past the end) stops the run too.
    only_decode_bad = write_segments(tmp_path / "s.tsv", [GOOD[0], BAD[2][1]])
    with pytest.raises(DataError, match=r"line 3: past video end"):
        prepare_corpus(videos, tmp_path / "out2", only_decode_bad, strict)


# ------------------------------------------------------------------ resume and determinism


def test_second_run_redoes_nothing(prepared, corpus, tmp_path):
    videos, segments = corpus
    out = tmp_path / "out"
    shutil.copytree(prepared[0], out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix != ".csv"}
    summary = prepare_corpus(videos, out, segments, CONFIG)
    assert (summary.written, summary.reused, summary.total) == (0, len(GOOD), len(GOOD))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix != ".csv"} == before
    assert files_of(out) == files_of(prepared[0])


CRASH_ON_THIRD_CLIP = """
import os, sys
import shared.data.prepare as prepare
real_cut, calls = prepare.cut_segment, []
def cut(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os._exit(3)  # a hard crash: no finally, no cleanup
    return real_cut(*args, **kwargs)
prepare.cut_segment = cut
prepare.prepare_corpus(sys.argv[1], sys.argv[2], sys.argv[3],
                       prepare.PrepareConfig(num_frames=int(sys.argv[4]), progress=False))
"""


@pytest.mark.parametrize("how", ["ctrl-c", "crash"])
def test_interrupted_run_finishes_the_rest(how, prepared, corpus, tmp_path, monkeypatch):
    videos, segments = corpus
    out = tmp_path / "out"
    if how == "crash":
        result = subprocess.run([sys.executable, "-c", CRASH_ON_THIRD_CLIP, str(videos),
                                 str(out), str(segments), str(FRAMES)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 3, result.stderr
    else:
        real_cut, calls = prepare.cut_segment, []

        def cut_then_interrupt(*args, **kwargs):
            calls.append(args[0])
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real_cut(*args, **kwargs)

        monkeypatch.setattr(prepare, "cut_segment", cut_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            prepare_corpus(videos, out, segments, CONFIG)
        monkeypatch.undo()
    with (out / "manifest.csv").open("a", encoding="utf-8") as f:
        f.write("vid_a.mp4,0.500,2.5")  # a row torn by a crash mid-write
    summary = prepare_corpus(videos, out, segments, CONFIG)
    assert (summary.reused, summary.written) == (2, len(GOOD) - 2)
    assert files_of(out) == files_of(prepared[0])


def test_a_changed_output_file_is_redone(prepared, corpus, tmp_path):
    videos, segments = corpus
    out = tmp_path / "out"
    shutil.copytree(prepared[0], out)
    (out / "vid_b_0.gif").write_bytes(b"GIF89a damaged")
    (out / "vid_a_1.txt").unlink()
    summary = prepare_corpus(videos, out, segments, CONFIG)
    assert (summary.written, summary.reused) == (2, len(GOOD) - 2)
    assert files_of(out) == files_of(prepared[0])


def test_other_settings_redo_every_clip(prepared, corpus, tmp_path):
    videos, segments = corpus
    out = tmp_path / "out"
    shutil.copytree(prepared[0], out)
    summary = prepare_corpus(videos, out, segments,
                             PrepareConfig(num_frames=FRAMES, fit="crop", progress=False))
    assert summary.written == len(GOOD)
    frame = read_video(out / "vid_a_0.gif")[0][0]
    assert frame[:, :24].max() > 30  # cropped: no letterbox columns any more


def test_output_is_byte_identical_across_runs_and_worker_counts(prepared, corpus, tmp_path):
    videos, segments = corpus
    config = PrepareConfig(num_frames=FRAMES, workers=2, progress=False)
    summary = prepare_corpus(videos, tmp_path / "out", segments, config)
    assert summary.written == len(GOOD)
    assert files_of(tmp_path / "out") == files_of(prepared[0])


# ------------------------------------------------------------------ other layouts


def test_column_mapping_keep_fps_mp4_and_jsonl_manifest(corpus, tmp_path):
    videos, _ = corpus
    segments = tmp_path / "glosses.csv"
    segments.write_text("clip_file,t0,t1,gloss\nvid_a.mp4,1.0,2.0,HELLO\n"
                        "vid_b,0:00:00.5,0:01.5,THANK-YOU\n", encoding="utf-8")
    config = PrepareConfig(keep_fps=True, fmt="mp4", manifest="jsonl", progress=False,
                           columns=parse_columns("video=clip_file,start=t0,end=t1,text=gloss"))
    summary = prepare_corpus(videos, tmp_path / "out", segments, config)
    assert summary.written == 2 and not summary.bad
    rows = [json.loads(line) for line in
            (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted((r["caption"], r["start"], r["end"]) for r in rows) == [
        ("HELLO", 1.0, 2.0), ("THANK-YOU", 0.5, 1.5)]
    for row in rows:
        path = tmp_path / "out" / row["output"]
        assert path.suffix == ".mp4"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
        frames, fps = read_video(path)
        # Every source frame of the segment, once, in order, at the source rate.
        first = round(row["start"] * FPS)
        assert [read_code(f)[1] for f in frames] == list(range(first, round(row["end"] * FPS)))
        assert fps == FPS


def test_unknown_or_missing_columns_are_clear_errors(corpus, tmp_path):
    videos, _ = corpus
    segments = tmp_path / "s.csv"
    segments.write_text("clip,words\nvid_a,HELLO\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s.csv: no video column.*--columns video="):
        prepare_corpus(videos, tmp_path / "out", segments, CONFIG)
    mapped = PrepareConfig(columns={"video": "clip", "text": "gloss"}, progress=False)
    with pytest.raises(DataError, match=r"no column 'gloss'.*clip, words.*fix --columns"):
        prepare_corpus(videos, tmp_path / "out", segments, mapped)
    with pytest.raises(DataError, match="KEY=COLUMN"):
        parse_columns("video=clip,colour=red")


def test_a_csv_without_times_makes_whole_clips(corpus, tmp_path):
    videos, _ = corpus
    segments = tmp_path / "labels.csv"
    segments.write_text("file,text\nvid_b.mp4,whole clip\n", encoding="utf-8")
    summary = prepare_corpus(videos, tmp_path / "out", segments, CONFIG)
    (row,) = [r for r in csv.DictReader((tmp_path / "out" / "manifest.csv").open())]
    assert summary.written == 1 and (float(row["start"]), float(row["end"])) == (0.0, 3.0)
    ks = [read_code(f)[1] for f in read_video(tmp_path / "out" / row["output"])[0]]
    assert ks[0] <= 2 and ks[-1] >= 27


def test_folder_of_word_clips_with_captions_in_names_and_sidecars(tmp_path):
    words = tmp_path / "words"
    write_video(words / "hello_01.mp4", coded_video(12, 0), fps=FPS)
    write_video(words / "hello_02.gif", coded_video(10, 1), fps=FPS)
    write_video(words / "thank-you.mp4", coded_video(14, 2), fps=FPS)
    write_video(words / "x123.gif", coded_video(6, 0), fps=FPS)
    (words / "x123.txt").write_text("  good\nmorning \n", encoding="utf-8")
    write_video(words / "please" / "001.mp4", coded_video(9, 1), fps=FPS)
    write_video(words / "0042.mp4", coded_video(9, 1), fps=FPS)
    summary = prepare_corpus(words, tmp_path / "out", None, CONFIG)
    out = tmp_path / "out"
    captions = {p.stem: p.read_text(encoding="utf-8").strip() for p in out.glob("*.txt")}
    assert captions == {"hello_01": "hello", "hello_02": "hello", "thank-you": "thank you",
                        "x123": "good morning", "please__001": "please"}
    assert [(b.where, b.reason) for b in summary.bad] == [("0042.mp4", EMPTY_CAPTION)]
    # A whole clip: the frames run from its start to its end.
    ks = [read_code(f)[1] for f in read_video(out / "thank-you.gif")[0]]
    assert len(ks) == FRAMES and ks[0] <= 1 and ks[-1] >= 12 and ks == sorted(ks)
    # The output folder inside the source folder is not read as more clips.
    again = prepare_corpus(words, words / "prepared", None, CONFIG)
    assert again.written == 5


def test_prepared_folder_feeds_the_training_loader(prepared):
    out, _ = prepared
    config = DataConfig(data_dir=str(out), num_frames=4, image_size=16, val_fraction=0.0)
    dataset = ClipDataset(config, split="all", progress=False)
    assert dataset.report.skipped == [] and len(dataset) == len(GOOD)
    assert sorted(dataset.captions) == sorted(g[4] for g in GOOD)
    batch = next(iter(BatchIterator(dataset, batch_size=2, seed=0)))
    assert batch.video.shape == (2, 4, 16, 16, 3) and batch.video.dtype == np.uint8
    shutil.rmtree(out / ".t2s_cache")  # leave the shared fixture as it was


# ------------------------------------------------------------------ small pieces


def test_fit_modes():
    frame = np.zeros((1, 100, 100, 3), np.uint8)
    frame[:, :20] = (255, 0, 0)  # red top band
    frame[:, 20:80] = (0, 255, 0)
    frame[:, 80:] = (0, 0, 255)  # blue bottom band
    letterbox = fit_frames(frame, 180, 320, "letterbox")
    # 100 x 100 fits as 180 x 180: (320 - 180) / 2 = 70 black columns each side.
    assert letterbox[0, :, :69].max() == 0 and letterbox[0, :, -69:].max() == 0
    assert letterbox[0, 5, 160, 0] > 200 and letterbox[0, -5, 160, 2] > 200
    crop = fit_frames(frame, 180, 320, "crop")
    # 320 x 320 cut to the middle 180 rows: the 64-row bands at top and bottom are gone.
    assert crop.shape == (1, 180, 320, 3) and crop[..., 0].max() < 10 and crop[..., 2].max() < 10
    stretch = fit_frames(frame, 180, 320, "stretch")
    assert stretch[0, 5, 5, 0] > 200 and stretch[0, -5, -5, 2] > 200 and stretch.min(
        axis=3).max() < 10 and stretch.max(axis=3).min() > 200


def test_times_and_captions_from_names():
    assert parse_time("12.5") == 12.5 and parse_time("1:02.5") == 62.5
    assert parse_time("1:00:01") == 3601.0
    for bad in ("", "abc", "-1", "1::2", "nan"):
        with pytest.raises(ValueError):
            parse_time(bad)
    assert caption_from_name(Path("thank_you_02.mp4")) == "thank you"
    assert caption_from_name(Path("HELLO (2).mp4")) == "HELLO"
    assert caption_from_name(Path("signs/please/0001.mp4")) == "please"
    assert caption_from_name(Path("0001.mp4")) == ""
