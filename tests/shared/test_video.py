"""Video io: real GIF and MP4 files written and read back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.data.video import (
    VideoError,
    grid_scale,
    make_grid,
    read_video,
    to_uint8,
    write_grid,
    write_video,
)


def _gradient_clip(frames=6, h=24, w=40) -> np.ndarray:
    video = np.zeros((frames, h, w, 3), np.uint8)
    video[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, None, :]
    for k in range(frames):
        video[k, :, :, 1] = 20 * k
    return video


def test_gif_round_trip_keeps_every_frame_even_repeated_ones(tmp_path):
    video = _gradient_clip()
    video[3:] = video[3]  # Pillow merges identical frames; the reader must expand them
    path = write_video(tmp_path / "a.gif", video, fps=10)
    frames, fps = read_video(path)
    assert frames.shape == video.shape
    assert fps == pytest.approx(10)
    assert np.abs(frames.astype(int) - video).max() <= 8
    with Image.open(path) as im:  # an independent reader agrees on the loop and the timing
        assert im.info["loop"] == 0
        assert im.n_frames < len(video)


def test_mp4_round_trip(tmp_path):
    video = _gradient_clip(frames=12)
    frames, fps = read_video(write_video(tmp_path / "a.mp4", video, fps=12))
    assert frames.shape == video.shape
    assert fps == pytest.approx(12)
    assert np.abs(frames.astype(int) - video).mean() < 4


def test_mp4_pads_odd_sides_to_even(tmp_path):
    frames, _ = read_video(write_video(tmp_path / "odd.mp4", _gradient_clip(h=23, w=37), 8))
    assert frames.shape[1:3] == (24, 38)


def test_undecodable_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError, match="bad.mp4"):
        read_video(bad)
    with pytest.raises(VideoError, match="unknown video suffix"):
        write_video(tmp_path / "x.png", _gradient_clip(), 8)


def test_writes_are_atomic(tmp_path):
    target = write_video(tmp_path / "a.gif", _gradient_clip(), 8)
    with pytest.raises(VideoError):
        write_video(target, np.zeros((2, 4, 4, 3), np.float32), 8)  # wrong dtype: refused
    assert read_video(target)[0].shape == (6, 24, 40, 3)  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["a.gif"]  # no temporary left behind


def test_to_uint8_maps_model_range():
    np.testing.assert_array_equal(to_uint8(np.array([-1.5, -1.0, 0.0, 1.0, 2.0])),
                                  [0, 0, 128, 255, 255])


def test_grid_places_clips_and_labels(tmp_path):
    a = np.full((3, 16, 16, 3), 10, np.uint8)
    b = np.full((3, 16, 16, 3), 200, np.uint8)
    a[:, 0, 0, 2] = b[:, 0, 0, 2] = [0, 100, 200]  # the frames differ, so the GIF keeps three
    grid = make_grid([a, b, a], ["ab cd", "ef", "gh"], ncols=2, pad=2)
    assert grid.shape[0] == 3
    assert grid.shape[2] == 2 * (16 + 2) + 2  # every word fits a 16-pixel tile: no widening
    assert (grid[:, 3:18, 2:18] == 10).all() and (grid[:, 3:18, 20:36] == 200).all()
    caption_strip = grid[0, 18:18 + 14, 2:18]
    assert caption_strip.min() < 128  # text was drawn under the first clip
    frames, _ = read_video(write_grid(tmp_path / "g.gif", [a, b], ["x", "y"]))
    assert frames.shape[0] == 3
    with pytest.raises(VideoError, match="differ in shape"):
        make_grid([a, b[:, :8]])


def test_grid_keeps_whole_captions_under_small_tiles():
    """A 16-pixel tile under "thanks friend" used to show "tha": the cell now widens to the
    longest word and the caption wraps between words, so every letter is drawn."""
    from PIL import ImageFont

    font = ImageFont.load_default()
    a = np.full((2, 16, 16, 3), 10, np.uint8)
    grid = make_grid([a, a], ["thanks friend", "good"], ncols=2, pad=2)
    longest = int(np.ceil(font.getlength("thanks"))) + 2
    cell = longest + 2
    assert grid.shape[2] == 2 * cell + 2
    assert grid.shape[1] == 2 + 16 + 2 * 14 + 2  # two caption lines: "thanks" / "friend"
    left = 2 + (longest - 16) // 2  # the tile sits in the middle of its wider cell
    assert (grid[:, 2:18, left:left + 16] == 10).all()
    ink = np.nonzero(grid[0, 18:18 + 28, 2:2 + longest].min(axis=-1) < 128)[1]
    assert ink.max() > 16  # text drawn beyond where a 16-pixel cell would have cut it


def test_grid_scale_enlarges_each_pixel_to_a_square():
    a = np.zeros((1, 4, 4, 3), np.uint8)
    a[0, 0, 0] = 255
    grid = make_grid([a], scale=3, pad=0)
    assert grid.shape[1:3] == (12, 12)
    assert (grid[0, :3, :3] == 255).all() and (grid[0, 3:, :] == 0).all()
    assert grid_scale(16) == 4 and grid_scale(128) == 1 and grid_scale(20) == 4
