"""From a real sign-language corpus to training clips: cut, resample, fit, write, record.

Real corpora are long videos with sentence timestamps (How2Sign: a tab-separated CSV with
VIDEO_NAME, SENTENCE_NAME, START_REALIGNED, END_REALIGNED, SENTENCE, times in seconds) or
folders of word clips whose captions are their file names or sidecar `.txt` files. Training
wants a flat folder of short, equally shaped clips with same-named captions. `prepare_corpus`
turns the first into the second:

* Plan. Every segment row (or clip file) becomes a job with a deterministic output name (the
  row's SENTENCE_NAME, else the video's name plus the segment's times in milliseconds; for a
  clip folder, the file's path), or a bad row with its CSV line number and a reason. Rows that
  are wrong on their face (missing video, end before start, empty caption, unreadable times,
  a name used twice) are caught here, before any decoding, so `strict` stops before any work.
* Cut. A segment is decoded from the nearest keyframe before its start (PyAV seeks by
  timestamp), and frames are picked at `num_frames` uniformly spaced instants of the segment
  (the middle of each 1/N slice; `keep_fps` picks one per source frame interval instead). Only
  picked frames are converted to RGB, so a 10-minute 720p video costs its decode, not its
  memory. Segments past the video's end and undecodable files are found here.
* Fit and write: letterbox, crop or stretch to the reference 180 x 320, then a GIF (or MP4)
  and a same-named `.txt` through shared.video's writers (atomic, so a crash never leaves a
  half-written clip). Output is byte-identical for the same input and settings, whatever the
  number of workers.
* Record. Each finished clip is appended to the manifest (source, start, end, caption, output,
  sha256 of the output file, the settings' fingerprint, and any segments-file columns named by
  `keep_columns`, e.g. a signer id) the moment it is written, so an
  interrupted run keeps its work; the next run redoes only clips whose manifest entry is
  missing, disagrees with the job, or whose file no longer matches its checksum. At the end the
  manifest is rewritten sorted by output name, so it too is deterministic.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from shared.data import CACHE_DIRNAME, DataError
from shared.video import GIF_SUFFIXES, VIDEO_SUFFIXES, read_video, write_video

# Bump when a change makes earlier outputs differ from what this version would write, so a
# resumed run redoes them instead of trusting the manifest.
PREPARE_VERSION = 1
FITS = ("letterbox", "crop", "stretch")
FORMATS = ("gif", "mp4")
MANIFEST_FORMATS = ("csv", "jsonl")
MANIFEST_FIELDS = ("source", "start", "end", "caption", "output", "sha256", "frames", "line",
                   "settings")
REJECTED_NAME = "rejected.csv"

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

_EPS = 1e-6
_MIN_FPS, _MAX_FPS = 1.0, 50.0


# ---------------------------------------------------------------- settings and records


@dataclass(frozen=True)
class PrepareConfig:
    """How clips are cut and written. Fields that change output bytes make the fingerprint."""

    num_frames: int = 28
    # One output frame per source frame (at the source rate) instead of `num_frames`.
    keep_fps: bool = False
    height: int = 180
    width: int = 320
    fit: str = "letterbox"
    fmt: str = "gif"
    manifest: str = "csv"
    # Logical column (video, start, end, text, name) -> the segments file's column name.
    columns: Mapping[str, str] = field(default_factory=dict)
    # Columns of the segments file copied into the manifest under their own names (a signer
    # id, a session): `data.split_by` can then keep each value on one side of the train /
    # validation split. They do not change the clips, so they are not in the fingerprint.
    keep_columns: tuple[str, ...] = ()
    workers: int = 1
    strict: bool = False
    progress: bool = True

    def validate(self) -> PrepareConfig:
        if self.num_frames < 1:
            raise DataError(f"frames must be >= 1, got {self.num_frames}")
        if self.height < 2 or self.width < 2:
            raise DataError(f"output size {self.width}x{self.height} is too small")
        for name, value, allowed in (("fit", self.fit, FITS), ("format", self.fmt, FORMATS),
                                     ("manifest", self.manifest, MANIFEST_FORMATS)):
            if value not in allowed:
                raise DataError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        unknown = sorted(set(self.columns) - set(COLUMN_KEYS))
        if unknown:
            raise DataError(f"columns: unknown key(s) {', '.join(unknown)}; use "
                            f"{', '.join(COLUMN_KEYS)}")
        taken = sorted({c.strip().lower() for c in self.keep_columns} & set(MANIFEST_FIELDS))
        if taken:
            raise DataError(f"--keep-column {', '.join(taken)}: the manifest already has "
                            f"{'this field' if len(taken) == 1 else 'these fields'} "
                            f"({', '.join(MANIFEST_FIELDS)}); split by it directly "
                            "(e.g. data.split_by=source)")
        return self

    def fingerprint(self) -> str:
        """A short hash of what decides an output file's bytes (not workers, not progress)."""
        keys = {"version": PREPARE_VERSION, "frames": None if self.keep_fps else self.num_frames,
                "keep_fps": self.keep_fps, "height": self.height, "width": self.width,
                "fit": self.fit, "fmt": self.fmt}
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


def parse_columns(spec: str | None) -> dict[str, str]:
    """`video=clip_file,start=t0,end=t1,text=gloss` -> {"video": "clip_file", ...}."""
    mapping: dict[str, str] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        key, sep, column = item.partition("=")
        key = key.strip().lower()
        if not sep or not column.strip() or key not in COLUMN_KEYS:
            raise DataError(f"--columns {spec!r}: each item must be KEY=COLUMN with KEY one of "
                            f"{', '.join(COLUMN_KEYS)}, e.g. video=clip_file,text=gloss")
        mapping[key] = column.strip()
    return mapping


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


@dataclass(frozen=True)
class ManifestRow:
    source: str
    start: float
    end: float
    caption: str
    output: str
    sha256: str
    frames: int
    line: int | None
    settings: str
    # kept segments-file columns (see PrepareConfig.keep_columns), written after the fields
    extra: tuple[tuple[str, str], ...] = ()

    def to_strings(self) -> dict[str, str]:
        fields = {k: str(getattr(self, k)) for k in MANIFEST_FIELDS}
        return {**fields, **dict(self.extra), "start": f"{self.start:.3f}",
                "end": f"{self.end:.3f}", "line": "" if self.line is None else str(self.line)}

    def to_json(self) -> dict:
        fields = {k: getattr(self, k) for k in MANIFEST_FIELDS}
        return {**fields, **dict(self.extra), "start": round(self.start, 3),
                "end": round(self.end, 3)}

    @classmethod
    def parse(cls, raw: Mapping) -> ManifestRow:
        """From a CSV row (strings) or a JSON object; ValueError / KeyError / TypeError if it is
        not a complete row (a line cut short by a crash)."""
        line = raw["line"]
        row = cls(source=str(raw["source"]), start=float(raw["start"]), end=float(raw["end"]),
                  caption=str(raw["caption"]), output=str(raw["output"]),
                  sha256=str(raw["sha256"]), frames=int(raw["frames"]),
                  line=None if line in ("", None) else int(line), settings=str(raw["settings"]),
                  extra=tuple((str(k), "" if v is None else str(v)) for k, v in raw.items()
                              if k not in MANIFEST_FIELDS and k is not None))
        if not re.fullmatch(r"[0-9a-f]{64}", row.sha256) or not row.output:
            raise ValueError("incomplete manifest row")
        return row


@dataclass
class PrepareSummary:
    """What a run did: clips written now, clips already done, rows skipped (with reasons)."""

    out_dir: Path
    manifest: Path
    total: int = 0  # clips the input describes that are ready now
    written: int = 0
    reused: int = 0
    bad: list[BadRow] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(b.reason for b in self.bad).items()))

    def format(self) -> str:
        lines = [f"{self.out_dir}: {self.total} clips ready ({self.written} written, "
                 f"{self.reused} already done)"]
        if self.bad:
            reasons = ", ".join(f"{reason} {n}" for reason, n in self.counts().items())
            lines.append(f"{len(self.bad)} bad rows skipped ({reasons}); all listed in "
                         f"{self.out_dir / REJECTED_NAME}")
        lines.append(f"manifest: {self.manifest}")
        return "\n".join(lines)


class SegmentError(Exception):
    """A segment that cannot be cut; `reason` is one of the bad-row reasons."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


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


# ---------------------------------------------------------------- cutting


@contextmanager
def _timed_frames(path: Path, seek_to: float):
    """(fps, duration or None, iterator of (time in s, () -> RGB uint8 frame)), starting at
    the last keyframe at or before `seek_to`; times count from the video's first frame."""
    if path.suffix.lower() in GIF_SUFFIXES:
        frames, fps = read_video(path)
        yield fps, len(frames) / fps, ((k / fps, (lambda f=f: f)) for k, f in enumerate(frames))
        return
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise SegmentError(UNDECODABLE, f"{path.name} has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        offset = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        duration = (float(stream.duration * stream.time_base) if stream.duration
                    else container.duration / av.time_base if container.duration else None)
        if seek_to > 0:
            container.seek(int((seek_to + offset) / stream.time_base), stream=stream)

        def frames() -> Iterator[tuple[float, Callable[[], np.ndarray]]]:
            last = None
            for frame in container.decode(stream):
                t = frame.time - offset if frame.time is not None else (
                    0.0 if last is None else last + 1 / fps)
                last = t
                yield t, (lambda fr=frame: fr.to_ndarray(format="rgb24"))

        yield fps, duration, frames()


def cut_segment(path: Path, start: float | None, end: float | None, num_frames: int,
                keep_fps: bool = False) -> tuple[np.ndarray, float, float, float]:
    """The frames shown at `num_frames` evenly spaced instants of [start, end) (the middle of
    each slice), or one per source frame with `keep_fps`. Returns (frames, fps to play them
    at in real time, start, end); start None means the whole clip.

    Raises SegmentError for a segment past the video's end (more than one frame interval
    beyond the last frame) and for files that cannot be decoded."""
    whole = start is None
    try:
        with _timed_frames(path, start or 0.0) as (fps, duration, frames):
            if whole:
                if duration is None:  # no duration in the container: read the frame times
                    frames = list(frames)
                    duration = frames[-1][0] + 1 / fps if frames else 1 / fps
                start, end = 0.0, duration
            n = max(1, round((end - start) * fps)) if keep_fps else num_frames
            targets = start + (np.arange(n) + 0.5) * (end - start) / n
            picked, last_t = _pick(frames, targets)
    except SegmentError:
        raise
    except Exception as e:  # decoders raise many types for damaged files
        raise SegmentError(UNDECODABLE, f"cannot decode {path.name} ({type(e).__name__}: "
                                        f"{e})") from e
    if last_t is not None and not whole:  # the video ended before the last target
        video_end = last_t + 1 / fps
        if start >= video_end - _EPS or end > video_end + 1 / fps + _EPS:
            raise SegmentError(PAST_END, f"segment {start:g}-{end:g} s goes past the end of "
                                         f"{path.name} ({video_end:.2f} s)")
    out_fps = fps if keep_fps else min(_MAX_FPS, max(_MIN_FPS, n / (end - start)))
    return np.stack(picked), out_fps, start, end


def _pick(frames: Iterable[tuple[float, Callable[[], np.ndarray]]],
          targets: np.ndarray) -> tuple[list[np.ndarray], float | None]:
    """For each target time, the frame on screen then (the last one starting at or before it),
    converting only those. Returns the picks and, if the video ended first, its last frame's
    time (None when every target was reached before the end)."""
    picks: list[np.ndarray] = []
    shown: list = [None, None, None]  # time, converter, converted array of the frame on screen
    i = 0
    for t, convert in frames:
        while i < len(targets) and t > targets[i] + _EPS:
            if shown[1] is None:  # the target precedes the first decodable frame
                shown = [t, convert, None]
            if shown[2] is None:
                shown[2] = shown[1]()
            picks.append(shown[2])
            i += 1
        if i == len(targets):
            return picks, None
        shown = [t, convert, None]
    if shown[1] is None:
        raise SegmentError(UNDECODABLE, "no frames")
    rest = len(targets) - i
    if rest:
        last = shown[2] if shown[2] is not None else shown[1]()
        picks.extend([last] * rest)
    return picks, shown[0]


def fit_frames(frames: np.ndarray, height: int, width: int, fit: str = "letterbox") -> np.ndarray:
    """Frames (F, h, w, 3) -> (F, height, width, 3). letterbox: the whole picture, scaled to
    fit, centred on black; crop: scaled to cover, centre cut; stretch: aspect ignored."""
    if fit not in FITS:
        raise DataError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    h, w = frames.shape[1:3]
    if (h, w) == (height, width):
        return frames
    if fit == "stretch":
        size = (width, height)
    elif fit == "letterbox":
        scale = min(width / w, height / h)
        size = (min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale))))
    else:
        scale = max(width / w, height / h)
        size = (max(width, round(w * scale)), max(height, round(h * scale)))
    out = np.zeros((len(frames), height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        image = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))
        if fit == "crop":
            top, left = (size[1] - height) // 2, (size[0] - width) // 2
            out[i] = image[top:top + height, left:left + width]
        else:
            top, left = (height - size[1]) // 2, (width - size[0]) // 2
            out[i, top:top + size[1], left:left + size[0]] = image
    return out


# ---------------------------------------------------------------- one job


def prepare_one(job: Job, config: PrepareConfig, out_dir: Path) -> ManifestRow | BadRow:
    """Cut, fit and write one clip with its caption; a segment that cannot be cut is a BadRow
    (errors writing the output are not: they propagate)."""
    try:
        frames, fps, start, end = cut_segment(job.source, job.start, job.end,
                                              config.num_frames, config.keep_fps)
    except SegmentError as e:
        return BadRow(job.where, job.line, e.reason, str(e))
    frames = fit_frames(frames, config.height, config.width, config.fit)
    path = write_video(Path(out_dir) / f"{job.output}.{config.fmt}", frames, fps)
    _write_atomic(path.with_suffix(".txt"), (job.caption + "\n").encode("utf-8"))
    return ManifestRow(job.source_rel, start, end, job.caption, path.name, file_sha256(path),
                       len(frames), job.line, config.fingerprint(), job.extra)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _is_done(job: Job, row: ManifestRow | None, config: PrepareConfig, out_dir: Path) -> bool:
    """Finished by an earlier run: same source, times, caption and settings, and its caption
    file is still there (the video's checksum was checked when the manifest was read)."""
    if row is None or row.output != f"{job.output}.{config.fmt}":
        return False
    same_times = job.start is None or (round(row.start, 3) == round(job.start, 3)
                                       and round(row.end, 3) == round(job.end, 3))
    caption = out_dir / Path(row.output).with_suffix(".txt").name
    return (row.source == job.source_rel and same_times and row.caption == job.caption
            and row.settings == config.fingerprint() and caption.exists()
            and caption.read_text(encoding="utf-8") == job.caption + "\n")


# ---------------------------------------------------------------- the manifest


class Manifest:
    """`manifest.csv` / `manifest.jsonl`: one row per finished clip, appended as clips finish
    (a crash loses at most the row being written) and rewritten sorted at the end."""

    def __init__(self, path: Path, extra_columns: Sequence[str] = ()):
        self.path = path
        self.jsonl = path.suffix == ".jsonl"
        # CSV columns after MANIFEST_FIELDS (kept segments-file columns); `rewrite` adds any
        # that its rows have, so appended lines always match the header.
        self.extra_columns = list(extra_columns)

    def load_valid(self, out_dir: Path) -> dict[str, ManifestRow]:
        """Rows whose output file exists with the recorded checksum, by output name; rows cut
        short by a crash and rows of changed or deleted files are dropped."""
        if not self.path.exists():
            return {}
        rows: dict[str, ManifestRow] = {}
        with self.path.open(newline="", encoding="utf-8") as f:
            raw_rows: Iterable = (self._json_rows(f) if self.jsonl else csv.DictReader(f))
            for raw in raw_rows:
                try:
                    row = ManifestRow.parse(raw)
                except (ValueError, KeyError, TypeError):
                    continue
                output = out_dir / Path(row.output).name
                if output.is_file() and file_sha256(output) == row.sha256:
                    rows[row.output] = row
        return rows

    @staticmethod
    def _json_rows(f) -> Iterator[dict]:
        for line in f:
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                yield value

    def rewrite(self, rows: Iterable[ManifestRow]) -> None:
        ordered = sorted(rows, key=lambda r: r.output)
        for row in ordered:
            self.extra_columns += [k for k, _ in row.extra if k not in self.extra_columns]
        text = "".join([self._header(), *(self._line(r) for r in ordered)])
        _write_atomic(self.path, text.encode("utf-8"))

    @contextmanager
    def appender(self):
        with self.path.open("a", newline="", encoding="utf-8") as f:
            def append(row: ManifestRow) -> None:
                f.write(self._line(row))
                f.flush()

            yield append

    def _header(self) -> str:
        return "" if self.jsonl else _csv_line([*MANIFEST_FIELDS, *self.extra_columns])

    def _line(self, row: ManifestRow) -> str:
        if self.jsonl:
            return json.dumps(row.to_json(), ensure_ascii=False, sort_keys=True) + "\n"
        values = row.to_strings()
        return _csv_line([values.get(k, "") for k in (*MANIFEST_FIELDS, *self.extra_columns)])


def _csv_line(values: Iterable[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


# ---------------------------------------------------------------- the whole run


def prepare_corpus(source: str | Path, out_dir: str | Path, segments: str | Path | None = None,
                   config: PrepareConfig | None = None) -> PrepareSummary:
    """Turn SOURCE (videos + a segments file, or a folder of clips) into a training folder.

    Returns the summary; bad rows are skipped and listed (`out_dir/rejected.csv`), or with
    `config.strict` the first one raises a DataError naming its file and line."""
    config = (config or PrepareConfig()).validate()
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_dir():
        raise DataError(f"{source}: no such folder; give the folder of source videos or clips")
    if out_dir.resolve() == source.resolve():
        raise DataError(f"{out_dir}: the output folder is the source folder; give a new one")
    if segments is not None:
        jobs, bad = plan_segments(source, Path(segments), config.columns, exclude=out_dir,
                                  keep_columns=config.keep_columns)
    elif config.keep_columns:
        raise DataError(f"--keep-column {','.join(config.keep_columns)}: a folder of clips has "
                        "no columns; give --segments CSV with that column (or split a plain "
                        "folder by data.split_by=COLUMN of a labels CSV)")
    else:
        jobs, bad = plan_folder(source, exclude=out_dir)
    if config.strict and bad:
        raise _strict_error(bad[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out_dir / f"manifest.{config.manifest}",
                        list(dict.fromkeys(k for j in jobs for k, _ in j.extra)))
    rows = manifest.load_valid(out_dir)
    todo = []
    for job in jobs:
        key = f"{job.output}.{config.fmt}"
        if not _is_done(job, rows.get(key), config, out_dir):
            todo.append(job)
        elif rows[key].extra != job.extra:  # only the kept columns changed: no re-cut
            rows[key] = replace(rows[key], extra=job.extra)
    summary = PrepareSummary(out_dir, manifest.path, reused=len(jobs) - len(todo))
    manifest.rewrite(rows.values())
    bar = tqdm(total=len(todo), desc="preparing clips", unit="clip", disable=not config.progress)
    try:
        with manifest.appender() as append:
            for result in _run(todo, config, out_dir):
                bar.update()
                if isinstance(result, BadRow):
                    if config.strict:
                        raise _strict_error(result)
                    bad.append(result)
                else:
                    rows[result.output] = result
                    append(result)
                    summary.written += 1
    finally:
        bar.close()
        manifest.rewrite(rows.values())
    summary.bad = sorted(bad, key=lambda b: (b.line is None, b.line or 0, b.where))
    summary.total = summary.written + summary.reused
    _write_rejected(out_dir / REJECTED_NAME, summary.bad)
    return summary


def _run(jobs: list[Job], config: PrepareConfig, out_dir: Path) -> Iterator[ManifestRow | BadRow]:
    """Results in completion order; worker processes when asked (cutting is CPU-bound)."""
    if config.workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield prepare_one(job, config, out_dir)
        return
    with ProcessPoolExecutor(max_workers=min(config.workers, len(jobs))) as pool:
        futures = [pool.submit(prepare_one, job, config, out_dir) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _strict_error(bad: BadRow) -> DataError:
    return DataError(f"{bad.format()} (--strict stops at the first bad row: fix it, or drop "
                     "--strict to skip bad rows with a report)")


def _write_rejected(path: Path, bad: list[BadRow]) -> None:
    if not bad:
        path.unlink(missing_ok=True)
        return
    text = _csv_line(("where", "line", "reason", "detail")) + "".join(
        _csv_line((b.where, "" if b.line is None else str(b.line), b.reason, b.detail))
        for b in bad)
    _write_atomic(path, text.encode("utf-8"))
