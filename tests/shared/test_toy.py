"""The toy-signer set and its faithfulness metric.

The metric is only worth something if it (a) recognises the toy set's own clips at every size
the pipeline uses, (b) says "chance" for clips that carry no or the wrong meaning, and (c) reads
hand positions correctly -- checked here against discs drawn by the test itself, not by the
renderer. Sizes are kept small where the point allows, so the file runs in seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from shared.data import toy
from shared.data.video import read_video, write_video
from shared.evaluation import toyjudge

NUM_PROMPTS = 20
CLIPS_PER_PROMPT = 6


def train_view(clip: np.ndarray, frames: int, size: int,
               resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """What the training loader feeds the model: uniform frame resample, centre square crop,
    resize with Pillow."""
    f, h, w, _ = clip.shape
    idx = np.round(np.linspace(0, f - 1, frames)).astype(int)
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return np.stack([np.asarray(Image.fromarray(clip[i, y0:y0 + side, x0:x0 + side])
                                .resize((size, size), resample)) for i in idx])


def upper_bound_at_chance(score: toyjudge.ToyScore, sigmas: float = 3.0) -> float:
    return score.chance + sigmas * score.chance_stderr


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return toy.sample_prompts(NUM_PROMPTS, seed=3)


@pytest.fixture(scope="module")
def reference_set(prompts: list[str]) -> tuple[list[np.ndarray], list[str]]:
    """Clips at the reference size (28 x 180 x 320), each prompt by several random signers."""
    captions = [prompts[i % NUM_PROMPTS] for i in range(NUM_PROMPTS * CLIPS_PER_PROMPT)]
    clips = [toy.render_clip(c, seed=np.random.default_rng([11, i]))
             for i, c in enumerate(captions)]
    return clips, captions


# --------------------------------------------------------------------------------------------
# Vocabulary, sentences, signers
# --------------------------------------------------------------------------------------------


def test_vocabulary_and_captions() -> None:
    assert len(toy.VOCABULARY) >= 16
    assert len(set(toy.VOCABULARY)) == len(toy.VOCABULARY)
    assert toy.parse_caption("Hello,  THANKS!") == ("hello", "thanks")
    assert toy.caption_text(["Yes", "no"]) == "yes no"
    with pytest.raises(ValueError, match="xylophone"):
        toy.parse_caption("hello xylophone")
    with pytest.raises(ValueError):
        toy.parse_caption("  ")


def test_words_are_far_apart() -> None:
    """Every pair of words differs by much more than the metric's error on a word's own clips
    (~0.02-0.03 frame heights), at full and at short length."""
    for frames in (28, 8):
        refs = np.stack([toy.reference_trajectory(w, frames) for w in toy.VOCABULARY])
        m = toyjudge.trajectory_errors(refs, refs)
        assert np.allclose(np.diag(m), 0.0, atol=1e-9)
        np.fill_diagonal(m, np.inf)
        assert m.min() > 0.06, m.min()


def test_sentences_have_one_to_three_distinct_words() -> None:
    rng = np.random.default_rng(0)
    sentences = [toy.sample_sentence(rng) for _ in range(300)]
    assert {len(s) for s in sentences} == {1, 2, 3}
    assert all(len(set(s)) == len(s) for s in sentences)
    assert all(w in toy.VOCABULARY for s in sentences for w in s)
    subset = toy.VOCABULARY[:5]
    assert all(w in subset for _ in range(50) for w in toy.sample_sentence(rng, subset))


def test_signer_palette_never_passes_for_a_glove() -> None:
    """Hands must stay detectable whatever the signer looks like: every body / background
    colour a signer can get has zero glove evidence, every glove colour full evidence for its
    own hand and none for the other."""
    rng = np.random.default_rng(1)
    body, gloves = [], []
    for _ in range(500):
        s = toy.sample_signer(rng)
        body += [s.background, s.floor, s.clothing, s.skin, s.hair]
        gloves.append(s.gloves)
    w0, w1 = toyjudge._glove_weights(np.asarray(body, np.float32))
    assert w0.max() == 0.0 and w1.max() == 0.0
    g = np.asarray(gloves, np.float32)  # (n, 2, 3)
    left, right = toyjudge._glove_weights(g[:, 0]), toyjudge._glove_weights(g[:, 1])
    assert left[0].min() == 1.0 and left[1].max() == 0.0
    assert right[1].min() == 1.0 and right[0].max() == 0.0


def test_signer_variation_really_varies() -> None:
    caption = "hello thanks"
    signers = [toy.sample_signer(np.random.default_rng([7, i])) for i in range(20)]
    assert len({s.background for s in signers}) == 20
    assert len({s.clothing for s in signers}) == 20
    assert len({s.skin for s in signers}) == 20
    assert np.std([s.offset[0] for s in signers]) > 0.015
    assert np.ptp([s.scale for s in signers]) > 0.08
    assert np.ptp([s.lead for s in signers]) > 0.03
    clips = [toy.render_clip(caption, 12, 45, 80, signer=s) for s in signers[:5]]
    corners = {tuple(c[0, 0, 0]) for c in clips}
    assert len(corners) == 5
    # Same words, different signers: hand paths differ (position, size, tempo) ...
    paths = np.stack([toy.sentence_trajectory(caption, 28, s) for s in signers])
    assert np.abs(paths - paths.mean(0)).mean() > 0.01
    # ... but stay inside the central square that training crops to (hand radius included).
    assert np.abs(paths[..., 0]).max() + 1.1 * toy.HAND_RADIUS * 1.08 < 0.5
    assert paths[..., 1].min() > 0.08 and paths[..., 1].max() < 0.95


def test_render_is_deterministic_and_sized() -> None:
    a = toy.render_clip("yes no", num_frames=7, height=36, width=64, seed=5)
    b = toy.render_clip("yes no", num_frames=7, height=36, width=64, seed=5)
    c = toy.render_clip("yes no", num_frames=7, height=36, width=64, seed=6)
    assert a.shape == (7, 36, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    full = toy.render_clip("help")
    assert full.shape == (toy.REFERENCE_FRAMES, toy.REFERENCE_HEIGHT, toy.REFERENCE_WIDTH, 3)
    assert len(np.unique(full[:, :, :, 1])) > 3  # frames really hold a drawing


# --------------------------------------------------------------------------------------------
# Hand tracking against an independent expectation
# --------------------------------------------------------------------------------------------


def _disc_clip(height: int, width: int, centres: list[tuple[float, float]], radius: float,
               rgb: tuple[int, int, int] = (40, 200, 40)) -> np.ndarray:
    """Grey frames with a glove-coloured disc per frame; centres in continuous pixel units
    (pixel (i, j) spans [j, j + 1) x [i, i + 1))."""
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    frames = np.full((len(centres), height, width, 3), 128, np.uint8)
    for f, (x, y) in enumerate(centres):
        frames[f][(xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2] = rgb
    return frames


@pytest.mark.parametrize("height,width", [(16, 16), (32, 32), (64, 64), (48, 80), (180, 320)])
def test_track_hands_finds_a_disc_where_it_was_drawn(height: int, width: int) -> None:
    rng = np.random.default_rng(height * width)
    r = max(2.0, toy.HAND_RADIUS * height)
    centres = [(float(rng.uniform(r + 1, width - r - 1)), float(rng.uniform(r + 1, height - r - 1)))
               for _ in range(6)]
    got = toyjudge.track_hands(_disc_clip(height, width, centres, r))
    expect = np.array([((x - width / 2) / height, y / height) for x, y in centres])
    err_px = np.abs(got[:, 0] - expect) * height
    assert err_px.max() <= 1.0, err_px
    assert np.isnan(got[:, 1]).all()  # no magenta glove in the clip


def test_track_hands_tells_the_gloves_apart() -> None:
    h, w = 64, 64
    clip = _disc_clip(h, w, [(20.0, 30.0)], 5.0, (40, 200, 40))
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    clip[0][(xx - 45.0) ** 2 + (yy - 40.0) ** 2 <= 25.0] = (210, 40, 210)
    got = toyjudge.track_hands(clip)[0]
    np.testing.assert_allclose(got[0], [(20 - 32) / 64, 30 / 64], atol=1 / 64)
    np.testing.assert_allclose(got[1], [(45 - 32) / 64, 40 / 64], atol=1 / 64)


def test_track_hands_follows_the_rendered_signer() -> None:
    signer = toy.sample_signer(np.random.default_rng(4))
    clip = toy.render_clip("friend water", 16, 90, 160, signer=signer)
    truth = toy.sentence_trajectory("friend water", 16, signer)
    got = toyjudge.track_hands(clip)
    assert not np.isnan(got).any()
    assert np.abs(got - truth).max() < 2.0 / 90  # within two pixels


def test_track_hands_on_noise_and_blank_finds_nothing() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    assert np.isnan(toyjudge.track_hands(noise)).mean() > 0.9
    assert np.isnan(toyjudge.track_hands(np.zeros((4, 32, 32, 3), np.uint8))).all()
    assert toyjudge.track_hands(np.zeros((32, 32, 3), np.uint8)).shape == (1, 2, 2)
    with pytest.raises(ValueError):
        toyjudge.track_hands(np.zeros((4, 32, 32), np.uint8))


# --------------------------------------------------------------------------------------------
# The metric: faithful clips score high, meaningless or mismatched ones at chance
# --------------------------------------------------------------------------------------------


def test_own_clips_are_identified_at_reference_size(reference_set) -> None:
    clips, captions = reference_set
    score = toyjudge.score_clips(clips, captions)
    assert score.num_prompts == NUM_PROMPTS >= 16
    assert score.chance == pytest.approx(1 / NUM_PROMPTS)
    assert score.accuracy >= 0.95, score
    assert score.detection_rate > 0.99
    assert score.mean_error < 0.04
    assert score.errors.shape == (len(clips),)
    assert score.error_matrix.shape == (len(clips), NUM_PROMPTS)
    text = str(score)
    assert "chance" in text and f"{score.accuracy:.1%}" in text


@pytest.mark.parametrize("frames,size,resample", [
    (28, 64, Image.Resampling.BICUBIC),
    (16, 32, Image.Resampling.BILINEAR),
    (16, 16, Image.Resampling.BOX),
])
def test_own_clips_are_identified_after_the_training_crop(reference_set, frames, size,
                                                          resample) -> None:
    clips, captions = reference_set
    small = [train_view(c, frames, size, resample) for c in clips]
    score = toyjudge.score_clips(small, captions)
    assert score.accuracy >= 0.95, score
    # The closed prompt list is not what makes it easy: every sentence of the reference set,
    # and many more, as candidates.
    extra = toy.sample_prompts(200, seed=99)
    wide = toyjudge.score_clips(small, captions, candidate_prompts=[*captions, *extra])
    assert wide.num_prompts > 150
    assert wide.accuracy >= 0.9, wide


def test_noise_and_blank_clips_score_at_chance(prompts) -> None:
    rng = np.random.default_rng(5)
    n = 400
    captions = [prompts[i % NUM_PROMPTS] for i in range(n)]
    noise = [rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8) for _ in range(n)]
    score = toyjudge.score_clips(noise, captions)
    assert score.accuracy <= upper_bound_at_chance(score), score
    # Coloured blobs of noise at the reference size as well.
    big = [rng.integers(0, 256, (28, 180, 320, 3), dtype=np.uint8) for _ in range(8)]
    big_score = toyjudge.score_clips(big, captions[:8], candidate_prompts=prompts)
    assert np.isfinite(big_score.errors).all()
    blank = toyjudge.score_clips([np.zeros((16, 32, 32, 3), np.uint8)] * 3, captions[:3])
    assert blank.accuracy == 0.0
    assert blank.detection_rate == 0.0
    np.testing.assert_allclose(blank.errors, toyjudge.MISSING_PENALTY)
    assert blank.predictions == ("", "", "")


def test_shuffled_captions_score_at_chance(reference_set) -> None:
    clips, captions = reference_set
    tracks = [toyjudge.track_hands(train_view(c, 16, 32)) for c in clips]
    rng = np.random.default_rng(0)
    accs = []
    for _ in range(5):  # several shuffles of the same clips: a real sample, not one draw
        shuffled = [captions[i] for i in rng.permutation(len(captions))]
        accs.append(toyjudge.score_clips(clips, shuffled, tracks=tracks).accuracy)
    score = toyjudge.score_clips(clips, captions, tracks=tracks)
    n = 5 * len(clips)
    chance = score.chance
    assert np.mean(accs) <= chance + 3 * math.sqrt(chance * (1 - chance) / n), accs
    # A deliberate mismatch (every clip with another prompt's caption) never counts as right.
    wrong = [captions[(i + 1) % len(captions)] for i in range(len(captions))]
    assert toyjudge.score_clips(clips, wrong, tracks=tracks).accuracy == 0.0


def test_partly_missing_hands_do_not_crash(reference_set) -> None:
    clips, captions = reference_set
    clip = train_view(clips[0], 16, 32).copy()
    clip[5:9] = 128  # hands gone for a few frames
    score = toyjudge.score_clips([clip], [captions[0]], candidate_prompts=captions[:NUM_PROMPTS])
    assert 0.7 < score.detection_rate < 0.8
    assert np.isfinite(score.errors).all()


def test_score_clips_checks_its_inputs(prompts) -> None:
    clip = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="candidate"):
        toyjudge.score_clips([clip], ["hello"], candidate_prompts=["yes", "no"])
    with pytest.raises(ValueError):
        toyjudge.score_clips([clip, clip], ["hello"])


# --------------------------------------------------------------------------------------------
# The data set on disk
# --------------------------------------------------------------------------------------------


def test_dataset_gif_round_trip_scores_and_captions(tmp_path) -> None:
    items = toy.make_toy_dataset(tmp_path / "toy", n=40, seed=2, num_prompts=NUM_PROMPTS,
                                 progress=False)
    assert len(items) == 40
    prompts = (tmp_path / "toy" / "prompts.txt").read_text().splitlines()
    assert len(prompts) == len(set(prompts)) == NUM_PROMPTS
    clips, captions = [], []
    for path, caption in items:
        assert path.suffix == ".gif" and path.exists()
        assert path.with_suffix(".txt").read_text().strip() == caption
        assert caption in prompts
        clip, _ = read_video(path)
        assert clip.shape == (28, 180, 320, 3)
        clips.append(clip)
        captions.append(caption)
    assert sorted(captions.count(p) for p in prompts) == [2] * NUM_PROMPTS  # balanced
    score = toyjudge.score_clips(clips, captions, candidate_prompts=prompts)
    assert score.accuracy >= 0.95, score
    # Write + read a generated-size clip too: the loader's view survives GIF quantisation.
    small = [train_view(c, 16, 32) for c in clips]
    for i, c in enumerate(small):
        write_video(tmp_path / f"s{i}.gif", c)
    back = [read_video(tmp_path / f"s{i}.gif")[0] for i in range(len(small))]
    assert toyjudge.score_clips(back, captions, candidate_prompts=prompts).accuracy >= 0.95


def test_dataset_is_deterministic(tmp_path) -> None:
    kw = dict(n=5, num_frames=6, height=36, width=64, progress=False)
    a = toy.make_toy_dataset(tmp_path / "a", seed=1, **kw)
    b = toy.make_toy_dataset(tmp_path / "b", seed=1, **kw)
    c = toy.make_toy_dataset(tmp_path / "c", seed=2, **kw)
    assert [cap for _, cap in a] == [cap for _, cap in b]
    for (pa, _), (pb, _) in zip(a, b):
        assert pa.name == pb.name and pa.read_bytes() == pb.read_bytes()
    assert any(pa.read_bytes() != pc.read_bytes() for (pa, _), (pc, _) in zip(a, c))
    # Each clip has its own stream: a longer data set starts with the same clips.
    longer = toy.make_toy_dataset(tmp_path / "d", seed=1, **{**kw, "n": 7})
    assert [cap for _, cap in longer[:5]] == [cap for _, cap in a]
    assert longer[4][0].read_bytes() == a[4][0].read_bytes()


def test_dataset_options(tmp_path) -> None:
    items = toy.make_toy_dataset(tmp_path / "v", n=30, seed=0, num_frames=4, height=18,
                                 width=32, vocab_size=4, max_words=2, progress=False)
    words = {w for _, cap in items for w in cap.split()}
    assert words <= set(toy.VOCABULARY[:4])
    assert {len(cap.split()) for _, cap in items} <= {1, 2}
    listed = (tmp_path / "v" / "prompts.txt").read_text().splitlines()
    assert set(listed) == {cap for _, cap in items}
    mp4 = toy.make_toy_dataset(tmp_path / "m", n=2, seed=0, num_frames=8, height=90, width=160,
                               fmt="mp4", progress=False)
    clip, _ = read_video(mp4[0][0])
    assert clip.shape == (8, 90, 160, 3)
    assert mp4[0][0].with_suffix(".txt").exists()
    with pytest.raises(ValueError):
        toy.make_toy_dataset(tmp_path / "x", n=1, fmt="avi", progress=False)
    with pytest.raises(ValueError):
        toy.sample_prompts(10, vocab=1, max_words=1)
