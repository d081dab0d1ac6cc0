"""From a real sign-language corpus to training clips: cut, resample, fit, write, record.

Real corpora are long videos with sentence timestamps (How2Sign: a tab-separated CSV with
VIDEO_NAME, SENTENCE_NAME, START_REALIGNED, END_REALIGNED, SENTENCE, times in seconds) or
folders of word clips whose captions are their file names or sidecar `.txt` files. Training
wants a flat folder of short, equally shaped clips with same-named captions. `prepare_corpus`
turns the first into the second:

* Plan (`shared.data.prepare_plan`). Every segment row (or clip file) becomes a job with a
  deterministic output name (the row's SENTENCE_NAME, else the video's name plus the segment's
  times in milliseconds; for a clip folder, the file's path), or a bad row with its CSV line
  number and a reason. Rows that are wrong on their face (missing video, end before start, empty
  caption, unreadable times, a name used twice) are caught here, before any decoding, so
  `strict` stops before any work.
* Cut (`shared.data.prepare_cut`). A segment is decoded from the nearest keyframe before its start
  (PyAV seeks by timestamp), and frames are picked at `num_frames` uniformly spaced instants of
  the segment (the middle of each 1/N slice; `keep_fps` picks one per source frame interval
  instead). Only picked frames are converted to RGB, so a 10-minute 720p video costs its decode,
  not its memory. Segments past the video's end and undecodable files are found here.
* Fit and write: letterbox, crop or stretch (`fit_frames`) to the reference 180 x 320, then a
  GIF (or MP4) and a same-named `.txt` through shared.data.video's writers (atomic, so a crash never
  leaves a half-written clip). Output is byte-identical for the same input and settings,
  whatever the number of workers.
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
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from shared.data.clips import DataError
from shared.data.prepare_cut import FITS, SegmentError, cut_segment, fit_frames
from shared.data.prepare_plan import COLUMN_KEYS, BadRow, Job, plan_folder, plan_segments
from shared.data.video import write_video
from shared.io_atomic import write_bytes_atomic

# Bump when a change makes earlier outputs differ from what this version would write, so a
# resumed run redoes them instead of trusting the manifest.
PREPARE_VERSION = 1
FORMATS = ("gif", "mp4")
MANIFEST_FORMATS = ("csv", "jsonl")
MANIFEST_FIELDS = ("source", "start", "end", "caption", "output", "sha256", "frames", "line",
                   "settings")
REJECTED_NAME = "rejected.csv"


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
    write_bytes_atomic(path.with_suffix(".txt"), (job.caption + "\n").encode("utf-8"))
    return ManifestRow(job.source_rel, start, end, job.caption, path.name, file_sha256(path),
                       len(frames), job.line, config.fingerprint(), job.extra)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        write_bytes_atomic(self.path, text.encode("utf-8"))

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
    write_bytes_atomic(path, text.encode("utf-8"))
