"""`make_preview`: the contact sheet shows the first / middle / last frame of evenly spread
clips, and the GIF grid plays them. Every frame of every test clip is one flat colour of its
own, so the sheet can be searched for exactly the frames it should (and should not) show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.data.clips import DataError
from shared.data.preview import PreviewConfig, make_preview, spread
from shared.data.video import read_video, write_video

CLIPS, FRAMES = 5, 5


def colour(clip: int, frame: int) -> tuple[int, int, int]:
    return (20 + 45 * clip, 20 + 50 * frame, 200 - 30 * clip)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "clips"
    for i in range(CLIPS):
        video = np.stack([np.full((36, 64, 3), colour(i, k), np.uint8) for k in range(FRAMES)])
        path = write_video(root / f"clip{i}.gif", video, fps=5)
        path.with_suffix(".txt").write_text(f"caption number {i}", encoding="utf-8")
    return root


def area_of(image: np.ndarray, rgb: tuple[int, int, int], tol: int = 3) -> int:
    """Pixels of (about) this colour."""
    return int((np.abs(image.astype(int) - rgb).max(axis=-1) <= tol).sum())


def test_sheet_shows_first_middle_last_frames_of_spread_clips(folder: Path, tmp_path: Path):
    preview = make_preview(folder, tmp_path / "look" / "sheet.png",
                           PreviewConfig(num_clips=3, thumb_height=36, thumb_width=64))
    assert [c.caption for c in preview.shown] == ["caption number 0", "caption number 2",
                                                  "caption number 4"]
    sheet = np.asarray(Image.open(preview.sheet).convert("RGB"))
    thumb = 36 * 64
    for clip in range(CLIPS):
        for frame in range(FRAMES):
            expected = clip in (0, 2, 4) and frame in (0, FRAMES // 2, FRAMES - 1)
            found = area_of(sheet, colour(clip, frame))
            assert (found >= thumb * 0.9) if expected else found == 0, (clip, frame, found)


def test_grid_gif_plays_the_same_clips_beside_the_sheet(folder: Path, tmp_path: Path):
    preview = make_preview(folder, tmp_path / "sheet.png", PreviewConfig(num_clips=2))
    assert preview.grid == tmp_path / "sheet.gif"
    grid, _ = read_video(preview.grid)
    assert len(grid) == FRAMES
    for k in (0, FRAMES - 1):  # every shown clip is at the same moment in each grid frame
        for clip in (0, CLIPS - 1):
            assert area_of(grid[k], colour(clip, k)) > 0.5 * 90 * 160
        assert area_of(grid[k], colour(2, k)) == 0


def test_spread_includes_both_ends_and_never_repeats():
    assert spread(10, 3) == [0, 4, 9] or spread(10, 3) == [0, 5, 9]
    assert spread(3, 12) == [0, 1, 2]
    picks = spread(100, 7)
    assert picks[0] == 0 and picks[-1] == 99 and len(set(picks)) == 7


def test_errors_name_the_fix(folder: Path, tmp_path: Path):
    with pytest.raises(DataError, match=r"\.png"):
        make_preview(folder, tmp_path / "sheet.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no clips"):
        make_preview(tmp_path / "empty", tmp_path / "sheet.png")
