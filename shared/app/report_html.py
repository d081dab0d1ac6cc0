"""A results page: `index.html` beside a folder of generated clips, readable offline.

A folder of `000_hello.gif` files says little until someone looks at them with their captions,
the sampler settings that made them and what the metric said about each. `write_results_page`
writes one static HTML page (no script, no network: it opens from disk, or from a copied
folder) that shows every clip large enough to see the hands, its whole caption, its seed and
settings, its per-clip score where the folder was scored, and the reference clip of the same
caption beside it when references are given. Small clips are enlarged by a whole factor with
`image-rendering: pixelated`, so each model pixel is a crisp square rather than a blur.

`sample` writes the page with its settings (and `sampling.json`, so a later `eval` of the same
folder keeps them); `eval` and the demo rewrite it with the scores, and for a demo's sets also
write one page of them all (`write_sets_page`) in the folder above. `eval --reference` adds each
clip's PSNR, SSIM, DTW-MJE, ... beside its shuffled-caption baseline and a reference clip of its
caption (`reference_scores`).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from shared.config import DataConfig, SampleConfig
from shared.data.clips import DataReport, find_clips

PAGE = "index.html"
SETTINGS_FILE = "sampling.json"  # what `sample` used, kept for pages written later (eval)
STATE_FILE = "page.json"  # the page's title and reference clips, kept for pages written later
TARGET_PX = 200  # clips are enlarged by the whole factor that brings their short side near this
_VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".m4v")


@dataclass(frozen=True)
class PageClip:
    """One clip on the page: the file, its caption, per-clip facts (seed, score) and an
    optional reference clip of the same caption."""

    path: Path
    caption: str
    details: tuple[tuple[str, str], ...] = ()
    reference: Path | None = None
    verdict: bool | None = None  # scored clips: did it name its own sentence? (colours the card)


@dataclass
class Section:
    """A heading (e.g. a demo's "unseen" set), its summary lines and its clips."""

    heading: str
    clips: list[PageClip]
    summary: list[str] = field(default_factory=list)


@dataclass
class PageContent:
    title: str
    sections: list[Section]
    settings: dict[str, Any] = field(default_factory=dict)


def sample_settings(sample: SampleConfig, checkpoint: str | Path | None = None,
                    use_ema: bool = True) -> dict[str, Any]:
    """The settings that, with the checkpoint, reproduce a sample folder exactly."""
    settings: dict[str, Any] = {"checkpoint": str(checkpoint)} if checkpoint else {}
    settings.update(sampler=sample.sampler, steps=sample.steps, eta=sample.eta,
                    guidance=sample.guidance, timestep_spacing=sample.timestep_spacing,
                    seed=sample.seed, num_samples=sample.num_samples, weights="EMA" if use_ema
                    else "raw")
    return settings


def folder_clips(folder: Path) -> list[PageClip]:
    """The captioned clips of `folder`, in the order `eval` scores them (the same discovery:
    `shared.data.clips.find_clips`); grid.gif has no caption, so it is not among them."""
    clips = find_clips(DataConfig(data_dir=str(folder)), DataReport())
    return [PageClip(c.path, c.caption) for c in clips]


def score_details(score: Any) -> list[tuple[tuple[tuple[str, str], ...], bool]]:
    """Per-clip facts of a `shared.evaluation.textfollow.SetScore`: whether the clip names its own
    sentence (and, when not, which one it looks like), words right by position, and the
    trajectory error; in the order the set was scored."""
    toy = score.score
    out = []
    for i in range(toy.num_clips):
        named = bool(toy.correct[i])
        guess = toy.predictions[i]
        facts = [("names its sentence", f"yes, among {toy.num_prompts}" if named
                  else f"no: closest is “{guess}”" if guess else "no: no hands found")]
        valid = score.position_valid[i]
        if valid.any():
            marks = " ".join(("✓" if score.position_correct[i, k] else "✗") if valid[k] else "·"
                             for k in range(len(valid)))
            facts.append(("words by position", marks))
        facts.append(("trajectory error", f"{float(toy.errors[i]):.3f}"))
        out.append((tuple(facts), named))
    return out


def reference_scores(result: Any) -> tuple[dict[str, Path], dict[Path, list[tuple[str, str]]]]:
    """What `eval --reference` adds to the page (a `shared.evaluation.refeval.RefEvalResult`): the
    first reference clip of each scored caption, and per clip file its metrics, each beside its
    shuffled-caption baseline."""
    from shared.evaluation.refeval import METRICS

    refs: dict[str, Path] = {}
    facts: dict[Path, list[tuple[str, str]]] = {}
    for clip in result.clips:
        if clip.references:
            refs.setdefault(clip.caption, Path(clip.references[0]))
        rows = [("references", str(len(clip.references)))]
        for key, label, _ in METRICS:
            value, base = clip.paired.get(key), clip.shuffled.get(key)
            if value is not None:
                rows.append((label, _num(value) + (f" (shuffled {_num(base)})"
                                                  if base is not None else "")))
        facts[Path(clip.path)] = rows
    return refs, facts


def _num(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3f}"


def references_by_caption(folder: Path | None) -> dict[str, Path]:
    """The first clip of each caption in a folder of reference clips (clip + .txt caption)."""
    if folder is None or not Path(folder).is_dir():
        return {}
    refs: dict[str, Path] = {}
    for clip in find_clips(DataConfig(data_dir=str(folder)), DataReport()):
        refs.setdefault(clip.caption, clip.path)
    return refs


def write_results_page(folder: str | Path, *, title: str | None = None,
                       settings: Mapping[str, Any] | None = None, score: Any = None,
                       references: Mapping[str, Path] | None = None,
                       summary: Sequence[str] = (), clips: Sequence[Path] | None = None,
                       extra: Mapping[Path, Sequence[tuple[str, str]]] | None = None) -> Path:
    """Write `folder/index.html` for the folder's clips and return its path.

    `settings` (sampler, seed, ...) are saved as `sampling.json`; without them the page uses
    the folder's saved ones, so scoring a folder later keeps what made it. `score` is the
    folder's `SetScore` (its clips in file order, as `eval` scores them); `references` maps a
    caption to a reference clip shown beside each clip of that caption; `clips` restricts the
    page to these files (what a run just wrote, not older files left in the folder); `extra`
    adds facts per clip file (another metric's per-clip figures, as (name, value) pairs)."""
    folder = Path(folder)
    fresh = settings is not None  # a run that just made the clips: forget an older page's state
    settings = _settings(folder, settings)
    title, references = _page_state(folder, title, references, fresh)
    section = folder_section(folder, folder.name, settings, score, references, summary, clips,
                             extra)
    return write_page(folder, PageContent(title or f"text2sign results: {folder.name}",
                                          [section], settings))


def write_sets_page(parent: str | Path, sets: Sequence[tuple[Path, Any]], *,
                    title: str | None = None, references: Mapping[str, Path] | None = None
                    ) -> Path:
    """Write `parent/index.html` with one section per (set folder, its SetScore or None): a
    demo's seen / unseen / longer clips on one page, each set's figures above its clips.
    Settings come from the first set's `sampling.json`."""
    parent = Path(parent)
    settings = _settings(Path(sets[0][0]), None) if sets else {}
    title, references = _page_state(parent, title, references, False)
    sections = [folder_section(Path(f), Path(f).name, settings, score, references,
                               [score.format()] if score is not None else [])
                for f, score in sets]
    return write_page(parent, PageContent(title or f"text2sign results: {parent.name}",
                                          sections, settings))


def _settings(folder: Path, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """`settings`, saved beside the clips; or, when None, the ones saved there before."""
    path = folder / SETTINGS_FILE
    if settings is not None:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(settings), indent=2) + "\n", encoding="utf-8")
        return dict(settings)
    if path.exists():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    return {}


def _page_state(folder: Path, title: str | None, references: Mapping[str, Path] | None,
                fresh: bool) -> tuple[str | None, Mapping[str, Path] | None]:
    """The page's title and reference clips: the ones given, saved beside the page (as paths
    relative to it); or, when not given, the ones saved there before, so that `eval` of a
    demo's samples rewrites the page with its scores and keeps the reference clips and title.
    `fresh` (a new sample run) drops what an older page saved."""
    path = folder / STATE_FILE
    saved: dict[str, Any] = {}
    if path.exists() and not fresh:
        try:
            saved = dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):  # a damaged note only costs the references
            saved = {}
    if title is None:
        title = saved.get("title")
    if references is None:
        references = {caption: (folder / rel) for caption, rel in
                      saved.get("references", {}).items() if (folder / rel).is_file()}
    state = {k: v for k, v in {
        "title": title,
        "references": {c: _relative(folder, Path(p)) for c, p in (references or {}).items()},
    }.items() if v}
    if state:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    elif path.exists():
        path.unlink()
    return title, references


def _relative(folder: Path, target: Path) -> str:
    """`target` relative to `folder` (so a copied results tree keeps it), else absolute."""
    try:
        return Path(os.path.relpath(target.resolve(), folder.resolve())).as_posix()
    except ValueError:  # another drive
        return target.resolve().as_posix()


def folder_section(folder: Path, heading: str, settings: Mapping[str, Any], score: Any = None,
                   references: Mapping[str, Path] | None = None, summary: Sequence[str] = (),
                   clips: Sequence[Path] | None = None,
                   extra: Mapping[Path, Sequence[tuple[str, str]]] | None = None) -> Section:
    """One folder's clips as a page section, with seeds, scores and references filled in."""
    entries = folder_clips(folder)
    if clips is not None:
        wanted = {Path(c).resolve() for c in clips}
        entries = [e for e in entries if e.path.resolve() in wanted]
    scored = score_details(score) if score is not None else None
    if scored is not None and len(scored) != len(entries):
        raise ValueError(f"{folder}: {len(scored)} scores for {len(entries)} clips")
    seed = settings.get("seed")
    more = {Path(k).resolve(): v for k, v in (extra or {}).items()}
    page_clips = []
    for i, entry in enumerate(entries):
        details: list[tuple[str, str]] = [("file", entry.path.name)]
        if seed is not None:  # one noise stream per folder; the clip is its batch row
            details.append(("seed", f"{seed}, batch row {_row(entry.path, i)}"))
        verdict = None
        if scored is not None:
            details.extend(scored[i][0])
            verdict = scored[i][1]
        details.extend(more.get(entry.path.resolve(), ()))
        ref = (references or {}).get(entry.caption)
        page_clips.append(PageClip(entry.path, entry.caption, tuple(details), ref, verdict))
    return Section(heading, page_clips, list(summary))


def _row(path: Path, index: int) -> int:
    """The batch row a sample file was drawn at: its `NNN_` prefix (else its place)."""
    head = path.stem.split("_", 1)[0]
    return int(head) if head.isdigit() else index


def write_page(folder: Path, content: PageContent) -> Path:
    """Render `content` to `folder/index.html`; every link is relative to the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / PAGE
    out.write_text(render(folder, content), encoding="utf-8")
    return out


def display_scale(size: tuple[int, int]) -> int:
    """The whole factor that brings the short side near TARGET_PX (1 for big clips)."""
    return max(1, round(TARGET_PX / max(1, min(size))))


def clip_size(path: Path) -> tuple[int, int]:
    """(width, height) of a clip without decoding it all (the first frame, or (0, 0))."""
    if path.suffix.lower() in _VIDEO_SUFFIXES:
        try:
            from shared.data.video import read_video

            frames, _ = read_video(path)
            return int(frames.shape[2]), int(frames.shape[1])
        except Exception:  # an unreadable clip still gets its card, at a default size
            return (0, 0)
    try:
        with Image.open(path) as image:
            return image.size
    except OSError:
        return (0, 0)


def _href(folder: Path, target: Path) -> str:
    try:
        rel = os.path.relpath(Path(target).resolve(), folder.resolve())
    except ValueError:  # another drive: an absolute file URL
        return Path(target).resolve().as_uri()
    return quote(Path(rel).as_posix())


def _media(folder: Path, path: Path, alt: str, css: str) -> str:
    """An enlarged, pixel-exact view of one clip, linking to the file."""
    w, h = clip_size(path)
    k = display_scale((w, h)) if w and h else 1
    width, height = (w * k, h * k) if w and h else (TARGET_PX, TARGET_PX)
    src, alt_text = _href(folder, path), html.escape(alt, quote=True)
    size = f'width="{width}" height="{height}"'
    if path.suffix.lower() in _VIDEO_SUFFIXES:
        tag = (f'<video class="{css}" src="{src}" {size} autoplay loop muted playsinline '
               f'title="{alt_text}"></video>')
    else:
        tag = f'<img class="{css}" src="{src}" {size} alt="{alt_text}">'
    return f'<a href="{src}">{tag}</a>'


_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #111; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .4em; }
table.settings { border-collapse: collapse; margin: .5em 0 1em; }
table.settings td { padding: .1em .8em .1em 0; }
table.settings td:first-child { color: #555; }
.summary { margin: 0 0 1em; padding-left: 1.2em; } .summary pre { margin: 0; }
.clips { display: flex; flex-wrap: wrap; gap: 16px; }
.card { background: #fff; border: 2px solid #ddd; border-radius: 6px; padding: 8px;
        max-width: 100%; }
.card.right { border-color: #4a4; } .card.wrong { border-color: #c44; }
.pair { display: flex; gap: 8px; align-items: flex-start; }
.pair figure { margin: 0; }
.pair figcaption { font-size: .8em; color: #555; }
img, video { image-rendering: pixelated; image-rendering: crisp-edges; display: block;
             background: #eee; }
.caption { font-weight: 600; margin: .4em 0 .2em; max-width: 420px; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 0 .6em; margin: 0; font-size: .85em; }
dt { color: #555; } dd { margin: 0; overflow-wrap: anywhere; }
"""


def render(folder: Path, content: PageContent) -> str:
    """The page's HTML: the settings, then per section its summary lines and one card per
    clip."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(content.title)}</title>", f"<style>{_STYLE}</style></head><body>",
             f"<h1>{esc(content.title)}</h1>"]
    if content.settings:
        rows = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(_fmt(v))}</td></tr>"
                       for k, v in content.settings.items())
        parts.append(f'<table class="settings">{rows}</table>')
    total = sum(len(s.clips) for s in content.sections)
    parts.append(f"<p>{total} clips; each links to its file. Small clips are enlarged by a "
                 "whole factor, one square per model pixel.</p>")
    for section in content.sections:
        if len(content.sections) > 1:
            parts.append(f"<h2>{esc(section.heading)}</h2>")
        if section.summary:  # a line per item; a table of several lines keeps its columns
            parts.append('<ul class="summary">' + "".join(
                f"<li><pre>{esc(s)}</pre></li>" if "\n" in s else f"<li>{esc(s)}</li>"
                for s in section.summary) + "</ul>")
        parts.append('<div class="clips">')
        parts.extend(_card(folder, clip) for clip in section.clips)
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _card(folder: Path, clip: PageClip) -> str:
    esc = html.escape
    verdict = {True: " right", False: " wrong", None: ""}[clip.verdict]
    figures = [f"<figure>{_media(folder, clip.path, clip.caption, 'sample')}"
               "<figcaption>generated</figcaption></figure>"]
    if clip.reference is not None:
        figures.append(f"<figure>{_media(folder, clip.reference, clip.caption, 'reference')}"
                       "<figcaption>reference</figcaption></figure>")
    details = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in clip.details)
    return (f'<div class="card{verdict}"><div class="pair">{"".join(figures)}</div>'
            f'<p class="caption">{esc(clip.caption)}</p><dl>{details}</dl></div>')


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return str(value)
