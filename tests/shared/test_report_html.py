"""The results page: every clip and caption on it, every link resolving, and, in a real headless
browser, the clips actually drawn (not broken-image icons) at their enlarged size."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from shared.app.report_html import (
    PAGE,
    SETTINGS_FILE,
    display_scale,
    reference_scores,
    references_by_caption,
    sample_settings,
    write_results_page,
    write_sets_page,
)
from shared.config import SampleConfig
from shared.data.toy import render_clip
from shared.data.video import read_video, write_sample_folder, write_video
from shared.evaluation.textfollow import score_set

# Vivid colours that appear nowhere else on the page, so the screenshot can find each clip.
COLOURS = [(230, 20, 20), (20, 200, 40), (30, 40, 220)]
CAPTIONS = ["hello", 'thanks <friend> & "you"', "a much longer caption that must be shown whole"]
REFERENCE_COLOUR = (250, 200, 0)


class _Links(HTMLParser):
    """Collects every src / href and the visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.images: list[dict[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append((tag, attrs[key]))
        if tag == "img":
            self.images.append(attrs)

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _solid(colour, frames=4, size=16) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (frames, size, size, 3)).copy()


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Path]:
    """A sample folder of three solid-colour clips and a reference folder for the first caption."""
    out = tmp_path / "samples"
    write_sample_folder(out, [_solid(c) for c in COLOURS], CAPTIONS)
    refs = tmp_path / "refs"
    refs.mkdir()
    write_video(refs / "ref.gif", _solid(REFERENCE_COLOUR, size=32), fps=10)
    (refs / "ref.txt").write_text(CAPTIONS[0] + "\n")
    return out, refs


def test_page_links_resolve_and_show_every_clip_and_caption(folder):
    out, refs = folder
    page = write_results_page(out, settings=sample_settings(SampleConfig(seed=7, steps=12),
                                                            checkpoint="runs/x"),
                              references=references_by_caption(refs))
    assert page == out / PAGE
    parsed = _parse(page)
    for _, link in parsed.links:
        assert (out / unquote(link)).resolve().is_file(), link
    shown = {(out / unquote(img["src"])).resolve() for img in parsed.images}
    clips = {p.resolve() for p in out.glob("0*.gif")}
    assert len(clips) == 3 and shown == clips | {(refs / "ref.gif").resolve()}
    assert (out / "grid.gif").resolve() not in shown
    text = " ".join(parsed.text)
    for caption in CAPTIONS:
        assert caption in text  # whole and unescaped back: the page escaped < & " correctly
    assert "7, batch row 2" in text and "runs/x" in text and "steps" in text
    for img in parsed.images:  # 16-pixel clips shown at 12x, the 32-pixel reference at 6x
        assert img["width"] == img["height"] == "192"
    assert "image-rendering: pixelated" in page.read_text()


def test_a_later_scored_page_keeps_the_settings_and_adds_each_clip_score(tmp_path: Path):
    out = tmp_path / "s"
    captions = ["hello", "thanks"]
    clips = [render_clip(c, 8, 48, 48, seed=i, hand_size=1.6) for i, c in enumerate(captions)]
    write_sample_folder(out, clips, captions)
    write_results_page(out, settings={"seed": 3, "sampler": "dpm++"})
    assert (out / SETTINGS_FILE).exists()
    score = score_set("s", clips, captions)
    text = " ".join(_parse(write_results_page(out, score=score)).text)
    assert "dpm++" in text and "3, batch row 1" in text  # from sampling.json
    for i in range(2):
        assert f"{float(score.score.errors[i]):.3f}" in text
    assert text.count("names its sentence") == 2
    assert text.count("yes, among 2") == int(score.score.correct.sum())
    blank = [_solid((200, 200, 200), frames=8, size=48)] * 2  # no hands to find
    write_sample_folder(tmp_path / "blank", blank, captions)
    text = " ".join(_parse(write_results_page(tmp_path / "blank",
                                              score=score_set("b", blank, captions))).text)
    assert text.count("no: no hands found") == 2 and "“no hands found”" not in text
    with pytest.raises(ValueError, match="1 scores for 2 clips"):
        write_results_page(out, score=score_set("s", clips[:1], captions[:1]))


def test_the_clips_are_as_readable_as_the_page(folder):
    """Clips are written under a temporary name and renamed; they must not keep mkstemp's
    0600, or a page served or shared by another user shows broken images."""
    out, _ = folder
    page = write_results_page(out)
    for clip in [*out.glob("0*.gif"), out / "grid.gif"]:
        assert clip.stat().st_mode & 0o777 == page.stat().st_mode & 0o777, clip.name


def test_only_the_clips_a_run_wrote_are_shown(folder):
    out, _ = folder
    keep = sorted(out.glob("0*.gif"))[:2]
    parsed = _parse(write_results_page(out, clips=keep))
    assert {unquote(i["src"]) for i in parsed.images} == {p.name for p in keep}


def test_eval_after_the_demo_keeps_its_reference_clips_and_title(tmp_path: Path):
    """The demo writes its pages with reference clips; `eval OUT/samples` rewrites them with
    scores and no references of its own: the references and the demo's title stay. A new
    `sample` run into the folder starts over (no stale references)."""
    samples, refs = tmp_path / "samples", tmp_path / "references"
    captions = ["hello", "thanks"]
    clips = [render_clip(c, 8, 48, 48, seed=i, hand_size=1.6) for i, c in enumerate(captions)]
    refs.mkdir()
    write_video(refs / "hello.gif", clips[0], fps=10)
    (refs / "hello.txt").write_text("hello\n")
    ref_map = references_by_caption(refs)
    sets = [samples / "seen", samples / "unseen"]
    for folder in sets:
        write_sample_folder(folder, clips, captions)
        write_results_page(folder, settings={"seed": 1}, references=ref_map)
    write_sets_page(samples, [(f, None) for f in sets], references=ref_map,
                    title="text2sign demo: toy, seed 0")
    # what `eval OUT/samples` does: each set's page, then the sets page, without references
    scored = [(f, score_set(f.name, clips, captions)) for f in sets]
    pages = [write_results_page(f, score=s, summary=[s.format()]) for f, s in scored]
    pages.append(write_sets_page(samples, scored))
    for page in pages:
        parsed = _parse(page)
        srcs = [(page.parent / unquote(i["src"])).resolve() for i in parsed.images]
        assert (refs / "hello.gif").resolve() in srcs, page
        assert all(p.is_file() for p in srcs)
        assert " ".join(parsed.text).count("names its sentence") == 2 * (
            len(sets) if page.parent == samples else 1)
    assert "text2sign demo: toy, seed 0" in pages[-1].read_text()
    # a fresh sample run into a set folder: its own page, the old references gone
    parsed = _parse(write_results_page(sets[0], settings={"seed": 2}))
    assert {unquote(i["src"]) for i in parsed.images} == {p.name for p in sets[0].glob("0*.gif")}


def test_eval_reference_shows_each_clip_metrics_and_its_reference(folder):
    """`eval --reference`'s page: per clip its PSNR, SSIM, ... beside the shuffled baseline,
    the reference clip of its caption beside it, and the summary table with its columns."""
    from shared.evaluation.refeval import METRICS, ClipResult, RefEvalConfig, RefEvalResult

    out, refs = folder
    gifs = sorted(out.glob("0*.gif"))
    paired = {k: None for k, _, _ in METRICS} | {"psnr": 21.25, "ssim": 0.5, "dtw_mje": 0.125}
    shuffled = dict(paired, psnr=12.5, ssim=0.25, dtw_mje=0.75)
    clips = [ClipResult(str(gifs[0]), CAPTIONS[0], [str(refs / "ref.gif")], [], 0.4, None,
                        None, None, paired, shuffled)]
    result = RefEvalResult(clips, [str(g) for g in gifs[1:]], 1, 1, RefEvalConfig(pose=False))
    refs_map, facts = reference_scores(result)
    page = write_results_page(out, references=refs_map, extra=facts, summary=[result.format()])
    parsed = _parse(page)
    text = " ".join(parsed.text)
    assert "21.250 (shuffled 12.500)" in text and "0.125 (shuffled 0.750)" in text
    assert text.count("PSNR (dB)") == 2  # the clip's card and the summary table
    assert (refs / "ref.gif").resolve() in {(out / unquote(i["src"])).resolve()
                                            for i in parsed.images}
    assert len(parsed.images) == len(gifs) + 1  # unmatched clips still shown, without scores
    assert "<pre>" in page.read_text()


def test_display_scale_is_a_whole_factor_near_200_pixels():
    assert display_scale((16, 16)) == 12 and display_scale((128, 128)) == 2
    assert display_scale((320, 180)) == 1 and display_scale((64, 48)) == 4


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="needs chromium (.ci/run installs it)")
def test_a_headless_browser_draws_every_clip(folder, tmp_path: Path):
    """Render the page in Chromium and find each clip's first-frame colour, over the whole
    enlarged box, in the screenshot: a broken link would draw an icon on a grey box instead."""
    out, refs = folder
    page = write_results_page(out, references=references_by_caption(refs))
    shot = tmp_path / "shot.png"
    subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--force-device-scale-factor=1",
                    "--window-size=1400,1400", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    files = [*sorted(out.glob("0*.gif")), refs / "ref.gif"]
    for path in files:
        first = read_video(path)[0][0]
        colour = first.reshape(-1, 3)[0]
        assert (first == colour).all()
        h, w = first.shape[:2]
        k = display_scale((w, h))
        found = (np.abs(pixels - colour).max(axis=-1) <= 2).sum()
        assert found >= 0.97 * (h * k) * (w * k), (path.name, found, h * k * w * k)
