"""Training clips found in a folder, with their captions; what could not be used, counted.

A training folder holds GIF / MP4 clips with same-named `.txt` captions, or a `filename,text`
labels file. Bad input never crashes an epoch: a clip that cannot be used (undecodable, no
caption, empty caption) is skipped with one warning naming the file, and a clip that can be
repaired (`shared.data.preprocess.repair_notes`) is repaired and noted. `DataReport` counts both;
`strict` turns any of them into a `DataError`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import DataConfig
from shared.data.video import VIDEO_SUFFIXES

# The decoded-clip cache's folder inside a data folder (`shared.data.decode_cache`): never a clip.
CACHE_DIRNAME = ".t2s_cache"


class DataError(RuntimeError):
    """Training data that cannot be used as asked; the message names the file and the fix."""


@dataclass(frozen=True)
class Clip:
    path: Path
    caption: str


@dataclass
class DataReport:
    """What happened to each input file: kept, repaired (with a note) or skipped (with why)."""

    kept: int = 0
    repaired: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.kept} clips ready"
        if self.repaired:
            text += f", {len(self.repaired)} repaired"
        if self.skipped:
            text += f", {len(self.skipped)} skipped (see the warnings above)"
        return text


def find_clips(config: DataConfig, report: DataReport) -> list[Clip]:
    """Clips of the folder with their captions, sorted by path; captionless ones go to report."""
    root = Path(config.data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder; make one with `t2s-torch data toy {root}` "
                        "or point data.data_dir at your clips")
    if config.labels_file:
        return _clips_from_labels(root, Path(config.labels_file), report)
    clips = []
    for path in sorted(p for p in root.rglob("*") if _is_video(p, root)):
        caption_path = path.with_suffix(".txt")
        if not caption_path.exists():
            report.skipped.append((path, f"no caption: add {caption_path.name} beside it"))
            continue
        caption = _clean_caption(caption_path.read_text(encoding="utf-8", errors="replace"))
        if not caption:
            report.skipped.append((path, f"empty caption in {caption_path.name}"))
            continue
        clips.append(Clip(path, caption))
    return clips


def _clips_from_labels(root: Path, labels: Path, report: DataReport) -> list[Clip]:
    labels = labels if labels.is_absolute() or labels.exists() else root / labels
    if not labels.exists():
        raise DataError(f"{labels}: labels file not found; give a `filename,text` CSV")
    clips = []
    # Without a header, or with just `filename,text`, everything after the first comma is the
    # caption (unquoted commas allowed); a header naming more columns (`filename,text,signer`,
    # for data.split_by) makes it a proper CSV whose caption is the text column alone.
    columns = 0
    with labels.open(newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or (line_no == 1 and [c.strip().lower() for c in row[:2]]
                           == ["filename", "text"]):
                if line_no == 1 and len(row) > 2:
                    columns = len(row)
                continue
            if len(row) < 2:
                report.skipped.append((labels, f"line {line_no}: expected filename,text"))
                continue
            path = root / row[0].strip()
            caption = _clean_caption(row[1] if columns else ",".join(row[1:]))
            if not path.exists():
                report.skipped.append((path, f"{labels.name} line {line_no}: file not found"))
            elif not caption:
                report.skipped.append((path, f"{labels.name} line {line_no}: empty caption"))
            else:
                clips.append(Clip(path, caption))
    return sorted(clips, key=lambda c: str(c.path))


def _is_video(path: Path, root: Path) -> bool:
    return (path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()
            and CACHE_DIRNAME not in path.relative_to(root).parts
            and not path.name.startswith("."))


def _clean_caption(text: str) -> str:
    return " ".join(text.split())
