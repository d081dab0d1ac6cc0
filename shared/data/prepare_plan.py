"""`data prepare`'s plan: a segments file or a folder of clips -> one job per clip, or a bad row.

Every segment row (or clip file) becomes a `Job` with a deterministic output name, or a `BadRow`
with its CSV line number and a reason. Rows that are wrong on their face are caught here, before
any decoding (`shared.data.prepare_cut`), so `--strict` stops before any work.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from shared.data.clips import CACHE_DIRNAME, DataError
from shared.data.video import VIDEO_SUFFIXES

# Column names recognised in a segments file, in order of preference (case-insensitive).
# How2Sign's come first; `--columns` maps any other layout.
COLUMN_ALIASES: Mapping[str, tuple[str, ...]] = {
    "video": ("VIDEO_NAME", "video", "video_name", "video_file", "video_path", "file",
              "filename", "path", "source"),
    "start": ("START_REALIGNED", "START", "start_time", "start_sec", "begin", "t0"),
    "end": ("END_REALIGNED", "END", "end_time", "end_sec", "t1"),
    "text": ("SENTENCE", "text", "caption", "sentence", "gloss", "label", "translation"),
    "name": ("SENTENCE_NAME", "name", "clip_name", "clip_id", "segment_id", "id"),
}
COLUMN_KEYS = tuple(COLUMN_ALIASES)

# Reasons a row (or clip file) is skipped; the summary counts them under these names.
MISSING_VIDEO = "missing video"
BAD_TIME = "bad time"
END_BEFORE_START = "end before start"
PAST_END = "past video end"
EMPTY_CAPTION = "empty caption"
UNDECODABLE = "undecodable"
DUPLICATE_NAME = "duplicate name"


@dataclass(frozen=True)
class Job:
    """One clip to make: a segment of a source video (or the whole clip when start is None)."""

    source: Path
    source_rel: str  # relative to the source folder, as the manifest records it
    start: float | None
    end: float | None
    caption: str
    output: str  # file name inside the output folder
    where: str  # "segments.csv line 12", or the clip's relative path
    line: int | None
    # (column, value) of each kept segments-file column, in --keep-column order
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BadRow:
    """A row or clip that was skipped, and why; `where` names the file (and line)."""

    where: str
    line: int | None
    reason: str
    detail: str

    def format(self) -> str:
        return f"{self.where}: {self.reason}: {self.detail}"


# ---------------------------------------------------------------- planning


def plan_segments(source: Path, segments: Path, columns: Mapping[str, str] | None = None,
                  exclude: Path | None = None, keep_columns: Sequence[str] = (),
                  ) -> tuple[list[Job], list[BadRow]]:
    """Jobs for the rows of a CSV / TSV of segments (header required), and the bad rows;
    each job carries the values of the `keep_columns` of its row."""
    if not segments.is_file():
        raise DataError(f"{segments}: segments file not found; give a CSV/TSV with video, "
                        "start, end and text columns")
    videos = _index_videos(source, exclude)
    jobs: list[Job] = []
    bad: list[BadRow] = []
    first_use: dict[str, int] = {}
    with segments.open(newline="", encoding="utf-8-sig") as f:
        header_line = f.readline()
        f.seek(0)
        reader = csv.reader(f, delimiter=_sniff_delimiter(header_line))
        header = next(reader, None)
        if not header:
            raise DataError(f"{segments}: empty segments file; it needs a header row")
        index = resolve_columns(header, columns or {}, segments)
        kept = resolve_kept_columns(header, keep_columns, segments)
        line = reader.line_num
        for row in reader:
            start_line, line = line + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            where = f"{segments} line {start_line}"
            job_or_bad = _job_from_row(row, index, videos, source, where, start_line)
            if isinstance(job_or_bad, Job) and kept:
                job_or_bad = replace(job_or_bad, extra=tuple(
                    (name, row[i].strip() if i < len(row) else "") for name, i in kept))
            if isinstance(job_or_bad, BadRow):
                bad.append(job_or_bad)
            elif job_or_bad.output in first_use:
                bad.append(BadRow(where, start_line, DUPLICATE_NAME,
                                  f"output {job_or_bad.output} is already made by line "
                                  f"{first_use[job_or_bad.output]}"))
            else:
                first_use[job_or_bad.output] = start_line
                jobs.append(job_or_bad)
    return jobs, bad


def resolve_columns(header: list[str], mapping: Mapping[str, str], path: Path) -> dict[str, int]:
    """Column index of each logical field the file has; video and text are required, start
    and end come together or not at all (without them every row is a whole video)."""
    lookup: dict[str, int] = {}
    for i, name in enumerate(header):
        lookup.setdefault(name.strip().lower(), i)
    found = ", ".join(h.strip() for h in header)
    index: dict[str, int] = {}
    for key, aliases in COLUMN_ALIASES.items():
        if key in mapping:
            if mapping[key].strip().lower() not in lookup:
                raise DataError(f"{path}: no column {mapping[key]!r} (given for {key}); its "
                                f"columns are {found}; fix --columns")
            index[key] = lookup[mapping[key].strip().lower()]
            continue
        for alias in aliases:
            if alias.lower() in lookup:
                index[key] = lookup[alias.lower()]
                break
    for key in ("video", "text"):
        if key not in index:
            raise DataError(f"{path}: no {key} column among {found}; name it with "
                            f"--columns {key}=COLUMN")
    if ("start" in index) != ("end" in index):
        have, missing = ("start", "end") if "start" in index else ("end", "start")
        raise DataError(f"{path}: a {have} column but no {missing} column; name it with "
                        f"--columns {missing}=COLUMN")
    return index


def resolve_kept_columns(header: list[str], keep: Sequence[str], path: Path
                         ) -> list[tuple[str, int]]:
    """(name as the file spells it, index) of each column to keep; a name the file lacks is an
    error naming the file, its columns and the flag to fix."""
    lookup: dict[str, int] = {}
    for i, name in enumerate(header):
        lookup.setdefault(name.strip().lower(), i)
    kept = []
    for name in keep:
        i = lookup.get(name.strip().lower())
        if i is None:
            raise DataError(f"{path}: no column {name!r} to keep; its columns are "
                            f"{', '.join(h.strip() for h in header)}; fix --keep-column")
        if all(i != j for _, j in kept):
            kept.append((header[i].strip(), i))
    return kept


def _job_from_row(row: list[str], index: Mapping[str, int], videos: Mapping[str, Path],
                  source: Path, where: str, line: int) -> Job | BadRow:
    def cell(key: str) -> str:
        i = index.get(key)
        return row[i].strip() if i is not None and i < len(row) else ""

    video_name = cell("video")
    video = _find_video(video_name, videos)
    if video is None:
        detail = (f"no video {video_name!r} in {source}" if video_name
                  else "the video column is empty")
        return BadRow(where, line, MISSING_VIDEO, detail)
    start = end = None
    if "start" in index:
        try:
            start, end = parse_time(cell("start")), parse_time(cell("end"))
        except ValueError:
            return BadRow(where, line, BAD_TIME, f"start {cell('start')!r} / end "
                                                 f"{cell('end')!r} are not times in seconds")
        if end <= start:
            return BadRow(where, line, END_BEFORE_START, f"end {end:g} s is not after start "
                                                         f"{start:g} s")
    caption = clean_caption(cell("text"))
    if not caption:
        return BadRow(where, line, EMPTY_CAPTION, "the text column is empty")
    rel = video.relative_to(source)
    if cell("name"):
        stem = safe_name(cell("name"))
    elif start is not None:
        stem = f"{safe_name(rel.stem)}_{round(start * 1000):07d}_{round(end * 1000):07d}"
    else:
        stem = safe_name(rel.with_suffix("").as_posix().replace("/", "__"))
    return Job(video, rel.as_posix(), start, end, caption, stem, where, line)


def plan_folder(source: Path, exclude: Path | None = None) -> tuple[list[Job], list[BadRow]]:
    """Jobs for a folder of clips (whole clips): the caption is a sidecar `.txt` if there is
    one, else the file's name (see `caption_from_name`)."""
    jobs: list[Job] = []
    bad: list[BadRow] = []
    used: set[str] = set()
    for path in _video_files(source, exclude):
        rel = path.relative_to(source)
        sidecar = path.with_suffix(".txt")
        if sidecar.exists():
            caption = clean_caption(sidecar.read_text(encoding="utf-8", errors="replace"))
            why = f"{sidecar.name} is empty"
        else:
            caption = caption_from_name(rel)
            why = f"no {sidecar.name} beside it and no words in its name"
        if not caption:
            bad.append(BadRow(rel.as_posix(), None, EMPTY_CAPTION, why))
            continue
        stem = safe_name(rel.with_suffix("").as_posix().replace("/", "__"))
        if stem in used:  # e.g. hello.gif beside hello.mp4: the later one gets a path hash
            stem = f"{stem}_{hashlib.sha256(rel.as_posix().encode()).hexdigest()[:8]}"
        used.add(stem)
        jobs.append(Job(path, rel.as_posix(), None, None, caption, stem, rel.as_posix(), None))
    return jobs, bad


def caption_from_name(rel: PurePosixPath | Path) -> str:
    """`thank_you_02.mp4` -> "thank you"; `please/001.mp4` -> "please": the words of the file
    name without a trailing clip number, else those of the nearest folder that has words."""
    for part in (rel.stem, *reversed(rel.parent.parts)):
        words = [w for w in re.split(r"[\s_\-.]+", part) if w]
        while words and re.fullmatch(r"\(?\d+\)?", words[-1]):
            words.pop()
        if words:
            return " ".join(words)
    return ""


def clean_caption(text: str) -> str:
    return " ".join(text.split())


def safe_name(text: str, max_len: int = 150) -> str:
    """A file-name-safe form of a corpus id: letters, digits, `.`, `_`, `-` are kept."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:max_len]
    return name or "clip"


def parse_time(text: str) -> float:
    """Seconds from `12.5`, `1:02.5` or `0:01:02.5`; ValueError for anything else or < 0."""
    parts = text.strip().split(":")
    if len(parts) > 3 or not all(p.strip() for p in parts):
        raise ValueError(f"not a time: {text!r}")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a time: {text!r}")
    return seconds


def _sniff_delimiter(header_line: str) -> str:
    """How2Sign's `.csv` files are tab-separated: decide by the header, not the suffix."""
    best = max(("\t", ",", ";", "|"), key=header_line.count)
    return best if header_line.count(best) else ","


def _video_files(source: Path, exclude: Path | None) -> list[Path]:
    exclude = exclude.resolve() if exclude else None
    files = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if (path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file()
                or any(p.startswith(".") or p == CACHE_DIRNAME for p in rel.parts)):
            continue
        if exclude and path.resolve().is_relative_to(exclude):
            continue
        files.append(path)
    return files


def _index_videos(source: Path, exclude: Path | None) -> dict[str, Path]:
    """Every way a segments file may name a video: relative path, with or without suffix, bare
    file name or stem. The first file in sorted order wins a shared name."""
    index: dict[str, Path] = {}
    for path in _video_files(source, exclude):
        rel = path.relative_to(source)
        for key in (rel.as_posix(), rel.with_suffix("").as_posix(), path.name, path.stem):
            index.setdefault(key, path)
    return index


def _find_video(name: str, videos: Mapping[str, Path]) -> Path | None:
    if not name:
        return None
    posix = PurePosixPath(name.replace("\\", "/"))
    for key in (posix.as_posix(), _strip_video_suffix(posix.as_posix()), posix.name,
                _strip_video_suffix(posix.name)):
        if key in videos:
            return videos[key]
    return None


def _strip_video_suffix(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return name[: -len(suffix)] if suffix in VIDEO_SUFFIXES else name
