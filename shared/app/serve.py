"""`serve`: a local web page where you type a sentence and watch the model sign it.

Why a standard-library server and not Gradio (the field's convention for model demos): the
page needs one form, a progress line and a GIF, and `http.server` does that with no new
dependency, in one request for the page, with a server a test can start on a free port. Gradio
measured on the same CPU (docs/serve.md): 54 packages and 367 MB installed, 2.3 s to import,
a page of 47 requests usable after 1.0 s, against 0.2 s to import this module and a 10 kB page
in one request, usable after 0.16 s.

The pieces, each usable without a socket:

* `Vocabulary`: the words of the checkpoint's training captions (its `data.data_dir`), so the
  page can warn about words the model never saw; unknown when that folder is gone.
* `parse_request`: a request's JSON into a validated caption and `SampleConfig`, or an
  `InputError` whose message the page shows (empty text, too long, a seed or step count out
  of range, ...).
* `JobQueue`: generation jobs in submission order, run by `concurrency` worker threads (one on
  a CPU: generations there share the same cores, so running two at once only makes both
  slower), each job reporting "step i of n" while it samples. Queued jobs hold only their
  request, so memory does not grow with the queue; at most `max_queue` wait, and only the
  newest `keep` finished jobs (and their files) are remembered.
* `ServeApp.handle`: one HTTP request in, one `Response` out; never raises.
* `make_server` / `serve`: the `ThreadingHTTPServer` around it, and the verb's body.

The model is loaded once per process (`Backend.load_sampler`), so a request pays only for the
sampler steps, and a checkpoint deleted or overwritten while serving changes nothing.
"""

from __future__ import annotations

import ipaddress
import json
import math
import queue
import re
import shutil
import signal
import tempfile
import threading
import time
import traceback
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from shared.config import Config, ConfigError, DataConfig, SampleConfig
from shared.data.clips import DataError, DataReport, find_clips
from shared.diffusion.sampling import SAMPLERS

MAX_CHARS = 500  # a sentence, not a document: the text encoder reads 32 tokens anyway
MAX_SAMPLES = 8
MAX_QUEUE = 64
KEEP_JOBS = 100
MAX_BODY = 64 * 1024  # a 500-character sentence in JSON is far below; a 10,000 one still fits
SEED_MAX = 2**32 - 1
MAX_GUIDANCE = 50.0
DEFAULT_PORT = 7860
POLL_MS = 100

Log = Callable[[str], None]


class InputError(ValueError):
    """A request the page can explain: the message is shown to the person who typed it."""


# ------------------------------------------------------------------------------ vocabulary


def words_of(text: str) -> list[str]:
    """The words of a caption as the vocabulary counts them: case-folded, split at white space,
    punctuation stripped from each end ("Hello," -> "hello"). Symbols stay (an emoji is a word
    the model never saw), and so does non-Latin text."""
    words = []
    for token in text.casefold().split():
        start, end = 0, len(token)
        while start < end and unicodedata.category(token[start]).startswith("P"):
            start += 1
        while end > start and unicodedata.category(token[end - 1]).startswith("P"):
            end -= 1
        if start < end:
            words.append(token[start:end])
    return words


@dataclass(frozen=True)
class Vocabulary:
    """The words of the training captions, or None with why they are unknown (`note`).

    Read once at start from the checkpoint's `data.data_dir` (or `serve --data`), the same way
    training found its clips (`find_clips`: .txt captions or the labels CSV).
    """

    words: frozenset[str] | None
    note: str
    captions: int = 0

    @property
    def known(self) -> bool:
        return self.words is not None

    def unknown(self, text: str) -> list[str]:
        """`text`'s words the training captions never had, each once, in order (none when the
        vocabulary itself is unknown)."""
        if self.words is None:
            return []
        return list(dict.fromkeys(w for w in words_of(text) if w not in self.words))

    @classmethod
    def from_config(cls, config: Config, checkpoint: Path | None = None,
                    data_dir: str | Path | None = None) -> Vocabulary:
        """The vocabulary of `data_dir`, else of the config's `data.data_dir`: as written, then
        (when relative) beside the run the checkpoint belongs to."""
        if data_dir is not None:
            candidates = [Path(data_dir)]
        else:
            raw = Path(config.data.data_dir)
            candidates = [raw]
            if not raw.is_absolute() and checkpoint is not None:
                run = Path(checkpoint).resolve()
                candidates += [run.parent.parent / raw, run.parent.parent.parent / raw]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            return cls(None, f"unknown: the training data folder {candidates[0]} is missing, so "
                             "words cannot be checked (serve --data DIR names another)")
        labels = config.data.labels_file if data_dir is None else None
        try:
            clips = find_clips(DataConfig(data_dir=str(folder), labels_file=labels),
                               DataReport())
        except DataError as e:
            return cls(None, f"unknown: {e}")
        if not clips:
            return cls(None, f"unknown: no captioned clips in {folder}")
        words = frozenset(w for clip in clips for w in words_of(clip.caption))
        return cls(words, f"the captions of {len(clips)} training clips in {folder}", len(clips))


# ------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. `max_steps` defaults to the model's noise schedule
    (`diffusion.num_train_timesteps`), the most any sampler can take."""

    max_steps: int
    max_chars: int = MAX_CHARS
    max_samples: int = MAX_SAMPLES

    def to_dict(self) -> dict[str, Any]:
        return {"max_steps": self.max_steps, "max_chars": self.max_chars,
                "max_samples": self.max_samples, "max_seed": SEED_MAX,
                "max_guidance": MAX_GUIDANCE}


def _given(body: Mapping[str, Any], key: str) -> Any:
    value = body.get(key)
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _number(value: Any) -> float:
    """A JSON or form value as a float (ValueError otherwise); true / false are not numbers."""
    if isinstance(value, bool):
        raise ValueError
    return float(value)  # strings too, surrounding spaces allowed


def _whole(body: Mapping[str, Any], key: str, label: str, default: int, low: int, high: int,
           why: str = "") -> int:
    value = _given(body, key)
    if value is None:
        return default
    try:
        number = _number(value)
        if not math.isfinite(number) or number != int(number):
            raise ValueError
        number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{label} must be a whole number from {low} to {high}; got "
                         f"{str(value)[:40]!r}") from None
    if not low <= number <= high:
        raise InputError(f"{label} must be from {low} to {high}{why}; got {number:,}")
    return number


def _real(body: Mapping[str, Any], key: str, label: str, default: float, low: float,
          high: float) -> float:
    value = _given(body, key)
    if value is None:
        return default
    try:
        number = _number(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{label} must be a number from {low:g} to {high:g}; got "
                         f"{str(value)[:40]!r}") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise InputError(f"{label} must be from {low:g} to {high:g}; got {number:g}")
    return number


def parse_request(body: Any, config: Config, limits: Limits) -> tuple[str, SampleConfig]:
    """A request's JSON (`text`, and optionally `sampler`, `steps`, `guidance`, `seed`,
    `num_samples`; a missing or empty field takes the checkpoint's default) as the caption to
    sign and the sampling settings; an `InputError` with the page's message otherwise.

    The caption's white space is collapsed as training captions' was. Numbers may come as JSON
    numbers or as the strings a form gives.
    """
    if not isinstance(body, Mapping):
        raise InputError("send a JSON object such as {\"text\": \"hello friend\"}")
    text = body.get("text", "")
    if not isinstance(text, str):
        raise InputError("text must be a string")
    text = " ".join(text.split())
    if not text:
        raise InputError("Type a sentence first: the text is empty.")
    if len(text) > limits.max_chars:
        raise InputError(f"The text is {len(text):,} characters long; the limit is "
                         f"{limits.max_chars}. Shorten it: the model signs short sentences (its "
                         f"text encoder reads {config.text.max_length} tokens at most).")
    defaults = config.sample
    sampler = _given(body, "sampler") or defaults.sampler
    if sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}; got "
                         f"{str(sampler)[:40]!r}")
    schedule = config.diffusion.num_train_timesteps
    why = (f" (the model's noise schedule has {schedule} steps)"
           if limits.max_steps == schedule else " (this server's --max-steps)")
    steps = _whole(body, "steps", "steps", defaults.steps, 1, limits.max_steps, why)
    guidance = _real(body, "guidance", "guidance", defaults.guidance, 0.0, MAX_GUIDANCE)
    seed = _whole(body, "seed", "seed", defaults.seed, 0, SEED_MAX)
    samples = _whole(body, "num_samples", "samples", defaults.num_samples, 1,
                     limits.max_samples)
    sample = replace(defaults, sampler=sampler, steps=steps, guidance=guidance, seed=seed,
                     num_samples=samples)
    try:
        replace(config, sample=sample).validate()
    except ConfigError as e:  # anything the checks above do not cover
        raise InputError(str(e)) from None
    return text, sample


def settings_of(sample: SampleConfig) -> dict[str, Any]:
    """What the page shows and the job reports of its sampling settings."""
    return {"sampler": sample.sampler, "steps": sample.steps, "guidance": sample.guidance,
            "seed": sample.seed, "num_samples": sample.num_samples, "eta": sample.eta,
            "timestep_spacing": sample.timestep_spacing}


# ------------------------------------------------------------------------------ the queue


@dataclass
class Job:
    """One request: queued, then running (with its step), then done (its files) or failed."""

    id: str
    number: int  # 1, 2, ...: the order the server received requests in
    text: str
    sample: SampleConfig
    warnings: list[str]
    state: str = "queued"
    step: int = 0
    steps: int = 0
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    files: list[Path] = field(default_factory=list)
    folder: Path | None = None
    error: str | None = None
    ran_as: int = 0  # 1, 2, ...: the order jobs started in (0: not yet)


class QueueFull(RuntimeError):
    """More jobs waiting than the server takes; the page says to try again shortly."""


class JobQueue:
    """Generation jobs in submission order, run by `workers` threads calling `run(job)` (which
    returns the written files and may call `job_step(job, i, n)` as it goes).

    Job numbers are given and jobs queued under one lock, so a single worker runs them exactly
    in the order they were received. A failing job is marked failed with a one-line message
    and the worker carries on. Finished jobs beyond the newest `keep` are forgotten, and
    `forget(job)` is called for each (to delete its files).
    """

    def __init__(self, run: Callable[[Job], list[Path]], *, workers: int = 1,
                 max_queue: int = MAX_QUEUE, keep: int = KEEP_JOBS,
                 forget: Callable[[Job], None] | None = None, log: Log | None = None):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._run, self._max_queue, self._keep = run, max_queue, keep
        self._forget, self._log = forget, log
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._pending: queue.Queue[Job | None] = queue.Queue()
        self._count = 0
        self._started = 0
        self._threads = [threading.Thread(target=self._work, name=f"t2s-serve-worker-{i}",
                                          daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, text: str, sample: SampleConfig, warnings: Iterable[str] = ()) -> Job:
        with self._lock:
            waiting = sum(job.state == "queued" for job in self._jobs.values())
            if waiting >= self._max_queue:
                raise QueueFull(f"{waiting} requests are already waiting (the limit is "
                                f"{self._max_queue}); try again in a moment")
            self._count += 1
            job = Job(uuid.uuid4().hex[:16], self._count, text, sample, list(warnings))
            self._jobs[job.id] = job
            self._pending.put(job)
            self._trim()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def ahead(self, job: Job) -> int:
        """How many jobs received before `job` are still waiting or running."""
        with self._lock:
            return sum(other.number < job.number and other.state in ("queued", "running")
                       for other in self._jobs.values())

    def counts(self) -> dict[str, int]:
        """How many jobs wait and how many run now."""
        with self._lock:
            states = [job.state for job in self._jobs.values()]
        return {"waiting": states.count("queued"), "running": states.count("running")}

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers after the jobs they are running (waiting jobs are dropped)."""
        for _ in self._threads:
            self._pending.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in ("done", "failed")]
        for job in finished[:max(0, len(finished) - self._keep)]:
            del self._jobs[job.id]
            if self._forget is not None:
                self._forget(job)

    def _work(self) -> None:
        while True:
            job = self._pending.get()
            if job is None:
                return
            with self._lock:
                self._started += 1
                job.ran_as = self._started
                job.state, job.started = "running", time.monotonic()
            try:
                job.files = self._run(job)
                job.state = "done"
            except Exception as e:  # one bad job must not stop the worker
                job.error = " ".join(f"{type(e).__name__}: {e}".split())[:500]
                job.state = "failed"
                if self._log is not None:
                    self._log(f"job {job.number} failed: {job.error}\n"
                              f"{traceback.format_exc().rstrip()}")
            finally:
                job.finished = time.monotonic()
                with self._lock:
                    self._trim()


# ------------------------------------------------------------------------------ the app


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, data: Mapping[str, Any]) -> Response:
    return Response(status, "application/json; charset=utf-8",
                    json.dumps(data, ensure_ascii=False).encode("utf-8"),
                    {"Cache-Control": "no-store"})


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, maybe in brackets) is this machine only."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host part of a Host header (`[::1]:8000` -> `::1`, `localhost:80` -> `localhost`)."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class ServeApp:
    """The page and its JSON API over one loaded sampler.

    GET /             the page (settings, vocabulary and limits inlined: one request)
    GET /api/info     the same facts as JSON
    POST /api/generate {"text": ..., "sampler", "steps", "guidance", "seed", "num_samples"}
                      -> 202 {"id", "number", "warnings", ...}; 400 {"error"} for bad input;
                      503 when the queue is full
    GET /api/jobs/ID  the job: state, place in the queue, step i of n, clips when done
    GET /files/ID/NAME a job's GIF or .txt caption
    """

    def __init__(self, sampler: Any, *, backend: str, vocabulary: Vocabulary, limits: Limits,
                 concurrency: int = 1, max_queue: int = MAX_QUEUE, keep: int = KEEP_JOBS,
                 out_dir: str | Path | None = None, loopback_only: bool = True,
                 checkpoint_label: str | None = None, log: Log | None = None):
        self.sampler, self.backend, self.vocabulary, self.limits = (sampler, backend,
                                                                    vocabulary, limits)
        self.checkpoint_label = checkpoint_label or str(sampler.checkpoint)
        self.config: Config = sampler.config
        self.loopback_only = loopback_only
        self._log = log
        self._keep_files = out_dir is not None
        self.out_dir = Path(out_dir) if out_dir is not None else Path(
            tempfile.mkdtemp(prefix="t2s-serve-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.queue = JobQueue(self._generate, workers=concurrency, max_queue=max_queue,
                              keep=keep, forget=self._forget, log=log)

    # ---------------------------------------------------------------- generation

    def _generate(self, job: Job) -> list[Path]:
        def on_step(i: int, n: int) -> None:
            job.step, job.steps = i, n

        job.folder = self.out_dir / f"{job.number:05d}-{job.id}"
        paths = self.sampler.write([job.text], job.folder, job.sample, on_step=on_step)
        if self._log is not None:
            s = job.sample
            self._log(f"job {job.number}: {job.text[:60]!r}, {s.sampler} {s.steps} steps, "
                      f"{s.num_samples} sample(s) in {time.monotonic() - job.started:.2f} s")
        return [Path(p) for p in paths]

    def _forget(self, job: Job) -> None:
        if not self._keep_files and job.folder is not None:
            shutil.rmtree(job.folder, ignore_errors=True)

    def close(self) -> None:
        self.queue.close()
        if not self._keep_files:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    # ---------------------------------------------------------------- facts

    def info(self) -> dict[str, Any]:
        """What the page needs to know: the defaults, the limits, the vocabulary, the model."""
        d = self.config.data
        vocab = self.vocabulary
        return {
            "defaults": settings_of(self.config.sample),
            "samplers": list(SAMPLERS),
            "limits": self.limits.to_dict(),
            "vocabulary": {"known": vocab.known, "note": vocab.note, "captions": vocab.captions,
                           "words": sorted(vocab.words) if vocab.words is not None else []},
            "model": {"checkpoint": self.checkpoint_label, "backend": self.backend,
                      "device": self.sampler.device_name, "frames": d.num_frames,
                      "size": d.image_size, "fps": self.config.sample.fps,
                      "text_tokens": self.config.text.max_length},
            "poll_ms": POLL_MS,
            "queue": self.queue.counts(),
        }

    def warnings_for(self, text: str) -> list[str]:
        """The page's warnings about a sentence: words the training captions never had, and
        tokens past what the text encoder reads."""
        out = []
        unknown = self.vocabulary.unknown(text)
        if unknown:
            shown = ", ".join(f"“{w}”" for w in unknown[:12]) + (" …" if len(unknown) > 12
                                                                  else "")
            out.append(f"The model never saw {shown} in its training captions: it will sign "
                       "something, but not " + ("that word." if len(unknown) == 1 else
                                                "those words."))
        count = getattr(self.sampler, "token_count", None)
        if count is not None:
            tokens, limit = count(text), self.config.text.max_length
            if tokens > limit:
                out.append(f"The text encoder reads the first {limit} tokens; this text has "
                           f"{tokens}, so its end is ignored.")
        return out

    def job_status(self, job: Job) -> dict[str, Any]:
        now = time.monotonic()
        started = job.started if job.started is not None else now
        status: dict[str, Any] = {
            "id": job.id, "number": job.number, "ran_as": job.ran_as, "state": job.state,
            "text": job.text,
            "settings": settings_of(job.sample), "warnings": job.warnings,
            "ahead": self.queue.ahead(job) if job.state == "queued" else 0,
            "step": job.step, "steps": job.steps or job.sample.steps,
            "queued_s": round(started - job.submitted, 3),
            "sampling_s": round((job.finished or now) - started, 3)
            if job.started is not None else 0.0,
        }
        if job.state == "done":
            status["clips"] = [self._clip(job, p) for p in job.files]
        if job.state == "failed":
            status["error"] = f"Generation failed: {job.error}"
        return status

    def _clip(self, job: Job, path: Path) -> dict[str, Any]:
        from shared.app.report_html import clip_size, display_scale

        w, h = clip_size(path)
        base = f"/files/{job.id}/"
        return {"gif": base + quote(path.name), "txt": base + quote(path.with_suffix(".txt").name),
                "name": path.name, "caption": job.text, "width": w, "height": h,
                "scale": display_scale((w, h)) if w and h else 1}

    # ---------------------------------------------------------------- HTTP

    def handle(self, method: str, target: str, headers: Mapping[str, str],
               body: bytes = b"") -> Response:
        """One request in, one response out; an unexpected error is a 500 with its message,
        never an exception (the server stays up)."""
        try:
            return self._route(method, target, headers, body)
        except Exception as e:
            if self._log is not None:
                self._log(f"error on {method} {target}: {traceback.format_exc().rstrip()}")
            return _error(500, f"the server failed on this request ({type(e).__name__}: {e})")

    def _route(self, method: str, target: str, headers: Mapping[str, str],
               body: bytes) -> Response:
        if self.loopback_only and not is_loopback(_host_name(headers.get("Host") or
                                                             "localhost")):
            # a page elsewhere pointing a name at 127.0.0.1 (DNS rebinding) gets nothing
            return _error(403, "this server answers only to localhost (see serve --host)")
        path = urlsplit(target).path
        if method in ("GET", "HEAD"):
            if path in ("/", "/index.html"):
                from shared.app.serve_page import render_page

                return Response(200, "text/html; charset=utf-8",
                                render_page(self.info()).encode("utf-8"),
                                {"Cache-Control": "no-store"})
            if path == "/api/info":
                return _json(200, self.info())
            if path.startswith("/api/jobs/"):
                job = self.queue.get(path.removeprefix("/api/jobs/"))
                if job is None:
                    return _error(404, "no such job (finished jobs are kept for the newest "
                                       f"{KEEP_JOBS} requests)")
                return _json(200, self.job_status(job))
            if path.startswith("/files/"):
                return self._file(path)
            if path == "/favicon.ico":
                return Response(204, "image/x-icon", b"")
            return _error(404, f"no page at {path}")
        if method == "POST" and path == "/api/generate":
            return self._submit(headers, body)
        if path == "/api/generate":
            return _error(405, "use POST with a JSON body")
        return _error(404 if method == "POST" else 405, f"no {method} at {path}")

    def _submit(self, headers: Mapping[str, str], body: bytes) -> Response:
        kind = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            # a form on another site can post text/plain without asking; JSON needs its consent
            return _error(415, "send the request as application/json")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return _error(400, "the request is not valid JSON")
        try:
            text, sample = parse_request(data, self.config, self.limits)
        except InputError as e:
            return _error(400, str(e))
        warnings = self.warnings_for(text)
        try:
            job = self.queue.submit(text, sample, warnings)
        except QueueFull as e:
            return _error(503, f"The server is busy: {e}.")
        return _json(202, self.job_status(job))

    def _file(self, path: str) -> Response:
        parts = path.split("/")
        if len(parts) != 4:
            return _error(404, "no such file")
        job = self.queue.get(parts[2])
        name = unquote(parts[3])
        if job is None or job.state != "done":
            return _error(404, "no such file (finished jobs are kept for the newest "
                               f"{KEEP_JOBS} requests)")
        allowed = {p.name: p for p in job.files} | {p.with_suffix(".txt").name:
                                                      p.with_suffix(".txt") for p in job.files}
        file = allowed.get(name)  # only the job's own files: no path from the URL is opened
        if file is None or not file.is_file():
            return _error(404, "no such file")
        kind = "image/gif" if file.suffix == ".gif" else "text/plain; charset=utf-8"
        return Response(200, kind, file.read_bytes(), {"Cache-Control": "max-age=3600"})


# ------------------------------------------------------------------------------ the server


class _Handler(BaseHTTPRequestHandler):
    server_version = "text2sign-serve"
    server: _Server

    def _reply(self, method: str) -> None:
        body = b""
        if method == "POST":
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self._send(_error(413, f"the request is too large (the limit is {MAX_BODY:,} "
                                       "bytes; a sentence needs far fewer)"), method)
                self.close_connection = True
                return
            body = self.rfile.read(length)
        self._send(self.server.app.handle(method, self.path, self.headers, body), method)

    def _send(self, response: Response, method: str) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._reply("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._reply("POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per job is logged by the app; per-poll lines would drown it


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 resets a burst of clients (twenty at once)
    app: ServeApp


def make_server(app: ServeApp, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> _Server:
    """The HTTP server for `app`, bound (port 0: a free port, read it from `server_port`)."""
    family = _Server.address_family
    if ":" in host:
        import socket

        family = socket.AF_INET6
    server_class = type("_BoundServer", (_Server,), {"address_family": family})
    try:
        server = server_class((host, port), _Handler)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another "
                         "--port, or --port 0 for a free one") from None
    server.app = app
    return server


def url_of(server: _Server) -> str:
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else str(host)
    if shown in ("0.0.0.0", "[::]"):
        shown = "127.0.0.1"
    return f"http://{shown}:{port}/"


def check_concurrency(concurrency: int, device_name: str) -> None:
    """One generation at a time on a CPU: two at once share the same cores, each slower, and
    the first video comes later than one after the other."""
    if concurrency < 1:
        raise ValueError(f"--concurrency {concurrency}: use 1 or more")
    if concurrency > 1 and device_name == "cpu":
        raise ValueError(f"--concurrency {concurrency} runs generations side by side, which "
                         "only helps on a GPU; on the CPU they share the same cores, so use "
                         "--concurrency 1 (requests then queue)")


def serve(backend: Any, checkpoint: str | Path, *, host: str = "127.0.0.1",
          port: int = DEFAULT_PORT, device: str | None = None, use_ema: bool = True,
          vae: str | None = None, concurrency: int = 1, data_dir: str | Path | None = None,
          out_dir: str | Path | None = None, max_steps: int | None = None,
          max_samples: int = MAX_SAMPLES, max_chars: int = MAX_CHARS,
          max_queue: int = MAX_QUEUE, log: Log = print,
          ready: Callable[[str], None] | None = None) -> None:
    """The `serve` verb: load the checkpoint once, then serve the page until Ctrl-C / SIGTERM.

    `ready(url)` is told the address once the server listens (tests; the CLI prints it).
    """
    if concurrency < 1:
        raise ValueError(f"--concurrency {concurrency}: use 1 or more")
    from shared.model.checkpoint import resolve_checkpoint

    resolve_checkpoint(checkpoint)  # a wrong path is told before the framework is imported
    sampler = backend.load_sampler(checkpoint, device=device, use_ema=use_ema, vae=vae)
    check_concurrency(concurrency, sampler.device_name)
    config: Config = sampler.config
    schedule = config.diffusion.num_train_timesteps
    if max_steps is not None and not 1 <= max_steps <= schedule:
        raise ValueError(f"--max-steps {max_steps}: use 1 to {schedule} (the model's noise "
                         "schedule)")
    vocabulary = Vocabulary.from_config(config, sampler.checkpoint, data_dir)
    resolved = Path(sampler.checkpoint)
    label = str(checkpoint) if Path(checkpoint).resolve() == resolved.resolve() else \
        f"{checkpoint} ({resolved.name})"  # as typed, with the step it stands for
    app = ServeApp(sampler, backend=backend.name, vocabulary=vocabulary,
                   limits=Limits(max_steps or schedule, max_chars, max_samples),
                   concurrency=concurrency, max_queue=max_queue, out_dir=out_dir,
                   loopback_only=is_loopback(host), checkpoint_label=label, log=log)
    try:
        server = make_server(app, host, port)
    except ValueError:
        app.close()
        raise
    url = url_of(server)
    if not is_loopback(host):
        log(f"warning: listening on {host}: anyone who can reach port {server.server_port} of "
            "this machine can use it (no login, no TLS); the default --host 127.0.0.1 keeps it "
            "to this machine")
    words = (f"{len(vocabulary.words)} words from {vocabulary.note}" if vocabulary.words
             is not None else f"vocabulary {vocabulary.note}")
    log(f"loaded {sampler.checkpoint} ({backend.name} on {sampler.device_name}); {words}")
    at_once = "one generation at a time" if concurrency == 1 else \
        f"{concurrency} generations at a time"
    log(f"serving at {url} ({at_once}; Ctrl-C stops)")
    if ready is not None:
        ready(url)
    previous = None
    if threading.current_thread() is threading.main_thread():
        def stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, stop)  # clean up the temporary clips too
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        log("stopped")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        server.server_close()
        app.close()


URL_PATTERN = re.compile(r"http://\S+/")  # the address `serve` prints, for scripts and tests
