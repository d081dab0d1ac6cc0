"""shared.evaluation.refeval: generated clips scored against real reference files (MP4 at 320 x 180,
another frame count and rate), paired by caption, beside the shuffled-caption baseline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason='pose metrics need ".[pose]"')
pytest.importorskip("skimage", reason='the person clips need ".[pose]"')

from benchmarks import personclips as pc  # noqa: E402
from shared.data.clips import DataError  # noqa: E402
from shared.data.preprocess import preprocess_clip  # noqa: E402
from shared.data.video import read_video, write_video  # noqa: E402
from shared.evaluation.metrics import psnr  # noqa: E402
from shared.evaluation.refeval import (  # noqa: E402
    RefEvalConfig,
    caption_key,
    clip_duration,
    evaluate_against_reference,
)

GEN_FRAMES = 12


def write_clip(folder: Path, name: str, frames: np.ndarray, caption: str, fps: float) -> Path:
    path = write_video(folder / name, frames, fps)
    path.with_suffix(".txt").write_text(caption + "\n")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """References: two signers of "sway", one of "bow" (wide MP4s, 20 frames at 25 fps).
    Generated: one GIF per caption at 12 x 128^2, plus a caption with no reference."""
    root = tmp_path_factory.mktemp("refeval")
    ref, gen = root / "ref", root / "gen"
    wide = {"height": 180, "width": 320}
    write_clip(ref, "sway_a.mp4", pc.render(pc.uniform(20), pc.sway, **wide), "Sway", 25)
    write_clip(ref, "sway_b.mp4", pc.render(pc.eased(20), pc.sway, **wide), "sway ", 25)
    write_clip(ref, "bow_a.mp4", pc.render(pc.uniform(20), pc.bow, **wide), "bow", 25)
    write_clip(gen, "000_sway.gif", pc.render(pc.uniform(GEN_FRAMES), pc.sway), "sway", 10)
    write_clip(gen, "001_bow.gif", pc.render(pc.uniform(GEN_FRAMES), pc.bow), "bow", 10)
    write_clip(gen, "002_hello.gif", pc.render(np.zeros(GEN_FRAMES)), "hello", 10)
    return gen, ref


@pytest.fixture(scope="module")
def result(folders):
    gen, ref = folders
    return evaluate_against_reference(gen, ref, RefEvalConfig(progress=False))


def test_each_clip_meets_the_references_of_its_caption(result, folders):
    gen, ref = folders
    by_caption = {c.caption: c for c in result.clips}
    assert set(by_caption) == {"sway", "bow"}
    assert result.unmatched == [str(gen / "002_hello.gif")]
    assert sorted(Path(p).name for p in by_caption["sway"].references) == ["sway_a.mp4",
                                                                          "sway_b.mp4"]
    assert [Path(p).name for p in by_caption["bow"].references] == ["bow_a.mp4"]
    # the baseline draws the same number of references, all of other captions
    for clip in result.clips:
        assert len(clip.shuffled_references) == min(len(clip.references), 3 - len(clip.references))
        assert all(caption_key(clip.caption) not in Path(p).stem
                   for p in clip.shuffled_references)


def test_paired_scores_beat_the_shuffled_baseline(result):
    for clip in result.clips:
        p, s = clip.paired, clip.shuffled
        assert p["dtw_mje"] < s["dtw_mje"], clip.caption
        assert p["psnr"] > s["psnr"] and p["ssim"] > s["ssim"], clip.caption
        assert clip.body_frames == 1.0
    totals = result.totals()
    assert totals["dtw_mje"]["paired"] < totals["dtw_mje"]["shuffled"]
    assert totals["dtw_mje"]["paired_n"] == 2


def test_pixel_scores_use_the_training_transform_of_the_reference(result, folders):
    gen, ref = folders
    bow = next(c for c in result.clips if c.caption == "bow")
    generated = read_video(gen / "001_bow.gif")[0]
    expected = preprocess_clip(read_video(ref / "bow_a.mp4")[0], GEN_FRAMES, 128)
    assert bow.paired["psnr"] == pytest.approx(psnr(generated, expected))


def test_durations_come_from_each_clip_timing(result, folders):
    gen, ref = folders
    assert clip_duration(ref / "bow_a.mp4") == pytest.approx(20 / 25, abs=0.05)
    assert clip_duration(gen / "001_bow.gif") == pytest.approx(GEN_FRAMES / 10)
    bow = next(c for c in result.clips if c.caption == "bow")
    assert bow.paired["duration_ratio"] == pytest.approx((GEN_FRAMES / 10) / 0.8, rel=0.07)


def test_a_clip_scored_against_itself(tmp_path, folders):
    _, ref = folders
    gen = tmp_path / "gen"
    gen.mkdir()
    shutil.copy(ref / "bow_a.mp4", gen / "bow_a.mp4")
    shutil.copy(ref / "bow_a.txt", gen / "bow_a.txt")
    own = tmp_path / "ref"
    shutil.copytree(gen, own)
    # the generated clip must be square: crop the copy as the training transform would
    frames = preprocess_clip(read_video(gen / "bow_a.mp4")[0], 20, 128)
    (gen / "bow_a.mp4").unlink()
    write_video(gen / "bow_a.gif", frames, 25)
    (own / "bow_a.mp4").unlink()
    write_video(own / "bow_a.gif", frames, 25)
    result = evaluate_against_reference(
        gen, own, RefEvalConfig(progress=False, pose_cache_dir=str(tmp_path / "poses")))
    clip = result.clips[0]
    assert clip.paired["psnr"] == float("inf")
    assert clip.paired["ssim"] == pytest.approx(1.0)
    assert clip.paired["dtw_mje"] == 0.0
    assert clip.paired["hand_travel_ratio"] == pytest.approx(1.0)
    assert clip.shuffled["dtw_mje"] is None  # one caption: no baseline to draw
    data = result.to_dict()
    json.dumps(data, allow_nan=False)  # strict JSON: inf written as a string
    assert data["clips"][0]["paired"]["psnr"] == "inf"
    # one cache for both folders: the same pixels ran through the keypoint model once
    assert result.pose_cache == {"hits": 1, "misses": 1}


def test_no_shared_caption_is_refused_with_the_fix(tmp_path, folders):
    _, ref = folders
    write_clip(tmp_path, "a.gif", pc.render(np.zeros(4)), "goodbye", 10)
    with pytest.raises(DataError, match="no generated caption.*has a reference clip"):
        evaluate_against_reference(tmp_path, ref, RefEvalConfig(progress=False))


def test_non_square_generated_clips_are_refused(tmp_path, folders):
    _, ref = folders
    write_clip(tmp_path, "a.gif", pc.render(np.zeros(4), height=64, width=96), "bow", 10)
    with pytest.raises(DataError, match="a.gif.*not square"):
        evaluate_against_reference(tmp_path, ref, RefEvalConfig(progress=False))


def test_without_pose_the_pixel_metrics_still_come(folders):
    gen, ref = folders
    result = evaluate_against_reference(gen, ref, RefEvalConfig(pose=False, progress=False))
    assert all(c.paired["dtw_mje"] is None and c.paired["psnr"] > 0 for c in result.clips)
    assert "not computed" in result.to_dict()["protocol"]["pose"]
    assert "FVD: not computed" in result.format()
