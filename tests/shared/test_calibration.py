"""shared.evaluation.calibration: the metrics' own reference scores, on real decoded clips made from
a bundled photo (benchmarks/personclips.py) — MediaPipe runs for real, nothing is mocked.

The rows must order the way a user will read them: a clip against itself is perfect, a delayed
copy is close under DTW-MJE, a mirrored copy or another motion is far; on a folder, another clip
of the same caption beats a clip of a different caption.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from shared.evaluation.calibration import (
    Row,
    delayed_copy,
    folder_rows,
    format_rows,
    row_of,
)

pytest.importorskip("mediapipe", reason='pose metrics need ".[pose]"')
pytest.importorskip("skimage", reason='the person clips need ".[pose]"')

from benchmarks import personclips as pc  # noqa: E402
from benchmarks.metric_reference import synthetic_rows  # noqa: E402
from shared.data.clips import DataError  # noqa: E402
from shared.data.video import write_video  # noqa: E402
from shared.evaluation.pose import PoseCache  # noqa: E402

FRAMES, SIZE = 14, 128


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> PoseCache:
    with PoseCache(tmp_path_factory.mktemp("pose")) as c:
        yield c


def by_name(rows: list[Row]) -> dict[str, Row]:
    return {r.name.split(" ")[0]: r for r in rows}


def test_delayed_copy_holds_the_first_frame_and_keeps_the_length():
    clip = np.arange(6)[:, None, None, None] * np.ones((6, 2, 2, 3), np.uint8)
    out = delayed_copy(clip, 2)
    assert out.shape == clip.shape
    assert list(out[:, 0, 0, 0]) == [0, 0, 0, 1, 2, 3]


@pytest.fixture(scope="module")
def synthetic(cache) -> dict[str, Row]:
    return by_name(synthetic_rows(cache, FRAMES, SIZE))


def test_a_clip_against_itself_is_perfect(synthetic):
    itself = synthetic["itself"]
    assert itself.pairs == 1
    assert math.isinf(itself.psnr) and itself.ssim == pytest.approx(1.0)
    assert itself.dtw_mje == 0.0


def test_retimed_copies_score_near_and_mirror_or_another_motion_far(synthetic):
    near = [synthetic["delayed"].dtw_mje, synthetic["slow-then-fast"].dtw_mje]
    far = [synthetic["mirrored"].dtw_mje, synthetic["another"].dtw_mje]
    assert None not in near + far
    assert max(near) < 0.15 < 0.25 < min(far), (near, far)
    # pixels do not see the time alignment: the delayed copy is no longer a perfect match
    assert synthetic["delayed"].psnr < 40 and synthetic["delayed"].ssim < 1.0


def test_format_rows_prints_every_row_and_na_without_a_body():
    rows = [Row("itself", 2, math.inf, 1.0, 0.0), Row("no body", 1, 12.5, 0.3, None)]
    text = format_rows(rows).splitlines()
    assert len(text) == 3 and "DTW-MJE" in text[0]
    assert text[1].split()[-3:] == ["inf", "1.000", "0.000"]
    assert text[2].endswith("n/a") and "12.50" in text[2]


def test_rows_carry_standard_errors_and_the_pairs_with_a_body():
    scores = [(20.0, 0.5, 0.2), (22.0, 0.7, 0.4), (math.inf, 1.0, None)]
    row = row_of("mixed", scores)
    assert row.pairs == 3 and row.dtw_pairs == 2
    assert row.dtw_mje == pytest.approx(0.3) and row.dtw_se == pytest.approx(0.1)
    assert row.ssim_se == pytest.approx(np.std([0.5, 0.7, 1.0], ddof=1) / math.sqrt(3))
    assert math.isinf(row.psnr) and math.isnan(row.psnr_se)  # identical clips: no spread
    line = format_rows([row]).splitlines()[1]
    assert line.split()[-8:] == ["inf", "0.733", "±", f"{row.ssim_se:.3f}", "0.300", "±",
                                 "0.100", "2"]


def write_clip(folder: Path, name: str, frames: np.ndarray, caption: str, fps: float) -> None:
    path = write_video(folder / name, frames, fps)
    path.with_suffix(".txt").write_text(caption + "\n")


@pytest.mark.slow
def test_folder_rows_on_wide_mp4s_rank_same_caption_above_a_different_one(cache, tmp_path):
    wide = {"height": 180, "width": 320}
    write_clip(tmp_path, "sway_a.mp4", pc.render(pc.uniform(20), pc.sway, **wide), "sway", 25)
    write_clip(tmp_path, "sway_b.mp4", pc.render(pc.eased(20), pc.sway, **wide), "Sway", 25)
    write_clip(tmp_path, "bow_a.mp4", pc.render(pc.uniform(20), pc.bow, **wide), "bow", 25)
    write_clip(tmp_path, "bow_b.gif", pc.render(pc.delayed(16, 3), pc.bow, **wide), "bow", 10)
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 50)  # skipped, not a crash
    (tmp_path / "broken.txt").write_text("sway")
    rows = by_name(folder_rows(tmp_path, cache, frames=FRAMES, size=SIZE))
    assert set(rows) == {"itself", "delayed", "mirrored", "same", "different"}
    assert rows["itself"].pairs == 4 and rows["itself"].dtw_mje == 0.0
    same, other = rows["same"], rows["different"]
    assert same.pairs == 2 and other.pairs == 4  # two takes of a caption are one pair
    # another take of a sign differs by its tempo and frame sampling, not by its path
    assert same.dtw_mje < 0.6 * other.dtw_mje, (same, other)
    assert same.psnr > other.psnr


def test_folder_rows_refuse_a_folder_with_one_clip(cache, tmp_path):
    write_clip(tmp_path, "only.gif", pc.render(pc.uniform(8)), "only", 10)
    with pytest.raises(ValueError, match="at least 2 captioned clips"):
        folder_rows(tmp_path, cache, frames=8, size=SIZE)
    with pytest.raises(DataError):
        folder_rows(tmp_path / "missing", cache, frames=8, size=SIZE)
