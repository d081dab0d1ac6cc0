"""A look at the data before training on it: a contact sheet and a moving grid.

Numbers (shared.data.stats) do not show a letterbox that ate the hands, a cut that starts a
second late, or captions that belong to the neighbouring clip; a person looking at a few clips
does. `make_preview` picks N clips spread evenly over the folder (the same clips training sees,
via shared.data.clips.find_clips), and writes

* OUT.png: one row per clip: its first, middle and last frame, its caption and file name;
* OUT.gif beside it: the same clips playing side by side (shared.data.video.write_grid), each
  resampled to the same frame count and letterboxed into the same tile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shared.config import DataConfig
from shared.data.clips import Clip, DataError, DataReport, find_clips
from shared.data.prepare_cut import fit_frames
from shared.data.video import VideoError, read_video, write_grid

_BACKGROUND, _INK, _FAINT = (255, 255, 255), (0, 0, 0), (110, 110, 110)
_LINE = 12  # pixels per text line of Pillow's default font


@dataclass(frozen=True)
class PreviewConfig:
    num_clips: int = 12
    thumb_height: int = 90
    thumb_width: int = 160
    caption_width: int = 260  # pixels of caption text beside each row of thumbnails
    grid_frames: int = 16  # grid clips are resampled to this many frames (at most)
    fps: float = 8.0
    labels_file: str | None = None


@dataclass
class Preview:
    sheet: Path
    grid: Path
    shown: list[Clip]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def spread(total: int, n: int) -> list[int]:
    """`n` indices spread evenly over range(total), first and last included (all if n >= total)."""
    if n >= total:
        return list(range(total))
    return sorted({int(i) for i in np.round(np.linspace(0, total - 1, n))})


def key_frames(frames: np.ndarray) -> np.ndarray:
    """First, middle and last frame."""
    n = len(frames)
    return frames[[0, (n - 1) // 2, n - 1]]


def make_preview(data_dir: str | Path, out_png: str | Path,
                 config: PreviewConfig | None = None) -> Preview:
    """Write the contact sheet OUT.png and the grid OUT.gif for `config.num_clips` clips."""
    config = config or PreviewConfig()
    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise DataError(f"{out_png}: the contact sheet is a PNG; give a name ending in .png")
    report = DataReport()
    clips = find_clips(DataConfig(data_dir=str(data_dir), labels_file=config.labels_file),
                       report)
    decoded: list[tuple[Clip, np.ndarray]] = []
    skipped = list(report.skipped)
    for i in spread(len(clips), config.num_clips):
        try:
            frames, _ = read_video(clips[i].path)
        except (VideoError, OSError) as e:
            skipped.append((clips[i].path, str(e)))
            continue
        fitted = fit_frames(frames, config.thumb_height, config.thumb_width, "letterbox")
        decoded.append((clips[i], fitted))
    if not decoded:
        raise DataError(f"{data_dir}: no clips to preview; a clip is a .gif/.mp4 with a "
                        "same-named .txt caption")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet([(c, key_frames(f)) for c, f in decoded], Path(data_dir), config).save(
        out_png, format="PNG")
    n = min(config.grid_frames, max(len(f) for _, f in decoded))
    grid_clips = [f[np.round(np.linspace(0, len(f) - 1, n)).astype(int)] for _, f in decoded]
    grid = write_grid(out_png.with_suffix(".gif"), grid_clips, [c.caption for c, _ in decoded],
                      fps=config.fps)
    return Preview(out_png, grid, [c for c, _ in decoded], skipped)


def contact_sheet(rows: list[tuple[Clip, np.ndarray]], root: Path,
                  config: PreviewConfig) -> Image.Image:
    """One row per clip: three thumbnails (uint8 (3, h, w, 3)) then the caption (wrapped) and
    the clip's path in grey; a header names the columns."""
    font = ImageFont.load_default()
    pad, th, tw = 4, config.thumb_height, config.thumb_width
    row_h = th + pad
    width = pad + 3 * (tw + pad) + config.caption_width
    header = _LINE + pad
    sheet = Image.new("RGB", (width, header + pad + len(rows) * row_h), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for col, label in enumerate(("first", "middle", "last")):
        draw.text((pad + col * (tw + pad), pad), label, fill=_FAINT, font=font)
    for r, (clip, thumbs) in enumerate(rows):
        y = header + pad + r * row_h
        for col, thumb in enumerate(thumbs):
            sheet.paste(Image.fromarray(thumb), (pad + col * (tw + pad), y))
        x = pad + 3 * (tw + pad)
        lines = _wrap(clip.caption, config.caption_width - pad, font)
        max_lines = max(1, th // _LINE - 1)
        for j, line in enumerate(lines[:max_lines]):
            draw.text((x, y + j * _LINE), line, fill=_INK, font=font)
        name = clip.path.relative_to(root).as_posix() if clip.path.is_relative_to(root) \
            else clip.path.name
        draw.text((x, y + max_lines * _LINE), name, fill=_FAINT, font=font)
    return sheet


def _wrap(text: str, width: int, font) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and font.getlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines
