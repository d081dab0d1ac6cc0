"""The text-following protocol of the toy signer: which sentences training sees, which it never
sees, and how a model's clips of each are scored.

A model that memorises its training sentences as whole videos scores well on them and at chance
on anything else, and a user's sentence is almost never a training sentence. So the toy set
holds out sentences the model must compose from words it knows:

* `unseen`: word combinations never trained on, in both orders, and orders never trained on (the
  reverse order is a training sentence), all of the training sentences' longest length;
* `longer`: sentences one word longer than any training sentence;
* `seen`: training sentences of the same length as `unseen`, scored the same way.

Every word stays in training in every position with many partners (the split checks it). Each
set is scored apart, with the standard error of each figure, and per position: a clip is right
at position k when its own sentence fits it better than every sentence that differs only in
word k (chance = 1 / (vocabulary - other words)), so a failure says where it fails.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shared.data.toy import VOCABULARY, caption_text, parse_caption, reference_trajectory
from shared.evaluation.toyjudge import ToyScore, score_clips, track_hands, trajectory_errors

SPLIT_FILE = "split.json"
#: Each word must keep at least this many training partners in each position of the longest
#: sentences (the held-out draw is refused otherwise).
MIN_PARTNERS = 3


@dataclass(frozen=True)
class SentenceSplit:
    """Training sentences and the three evaluation sets, fixed by `seed`."""

    train: tuple[str, ...]
    seen: tuple[str, ...]
    unseen: tuple[str, ...]
    longer: tuple[str, ...]
    vocabulary: tuple[str, ...]
    max_words: int
    seed: int

    def sets(self) -> dict[str, tuple[str, ...]]:
        """The evaluation sets by name, in report order (`longer` may be empty)."""
        out = {"seen": self.seen, "unseen": self.unseen, "longer": self.longer}
        return {k: v for k, v in out.items() if v}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> SentenceSplit:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path}: not a sentence split ({e}); remake the toy set with "
                             "`t2s-torch data toy OUT`") from None


def make_split(vocab: Sequence[str] = VOCABULARY, max_words: int = 2, seed: int = 0,
               num_new_sets: int = 10, num_new_orders: int = 10, num_seen: int = 20,
               num_longer: int = 20) -> SentenceSplit:
    """Hold out every order of random word sets until `num_new_sets` sentences (new
    combinations), and one order of `num_new_orders` more sets whose other orders stay in
    training (new orders), among the `max_words`-word sentences; everything else of
    1..max_words distinct words is a training sentence."""
    words = tuple(caption_text([w]) for w in vocab)
    if max_words < 2 or len(words) < max_words + 1:
        raise ValueError(f"a split needs max_words >= 2 and more than max_words words, got "
                         f"max_words={max_words} over {len(words)} words")
    rng = np.random.default_rng([seed, 7])
    combos = list(itertools.combinations(range(len(words)), max_words))
    order = rng.permutation(len(combos))
    held: list[tuple[int, ...]] = []
    new_sets = new_orders = 0
    for i in order:
        if new_sets >= num_new_sets and new_orders == num_new_orders:
            break
        perms = list(itertools.permutations(combos[int(i)]))
        new_set = new_sets < num_new_sets
        candidate = perms if new_set else [perms[int(rng.integers(1, len(perms)))]]
        if not _keeps_partners(len(words), max_words, [*held, *candidate]):
            continue
        held += candidate
        if new_set:
            new_sets += len(candidate)
        else:
            new_orders += 1
    if new_sets < num_new_sets or new_orders < num_new_orders:
        raise ValueError(f"cannot hold out {num_new_sets} sentences of new word sets and "
                         f"{num_new_orders} new orders from {len(words)} words and keep "
                         f"{MIN_PARTNERS} partners per word in every position")
    held_set = set(held)
    train = [tuple([i]) for i in range(len(words))]
    for n in range(2, max_words + 1):
        train += [p for p in itertools.permutations(range(len(words)), n) if p not in held_set]
    text = lambda idx: " ".join(words[i] for i in idx)  # noqa: E731
    longest = [p for p in train if len(p) == max_words]
    seen = [longest[int(i)] for i in rng.choice(len(longest), size=min(num_seen, len(longest)),
                                                 replace=False)]
    longer: list[tuple[int, ...]] = []
    while len(longer) < num_longer and len(words) > max_words:
        s = tuple(int(i) for i in rng.choice(len(words), size=max_words + 1, replace=False))
        if s not in longer:
            longer.append(s)
    return SentenceSplit(train=tuple(text(p) for p in train), seen=tuple(text(p) for p in seen),
                         unseen=tuple(text(p) for p in held), longer=tuple(text(p) for p in longer),
                         vocabulary=words, max_words=max_words, seed=seed)


def _keeps_partners(num_words: int, length: int, held: list[tuple[int, ...]]) -> bool:
    """Every word keeps >= MIN_PARTNERS training sentences of `length` in every position."""
    count = np.zeros((num_words, length), np.int64)
    for w in range(num_words):
        count[w] = math.perm(num_words - 1, length - 1)
    for s in held:
        for pos, w in enumerate(s):
            count[w, pos] -= 1
    return bool((count >= MIN_PARTNERS).all())


def training_captions(split: SentenceSplit, n: int, seed: int = 0) -> list[str]:
    """n captions for a toy set: lengths in turn (1, 2, ..., max_words, 1, ...) so that every
    length is a fair share, and within a length the training sentences in a seeded order, used
    in turn, the `seen` ones first, so that the sentences scored as seen were trained on
    whenever n >= max_words * len(seen)."""
    rng = np.random.default_rng([seed, 8])
    seen = set(split.seen)
    by_len: dict[int, list[str]] = {}
    for s in split.train:
        by_len.setdefault(len(s.split()), []).append(s)
    pools = {}
    for k, v in sorted(by_len.items()):
        shuffled = [v[int(i)] for i in rng.permutation(len(v))]
        pools[k] = [s for s in shuffled if s in seen] + [s for s in shuffled if s not in seen]
    lengths = sorted(pools)
    taken = dict.fromkeys(lengths, 0)
    out = []
    for i in range(n):
        k = lengths[i % len(lengths)]
        out.append(pools[k][taken[k] % len(pools[k])])
        taken[k] += 1
    return out


def read_split(data_dir: str | Path) -> SentenceSplit | None:
    """The split a toy set was made with (`split.json` beside its clips), or None."""
    path = Path(data_dir) / SPLIT_FILE
    return SentenceSplit.load(path) if path.exists() else None


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def stderr(p: float, n: int) -> float:
    """Standard error of a proportion p measured on n independent clips."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n else float("nan")


def paired_difference(first: Sequence[bool], second: Sequence[bool]) -> tuple[float, float]:
    """Mean and standard error of `second - first` over clips that share their starting noise
    and caption (two samplers on one model): pairing removes what the clips have in common, so
    the difference is resolved several times finer than two independent proportions allow."""
    d = np.asarray(second, dtype=float) - np.asarray(first, dtype=float)
    if d.size < 2:
        return (float(d.mean()) if d.size else float("nan")), float("nan")
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def position_accuracy(tracks: Sequence[np.ndarray], captions: Sequence[str],
                      vocab: Sequence[str] = VOCABULARY) -> tuple[np.ndarray, np.ndarray]:
    """Per clip and position: is the own sentence closer to the clip than every sentence that
    differs from it only in that position's word? Returns (correct, valid), both (N, K) bool for
    K = the longest caption; valid is False past a caption's end."""
    sents = [parse_caption(c) for c in captions]
    K = max(len(s) for s in sents)
    correct = np.zeros((len(sents), K), bool)
    valid = np.zeros((len(sents), K), bool)
    for i, (track, s) in enumerate(zip(tracks, sents)):
        if np.isnan(track).all():
            valid[i, :len(s)] = True  # nothing found: wrong everywhere
            continue
        F = len(track)
        for k in range(len(s)):
            alts = [w for w in vocab if w == s[k] or w not in s]
            cands = [s[:k] + (w,) + s[k + 1:] for w in alts]
            refs = np.stack([reference_trajectory(c, F) for c in cands])
            err = trajectory_errors(track[None], refs)[0]
            correct[i, k] = alts[int(err.argmin())] == s[k]
            valid[i, k] = True
    return correct, valid


@dataclass(eq=False)
class SetScore:
    """One evaluation set's text-following figures."""

    name: str
    score: ToyScore
    position_correct: np.ndarray = field(repr=False)  # (N, K) bool
    position_valid: np.ndarray = field(repr=False)

    @property
    def accuracy_stderr(self) -> float:
        return stderr(self.score.accuracy, self.score.num_clips)

    def positions(self) -> list[tuple[float, float, int]]:
        """(accuracy, standard error, clips) per word position."""
        out = []
        for k in range(self.position_correct.shape[1]):
            n = int(self.position_valid[:, k].sum())
            acc = float(self.position_correct[self.position_valid[:, k], k].mean()) if n else \
                float("nan")
            out.append((acc, stderr(acc, n), n))
        return out

    def word_accuracy(self) -> tuple[float, float, int]:
        """Accuracy over every (clip, position), with a clip-level standard error."""
        v = self.position_valid
        per_clip = np.where(v, self.position_correct, 0).sum(1) / np.maximum(v.sum(1), 1)
        n = len(per_clip)
        acc = float(per_clip.mean()) if n else float("nan")
        sd = float(per_clip.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
        return acc, sd, n

    def format(self) -> str:
        s = self.score
        z = (s.accuracy - s.chance) / max(s.chance_stderr, 1e-12)
        pos = ", ".join(f"{k + 1}: {a:.0%} ± {e:.0%}" for k, (a, e, _) in
                        enumerate(self.positions()))
        w, we, _ = self.word_accuracy()
        return (f"{self.name}: {s.accuracy:.1%} ± {self.accuracy_stderr:.1%} of {s.num_clips} "
                f"clips name their own sentence among {s.num_prompts} (chance {s.chance:.1%}, "
                f"{z:+.1f} standard errors from it); words right {w:.1%} ± {we:.1%} (by "
                f"position {pos}; chance ~{1 / max(len(VOCABULARY) - 1, 1):.0%}); "
                f"trajectory error {s.mean_error:.3f}")

    def to_dict(self) -> dict:
        w, we, _ = self.word_accuracy()
        return {"accuracy": self.score.accuracy, "accuracy_stderr": self.accuracy_stderr,
                "chance": self.score.chance, "num_clips": self.score.num_clips,
                "num_prompts": self.score.num_prompts, "word_accuracy": w,
                "word_accuracy_stderr": we, "mean_error": self.score.mean_error,
                "positions": [{"accuracy": a, "stderr": e, "num_clips": n}
                              for a, e, n in self.positions()]}


def score_set(name: str, clips: Sequence[np.ndarray], captions: Sequence[str],
              candidates: Sequence[str] | None = None) -> SetScore:
    """Track once, then score sentence identification among `candidates` (default: the
    distinct captions) and per-position word identification against the whole vocabulary."""
    tracks = [track_hands(c) for c in clips]
    score = score_clips(None, captions, candidates, tracks=tracks)
    correct, valid = position_accuracy(tracks, captions)
    return SetScore(name, score, correct, valid)
