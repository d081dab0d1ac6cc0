"""What is in a training folder, before hours go into training on it.

`collect_stats` looks at a folder the way training does (shared.data.clips.find_clips: the same
files, captions and skip rules), decodes every clip with the same reader, and reports what
decides whether the data can teach the model anything: how many clips, how long and how many
frames (training resamples to `num_frames`, so a wide spread means very different speeds), the
resolution mix (everything is centre-cropped to a square), caption lengths and vocabulary (a
word seen once cannot be learnt), and duplicates (the same caption for many clips is fine for a
closed vocabulary but suspicious for sentences; the same file twice is a leak between the train
and validation splits).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from shared.config import DataConfig
from shared.data.clips import Clip, DataReport, find_clips
from shared.data.video import VideoError, read_video

_WORD = re.compile(r"[\w']+")


@dataclass(frozen=True)
class ClipInfo:
    path: str  # relative to the data folder
    caption: str
    frames: int
    height: int
    width: int
    fps: float
    sha256: str

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


@dataclass
class DataStats:
    """Per-clip facts of a folder plus what was skipped; `to_dict` / `format` summarise."""

    data_dir: str
    clips: list[ClipInfo] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def to_dict(self, top: int = 20) -> dict:
        clips = self.clips
        words = [w for c in clips for w in caption_words(c.caption)]
        vocab = Counter(words)
        by_caption = Counter(c.caption for c in clips)
        shared_captions = {cap: n for cap, n in by_caption.items() if n > 1}
        by_content: dict[str, list[str]] = {}
        for c in clips:
            by_content.setdefault(c.sha256, []).append(c.path)
        same_files = sorted(sorted(paths) for paths in by_content.values() if len(paths) > 1)
        return {
            "data_dir": self.data_dir,
            "clips": len(clips),
            "skipped": [{"path": p, "why": why} for p, why in self.skipped],
            "duration_s": distribution([c.duration for c in clips]),
            "frames": distribution([c.frames for c in clips]),
            "frame_counts": _ranked(Counter(c.frames for c in clips), top),
            "resolution": _ranked(Counter(f"{c.width}x{c.height}" for c in clips), top),
            "fps": _ranked(Counter(f"{c.fps:g}" for c in clips), top),
            "caption_words": distribution([len(caption_words(c.caption)) for c in clips]),
            "vocabulary_size": len(vocab),
            "words_seen_once": sum(1 for n in vocab.values() if n == 1),
            "top_words": _ranked(vocab, top),
            "duplicate_captions": {
                "captions": len(shared_captions),
                "clips": sum(shared_captions.values()),
                "top": _ranked(Counter(shared_captions), top),
            },
            "duplicate_files": same_files,
        }

    def format(self, top: int = 10) -> str:
        d = self.to_dict(top)
        lines = [f"{d['data_dir']}: {d['clips']} clips" + (
            f" ({len(d['skipped'])} skipped)" if d["skipped"] else "")]
        for item in d["skipped"][:top]:
            lines.append(f"  skipped {item['path']}: {item['why']}")
        if not d["clips"]:
            return "\n".join(lines)
        lines += [
            f"duration    {_format_distribution(d['duration_s'], 's')}",
            f"frames      {_format_distribution(d['frames'])}",
            f"            {_format_ranked(d['frame_counts'])}",
            f"resolution  {_format_ranked(d['resolution'])}",
            f"fps         {_format_ranked(d['fps'])}",
            f"caption     {_format_distribution(d['caption_words'], 'words')}",
            f"vocabulary  {d['vocabulary_size']} words, {d['words_seen_once']} seen only once",
            f"top words   {_format_ranked(d['top_words'])}",
        ]
        dup = d["duplicate_captions"]
        text = f"duplicates  {dup['clips']} clips share {dup['captions']} captions"
        if dup["top"]:
            caption, count = next(iter(dup["top"].items()))
            text += f" (most: {caption!r} x{count})"
        lines.append(text)
        files = d["duplicate_files"]
        lines.append(f"            {len(files)} groups of identical files" + (
            ": " + "; ".join(" = ".join(group) for group in files[:top]) if files else ""))
        return "\n".join(lines)


def caption_words(caption: str) -> list[str]:
    """Lower-case words, punctuation dropped: the unit of the vocabulary count."""
    return _WORD.findall(caption.lower())


def distribution(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    q = np.percentile(a, [0, 10, 50, 90, 100])
    return {"min": float(q[0]), "p10": float(q[1]), "median": float(q[2]), "mean": float(a.mean()),
            "p90": float(q[3]), "max": float(q[4])}


def _ranked(counter: Counter, top: int) -> dict:
    """The `top` most common, ties broken by key so the report is deterministic."""
    items = sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:top]
    return {str(k): n for k, n in items}


def _format_distribution(d: dict[str, float], unit: str = "") -> str:
    text = "  ".join(f"{k} {v:.3g}" for k, v in d.items())
    return f"{text} ({unit})" if unit else text


def _format_ranked(d: dict) -> str:
    return ", ".join(f"{k} x{n}" for k, n in d.items())


def _probe(clip: Clip, root: Path) -> ClipInfo | tuple[str, str]:
    rel = _rel(clip.path, root)
    try:
        frames, fps = read_video(clip.path)
    except (VideoError, OSError) as e:
        return rel, str(e).removeprefix(f"{clip.path}: ")
    digest = hashlib.sha256(clip.path.read_bytes()).hexdigest()
    return ClipInfo(rel, clip.caption, len(frames), frames.shape[1], frames.shape[2],
                    round(fps, 3), digest)


def collect_stats(data_dir: str | Path, labels_file: str | None = None,
                  workers: int | None = None, progress: bool = True) -> DataStats:
    """Decode every clip training would see in `data_dir` and record its facts."""
    root = Path(data_dir)
    report = DataReport()
    clips = find_clips(DataConfig(data_dir=str(root), labels_file=labels_file), report)
    stats = DataStats(str(root))
    stats.skipped = [(_rel(p, root), why) for p, why in report.skipped]
    workers = max(1, min(workers or os.cpu_count() or 1, len(clips) or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda c: _probe(c, root), clips)
        for result in tqdm(results, total=len(clips), desc="reading clips", unit="clip",
                           disable=not progress):
            if isinstance(result, ClipInfo):
                stats.clips.append(result)
            else:
                stats.skipped.append(result)
    return stats


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
