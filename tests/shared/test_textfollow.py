"""The text-following protocol: the held-out split keeps its promises, and the per-position
score tells a clip that signs a word in the wrong place from one that signs it right.

Clips are rendered by the toy signer itself (the ground truth a perfect model would produce),
at the demo's sizes, so a miss here is the metric's, not a model's."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from shared.data.toy import VOCABULARY, render_clip
from shared.evaluation import textfollow as tf


@pytest.fixture(scope="module")
def split() -> tf.SentenceSplit:
    return tf.make_split(seed=0)


def test_held_out_sentences_are_never_trained_and_every_word_keeps_its_places(split):
    train = set(split.train)
    assert not train & set(split.unseen)
    assert set(split.seen) <= train and len(split.seen) == 20
    assert len(split.unseen) == 20 and len(set(split.unseen)) == 20
    assert all(len(s.split()) == 2 for s in (*split.unseen, *split.seen))
    assert all(len(s.split()) == 3 for s in split.longer) and len(set(split.longer)) == 20
    assert max(len(s.split()) for s in split.train) == 2
    # Every word, in every position of a two-word sentence, with several partners.
    places = Counter((w, i) for s in split.train if len(s.split()) == 2
                     for i, w in enumerate(s.split()))
    assert all(places[(w, i)] >= tf.MIN_PARTNERS for w in VOCABULARY for i in (0, 1))
    # New word pairs (neither order trained) and new orders (the other order trained).
    pairs = {tuple(s.split()) for s in split.unseen}
    reversed_trained = [p for p in pairs if " ".join(p[::-1]) in train]
    both_held = [p for p in pairs if p[::-1] in pairs]
    assert len(reversed_trained) == 10 and len(both_held) == 10


def test_another_seed_holds_out_other_sentences_and_the_same_seed_the_same():
    a, b = tf.make_split(seed=1), tf.make_split(seed=2)
    assert len(set(a.unseen) & set(b.unseen)) < 5
    assert tf.make_split(seed=1) == a


def test_split_round_trips_through_its_file(split, tmp_path):
    split.save(tmp_path / tf.SPLIT_FILE)
    assert tf.read_split(tmp_path) == split
    (tmp_path / tf.SPLIT_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="split.json"):
        tf.read_split(tmp_path)
    assert tf.read_split(tmp_path / "elsewhere") is None


def test_training_captions_share_lengths_and_cover_the_training_sentences(split):
    caps = tf.training_captions(split, 800, seed=3)
    lengths = Counter(len(c.split()) for c in caps)
    assert lengths[1] == lengths[2] == 400
    assert not set(caps) & set(split.unseen)
    assert set(caps) == set(split.train)  # 400 two-word slots cover all 400 trained pairs
    assert tf.training_captions(split, 800, seed=3) == caps
    # The sentences scored as seen are trained on even when n covers few two-word sentences.
    assert set(split.seen) <= set(tf.training_captions(split, 40, seed=3))


def test_split_refuses_what_it_cannot_keep():
    with pytest.raises(ValueError, match="max_words"):
        tf.make_split(max_words=1)
    with pytest.raises(ValueError, match="partners"):
        tf.make_split(vocab=VOCABULARY[:4])


def render(captions: list[str], frames: int = 8, size: int = 32) -> list[np.ndarray]:
    return [render_clip(c, frames, size, size * 16 // 9, seed=i, hand_size=1.6)
            for i, c in enumerate(captions)]


def test_true_clips_score_right_in_every_position():
    captions = ["hello stop", "stop hello", "school family", "eat water drink"]
    result = tf.score_set("truth", render(captions), captions)
    correct, valid = result.position_correct, result.position_valid
    assert valid.sum() == 9 and correct[valid].all()
    assert result.score.accuracy == 1.0


def test_a_word_in_the_wrong_place_is_wrong_in_that_place_only():
    # Clips of "hello stop" judged as "hello family": the first word is right, the second not.
    clips = render(["hello stop"] * 4 + ["stop hello"] * 4)
    captions = ["hello family"] * 4 + ["stop hello"] * 4
    result = tf.score_set("wrong second word", clips, captions)
    assert result.position_correct[:4, 0].all() and not result.position_correct[:4, 1].any()
    assert result.position_correct[4:].all()
    positions = result.positions()
    assert positions[0][0] == 1.0 and positions[1][0] == pytest.approx(0.5)
    assert positions[1][1] == pytest.approx(math.sqrt(0.25 / 8))
    word, word_se, n = result.word_accuracy()
    assert word == pytest.approx(0.75) and n == 8
    per_clip = np.array([0.5] * 4 + [1.0] * 4)
    assert word_se == pytest.approx(per_clip.std(ddof=1) / math.sqrt(8))
    text = result.format()
    assert "wrong second word" in text and "1: 100%" in text and "2: 50%" in text


def test_a_blank_clip_is_wrong_everywhere():
    blank = [np.zeros((8, 32, 32, 3), np.uint8)]
    result = tf.score_set("blank", blank, ["hello stop"])
    assert result.position_valid.all() and not result.position_correct.any()


def test_stderr_is_the_binomial_one():
    assert tf.stderr(0.5, 100) == pytest.approx(0.05)
    assert tf.stderr(1.0, 10) == 0.0 and math.isnan(tf.stderr(0.5, 0))


def test_paired_difference_matches_a_paired_t_test():
    """The paired difference's mean over its standard error is the paired t statistic, and
    pairing resolves a difference that two independent proportions' errors would hide."""
    from scipy.stats import ttest_rel

    from shared.evaluation.textfollow import paired_difference, stderr

    rng = np.random.default_rng(3)
    first = rng.random(100) < 0.6
    second = first.copy()
    second[np.flatnonzero(~first)[:8]] = True  # eight clips fixed, none broken
    second[np.flatnonzero(first)[:1]] = False
    mean, se = paired_difference(first, second)
    assert mean == pytest.approx(0.07)
    t = ttest_rel(second.astype(float), first.astype(float)).statistic
    assert mean / se == pytest.approx(t)
    independent = np.hypot(stderr(first.mean(), 100), stderr(second.mean(), 100))
    assert se < independent / 2
    assert np.isnan(paired_difference([True], [False])[1])
