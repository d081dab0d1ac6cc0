"""data.split_by: whole source videos (or signers) on one side of the train / validation split.

A corpus of real MP4s the test writes (6 long videos by 3 signers, 4 segments each) is cut by
`prepare_corpus`, as `data prepare` does, and the training loader's splits are checked: with
split_by=source no video has segments on both sides, with a kept signer column no signer does.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from shared.config import DataConfig
from shared.data.clips import Clip, DataError
from shared.data.dataset import ClipDataset
from shared.data.prepare import PrepareConfig, prepare_corpus
from shared.data.splits import clip_groups, split_indices
from shared.data.video import write_video

FPS = 10
VIDEOS = {f"talk_{v}": f"signer_{v // 2}" for v in range(6)}  # 2 videos per signer
SEGMENTS = [(0.0, 0.9), (1.0, 1.9), (2.0, 2.9), (3.0, 3.9)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    for v, name in enumerate(VIDEOS):
        frames = np.full((40, 48, 64, 3), 40 * v, np.uint8)
        frames[:, :, : 8 * (v + 1)] = 220
        write_video(root / "videos" / f"{name}.mp4", frames, fps=FPS)
    segments = root / "segments.csv"
    with segments.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["VIDEO_NAME", "SIGNER_ID", "START", "END", "SENTENCE"])
        for name, signer in VIDEOS.items():
            for k, (start, end) in enumerate(SEGMENTS):
                writer.writerow([name, signer, start, end, f"sentence {k} of {name}"])
    return root / "videos", segments


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    videos, segments = corpus
    out = tmp_path_factory.mktemp("prepared") / "clips"
    config = PrepareConfig(num_frames=4, height=48, width=64, keep_columns=("signer_id",),
                           progress=False)
    summary = prepare_corpus(videos, out, segments, config)
    assert summary.written == len(VIDEOS) * len(SEGMENTS) and not summary.bad
    return out


def sources(dataset: ClipDataset) -> set[str]:
    return {c.path.stem.rsplit("_", 2)[0] for c in dataset.clips}  # talk_3_0001000_0001900


def data_config(folder: Path, **kw) -> DataConfig:
    return DataConfig(data_dir=str(folder), num_frames=4, image_size=16, **kw)


def test_the_manifest_keeps_the_named_column_as_the_file_spells_it(prepared):
    with (prepared / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-1] == "SIGNER_ID"
    assert {(r["source"], r["SIGNER_ID"]) for r in rows} == {
        (f"{name}.mp4", signer) for name, signer in VIDEOS.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_by_source_keeps_each_video_on_one_side(prepared, seed):
    config = data_config(prepared, val_fraction=0.2, split_by="source", seed=seed)
    train = ClipDataset(config, "train", progress=False)
    val = ClipDataset(config, "val", progress=False)
    assert len(train) + len(val) == 24
    assert not sources(train) & sources(val)
    # at least the asked share, in whole videos of 4 segments
    assert len(val) >= round(0.2 * 24) and len(val) % 4 == 0
    # clip by clip (the default), 5 of 24 segments cannot be whole videos: some video straddles
    plain = data_config(prepared, val_fraction=0.2, seed=seed)
    mixed = (sources(ClipDataset(plain, "train", progress=False))
             & sources(ClipDataset(plain, "val", progress=False)))
    assert mixed


def test_split_by_a_kept_signer_column_keeps_each_signer_on_one_side(prepared):
    config = data_config(prepared, val_fraction=0.1, split_by="signer_id")  # any case
    train = ClipDataset(config, "train", progress=False)
    val = ClipDataset(config, "val", progress=False)
    signer = {f"talk_{v}": f"signer_{v // 2}" for v in range(6)}
    train_signers = {signer[s] for s in sources(train)}
    val_signers = {signer[s] for s in sources(val)}
    assert len(val_signers) == 1 and not train_signers & val_signers
    assert len(val) == 8
    # what the trainers print after "training on cpu with 16 clips"
    assert train.split_note == " (8 held out for validation by signer_id: 1 of 3 groups)"
    assert ClipDataset(data_config(prepared), "train", progress=False).split_note == ""


def test_grouped_split_is_deterministic_and_leaves_training_a_group():
    clips = [Clip(Path(f"/d/{i}.gif"), "x") for i in range(10)]
    groups = [f"g{i % 3}" for i in range(10)]
    first = split_indices(clips, Path("/d"), 0.3, 5, groups)
    assert first == split_indices(clips, Path("/d"), 0.3, 5, groups)
    train, val = first
    assert sorted(train + val) == list(range(10)) and len(val) >= 3
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    # asking for almost everything still leaves one whole group to train on
    train, val = split_indices(clips, Path("/d"), 0.95, 5, groups)
    assert len({groups[i] for i in train}) == 1 and train
    # one group cannot be split: all of it trains
    assert split_indices(clips, Path("/d"), 0.3, 5, ["same"] * 10) == (list(range(10)), [])
    with pytest.raises(ValueError, match="9 group labels for 10 clips"):
        split_indices(clips, Path("/d"), 0.3, 5, groups[:9])


def write_word_clips(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        write_video(folder / f"{name}.gif", np.full((3, 20, 20, 3), 20 * i, np.uint8), fps=5)


def test_labels_file_with_a_signer_column(tmp_path):
    names = [f"w{i}" for i in range(8)]
    write_word_clips(tmp_path, names)
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["filename", "text", "signer"])
        for i, name in enumerate(names):
            writer.writerow([f"{name}.gif", f"hello, word {i}", f"s{i % 4}" if i < 7 else ""])
    config = data_config(tmp_path, labels_file="labels.csv", split_by="signer",
                         val_fraction=0.25)
    val = ClipDataset(config, "val", progress=False)
    train = ClipDataset(config, "train", progress=False)
    # the caption is the text column only, commas and all (not "hello, word 0,s0")
    assert sorted(train.captions + val.captions) == sorted(f"hello, word {i}" for i in range(8))
    groups = clip_groups(train.clips + val.clips, config)
    assert groups.count("signer=s0") == 2 and sum(g.startswith("clip=") for g in groups) == 1
    val_groups = set(clip_groups(val.clips, config))
    assert not val_groups & set(clip_groups(train.clips, config))


def test_missing_column_errors_name_the_file_and_the_fix(tmp_path, prepared):
    write_word_clips(tmp_path, ["a", "b", "c"])
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.txt").write_text(name)
    with pytest.raises(DataError, match=r"split_by='source'.*no labels file and no "
                                        r"manifest.csv in .*data prepare"):
        ClipDataset(data_config(tmp_path, split_by="source"), "train", progress=False)
    with pytest.raises(DataError, match=r"split_by='camera'.*manifest.csv \(columns: source, "
                                        r".*SIGNER_ID\).*--keep-column camera"):
        ClipDataset(data_config(prepared, split_by="camera"), "train", progress=False)
    assert clip_groups([], data_config(tmp_path)) is None


def test_prepare_keep_column_errors_and_a_rerun_only_rewrites_the_manifest(corpus, tmp_path):
    videos, segments = corpus
    base = PrepareConfig(num_frames=4, height=48, width=64, manifest="jsonl", progress=False)
    with pytest.raises(DataError, match=r"segments.csv: no column 'camera' to keep; its "
                                        r"columns are VIDEO_NAME, SIGNER_ID.*--keep-column"):
        prepare_corpus(videos, tmp_path / "a", segments,
                       PrepareConfig(keep_columns=("camera",), progress=False))
    with pytest.raises(DataError, match="already has this field"):
        PrepareConfig(keep_columns=("Source",)).validate()
    with pytest.raises(DataError, match="a folder of clips has no columns"):
        prepare_corpus(videos, tmp_path / "b", None,
                       PrepareConfig(keep_columns=("SIGNER_ID",), progress=False))
    out = tmp_path / "c"
    assert prepare_corpus(videos, out, segments, base).written == 24
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gif")}
    from dataclasses import replace

    again = prepare_corpus(videos, out, segments, replace(base, keep_columns=("signer_id",)))
    assert again.written == 0 and again.reused == 24
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("*.gif")}
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["SIGNER_ID"] for r in rows} == set(VIDEOS.values())
    groups = clip_groups(ClipDataset(data_config(out), "all", progress=False).clips,
                         data_config(out, split_by="SIGNER_ID"))
    assert sorted(set(groups)) == [f"SIGNER_ID=signer_{s}" for s in range(3)]


def test_data_prepare_keep_column_flag_on_the_command_line(corpus, tmp_path):
    from t2s_torch.cli import main as torch_main

    videos, segments = corpus
    result = CliRunner().invoke(torch_main, [
        "data", "prepare", str(videos), str(tmp_path / "out"), "--segments", str(segments),
        "--keep-column", "SIGNER_ID", "--frames", "4", "--height", "48", "--width", "64",
        "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    header = (tmp_path / "out" / "manifest.csv").read_text().splitlines()[0]
    assert header.endswith(",settings,SIGNER_ID")
