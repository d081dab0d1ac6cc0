"""Toy-signer data set and its text-faithfulness metric.

Real sign-language data takes days to train on and has no cheap way to check that a generated
clip says what its caption says. The toy signer fixes both: every word of a small vocabulary is a
deterministic two-hand motion performed by a cartoon signer (torso, head, two gloved hands), so a
model can learn the whole data set in minutes, and a clip's meaning can be read back from the
hands alone.

Design, in the order a reader needs it:

* Coordinates. A hand position is ``(x, y)`` with ``y = Y / H`` and ``x = (X - W / 2) / H`` for a
  pixel-centre position ``(X, Y)`` in an ``H x W`` frame: both are measured in frame heights,
  ``x`` from the vertical centre line. A centre crop to ``H x H`` and any uniform resize leave
  these numbers unchanged, so a 32 x 32 sample is judged against the same references as a
  180 x 320 source clip. The signer (offsets included) stays inside the central square.
* Hands. Hand 0 is the hand on the image's left and wears a green glove; hand 1, on the right,
  wears a magenta one. Everything else (background, clothes, hair) has low chroma and skin has an
  orange hue far from both gloves, so a chroma-and-hue test finds each hand whatever the signer
  looks like, even after GIF quantisation or a resize to 16 pixels.
* Signer variation, drawn per clip from a seeded generator: colours, body offset and scale, hand
  size, tempo (lead-in, tail, transition length, per-word durations) and per-frame jitter.
* Metric. `track_hands` recovers both hands per frame; `score_clips` shifts each trajectory
  onto every candidate prompt's canonical trajectory by the difference of their mean positions
  (clipped to the signer's offset range), compares them by banded dynamic time warping
  (absorbing the signer's tempo), and reports the error against the clip's own caption and how
  often the own caption is the closest candidate (prompt identification; chance = 1 / P).
"""

from __future__ import annotations

import colorsys
import math
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

from shared.video import write_video

# --------------------------------------------------------------------------------------------
# Vocabulary: each word is a pair of hand paths over the word's phase p in [0, 1].
# --------------------------------------------------------------------------------------------

Path2D = Callable[[np.ndarray], np.ndarray]  # phase (T,) -> positions (T, 2)

#: Reference clip size of the data contract: 28 frames of 180 x 320 RGB.
REFERENCE_FRAMES, REFERENCE_HEIGHT, REFERENCE_WIDTH = 28, 180, 320
#: Glove hues in degrees (0 = red): hand 0 (image left) green, hand 1 (image right) magenta.
GLOVE_HUES = (120.0, 300.0)
#: Canonical glove radius, in frame heights; the tracker's notion of hand size.
HAND_RADIUS = 0.07

_REST_L, _REST_R = (-0.2, 0.76), (0.2, 0.76)
_CHEST_Y = 0.58  # the point the signer's scale is applied about (x = 0)


def _ease(p: np.ndarray) -> np.ndarray:
    """Smoothstep: strokes start and stop at rest, like a human movement."""
    p = np.clip(p, 0.0, 1.0)
    return p * p * (3.0 - 2.0 * p)


def _hold(a: tuple[float, float]) -> Path2D:
    pa = np.asarray(a, np.float64)
    return lambda p: np.broadcast_to(pa, (len(p), 2)).copy()


def _stroke(a: tuple[float, float], b: tuple[float, float], reach: float = 1.0) -> Path2D:
    """Move from a to b, arriving at phase `reach` and holding there."""
    pa, pb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return lambda p: pa + (pb - pa) * _ease(np.asarray(p) / reach)[:, None]


def _osc(c: tuple[float, float], amp: tuple[float, float], cycles: float) -> Path2D:
    pc, pa = np.asarray(c, np.float64), np.asarray(amp, np.float64)
    return lambda p: pc + pa * np.sin(2 * np.pi * cycles * np.asarray(p))[:, None]


def _taps(a: tuple[float, float], b: tuple[float, float], n: int) -> Path2D:
    """n out-and-back strokes from a towards b (starts and ends at a)."""
    pa, pb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return lambda p: pa + (pb - pa) * (0.5 - 0.5 * np.cos(2 * np.pi * n * np.asarray(p)))[:, None]


def _circle(c: tuple[float, float], r: float, cycles: float, clockwise: bool,
            start_deg: float = 0.0) -> Path2D:
    """A circle on screen; with y pointing down, a growing angle turns clockwise."""
    pc, sign, a0 = np.asarray(c, np.float64), (1.0 if clockwise else -1.0), math.radians(start_deg)

    def path(p: np.ndarray) -> np.ndarray:
        ang = a0 + sign * 2 * np.pi * cycles * np.asarray(p)
        return pc + r * np.stack([np.cos(ang), np.sin(ang)], axis=-1)
    return path


def _fig8(c: tuple[float, float], ax: float, ay: float, cycles: float) -> Path2D:
    pc = np.asarray(c, np.float64)

    def path(p: np.ndarray) -> np.ndarray:
        t = 2 * np.pi * cycles * np.asarray(p)
        return pc + np.stack([ax * np.sin(t), ay * np.sin(2 * t)], axis=-1)
    return path


def _zigzag(a: tuple[float, float], b: tuple[float, float], teeth: int, amp: float) -> Path2D:
    """Travel a -> b while swinging sideways in a triangle wave (`teeth` full swings)."""
    pa, pb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = pb - pa
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-12)

    def path(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p)
        tri = 2.0 * np.abs(((teeth * p + 0.25) % 1.0) - 0.5) * 2.0 - 1.0  # starts at 0
        return pa + d * p[:, None] + amp * (-tri)[:, None] * n
    return path


def _mirror(a: tuple[float, float]) -> tuple[float, float]:
    return (-a[0], a[1])


def _arc_out(side: float) -> Path2D:
    """Half of a flat horizontal circle seen from the front: from low in the middle out to the
    side and back to the middle, higher."""
    def path(p: np.ndarray) -> np.ndarray:
        s = np.pi * np.asarray(p)
        x = side * (0.06 + 0.2 * np.sin(s))
        y = 0.74 - 0.26 * (1.0 - np.cos(s)) / 2.0
        return np.stack([x, y], axis=-1)
    return path


def _build_vocabulary() -> Mapping[str, tuple[Path2D, Path2D]]:
    """Twenty words, each a (hand 0, hand 1) pair of paths. They differ in which hands move,
    where (high / chest / low, centre / side) and how (strokes, oscillations, circles of either
    sense, taps, orbit, figure-8, zig-zag), so that every pair stays apart after centring and
    time warping -- see test_toy.py for the margins. Cycles are kept at <= 2 per word so that a
    three-word sentence still reads at 16 frames."""
    words: dict[str, tuple[Path2D, Path2D]] = {
        "hello": (_hold(_REST_L), _osc((0.26, 0.27), (0.07, 0.0), 2)),
        "thanks": (_stroke((-0.07, 0.37), (-0.28, 0.62)), _stroke((0.07, 0.37), (0.28, 0.62))),
        "yes": (_hold(_REST_L), _osc((0.25, 0.56), (0.0, 0.07), 2)),
        "no": (_osc((-0.12, 0.48), (0.08, 0.0), 2), _hold(_REST_R)),
        "please": (_hold(_REST_L), _circle((0.05, 0.58), 0.1, 1, clockwise=True)),
        "sorry": (_circle((-0.05, 0.58), 0.1, 1, clockwise=False, start_deg=180),
                  _hold(_REST_R)),
        "help": (_stroke((-0.08, 0.8), (-0.08, 0.42)), _stroke((0.08, 0.8), (0.08, 0.42))),
        "more": (_osc((-0.14, 0.7), (0.05, 0.0), 2), _osc((0.14, 0.7), (-0.05, 0.0), 2)),
        "stop": (_hold((-0.22, 0.32)), _hold((0.22, 0.32))),
        "eat": (_hold(_REST_L), _taps((0.2, 0.52), (0.05, 0.33), 2)),
        "drink": (_hold((-0.24, 0.5)), _stroke((0.26, 0.7), (0.07, 0.32), reach=0.6)),
        "home": (_stroke((-0.27, 0.62), (-0.08, 0.34), reach=0.7),
                 _stroke((0.27, 0.62), (0.08, 0.34), reach=0.7)),
        "work": (_hold((-0.12, 0.56)), _taps((0.17, 0.48), (0.03, 0.56), 2)),
        "friend": (_circle((0.0, 0.56), 0.13, 1, clockwise=True, start_deg=180),
                   _circle((0.0, 0.56), 0.13, 1, clockwise=True, start_deg=0)),
        "family": (_arc_out(-1.0), _arc_out(1.0)),
        "good": (_hold((-0.05, 0.68)), _stroke((0.05, 0.36), (0.07, 0.55), reach=0.6)),
        "bad": (_hold(_REST_L), _stroke((0.05, 0.36), (0.32, 0.74))),
        "big": (_stroke((-0.08, 0.5), (-0.32, 0.5)), _stroke((0.08, 0.5), (0.32, 0.5))),
        "love": (_stroke(_REST_L, (0.1, 0.48), reach=0.7),
                 _stroke(_REST_R, (-0.1, 0.76), reach=0.7)),
        "water": (_hold((-0.22, 0.3)), _fig8((0.12, 0.66), 0.1, 0.06, 1)),
        "school": (_zigzag((-0.3, 0.3), (-0.1, 0.72), 2, 0.06), _hold(_REST_R)),
    }
    return MappingProxyType(words)


_WORDS = _build_vocabulary()
#: The toy vocabulary, in a fixed order (a data set restricted to k words uses the first k).
VOCABULARY: tuple[str, ...] = tuple(_WORDS)


def parse_caption(caption: str | Sequence[str]) -> tuple[str, ...]:
    """Caption text (or a word list) -> vocabulary words; case and punctuation are ignored,
    an unknown word is an error that names it."""
    words = re.findall(r"[a-z]+", caption.lower()) if isinstance(caption, str) else [
        w.lower() for w in caption]
    if not words:
        raise ValueError(f"empty toy caption {caption!r}")
    unknown = [w for w in words if w not in _WORDS]
    if unknown:
        raise ValueError(f"unknown toy word(s) {unknown} in {caption!r}; "
                         f"vocabulary: {' '.join(VOCABULARY)}")
    return tuple(words)


def caption_text(words: Sequence[str]) -> str:
    """The canonical caption of a word sequence: lower case, single spaces."""
    return " ".join(parse_caption(words))


# --------------------------------------------------------------------------------------------
# Signers and sentences
# --------------------------------------------------------------------------------------------

_TEMPO_SLOTS = 8  # per-word duration weights a signer carries (cycled for longer sentences)


@dataclass(frozen=True)
class Signer:
    """Everything that differs between two performances of the same sentence."""

    background: tuple[int, int, int]
    floor: tuple[int, int, int]
    clothing: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    gloves: tuple[tuple[int, int, int], tuple[int, int, int]]
    offset: tuple[float, float] = (0.0, 0.0)  # body shift, frame heights
    scale: float = 1.0  # body and motion size, about the chest
    hand_scale: float = 1.0  # glove radius relative to HAND_RADIUS * scale
    lead: float = 0.04  # fraction of the clip holding the first pose
    tail: float = 0.04  # fraction of the clip holding the last pose
    transition: float = 0.1  # fraction of the clip between two words
    word_weights: tuple[float, ...] = (1.0,) * _TEMPO_SLOTS  # relative word durations
    jitter: float = 0.0  # per-frame hand position noise, frame heights
    jitter_seed: int = 0


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def canonical_signer() -> Signer:
    """The signer behind `reference_trajectory`: centred, unit scale, mid-range tempo."""
    return Signer(background=(200, 200, 200), floor=(180, 180, 180), clothing=(90, 90, 110),
                  skin=(224, 176, 140), hair=(60, 50, 40),
                  gloves=(_rgb(GLOVE_HUES[0] / 360, 0.9, 0.85), _rgb(GLOVE_HUES[1] / 360, 0.9,
                                                                        0.85)))


def sample_signer(rng: np.random.Generator) -> Signer:
    """A random signer. Background, clothes and hair have chroma <= ~60 / 255 and skin an
    orange hue (15-32 degrees), so none of them can pass for a glove (chroma >= ~150, hue 120
    or 300); offsets and scale keep both hands inside the central square of a 16:9 frame."""
    u = rng.uniform
    bg_h, bg_s, bg_v = u(0, 1), u(0, 0.18), u(0.3, 0.95)
    floor_v = bg_v + (u(-0.12, -0.05) if bg_v > 0.5 else u(0.05, 0.12))
    gloves = tuple(_rgb(hue / 360 + u(-0.02, 0.02), u(0.8, 1.0), u(0.75, 1.0))
                   for hue in GLOVE_HUES)
    return Signer(
        background=_rgb(bg_h, bg_s, bg_v),
        floor=_rgb(bg_h + u(-0.05, 0.05), bg_s, floor_v),
        clothing=_rgb(u(0, 1), u(0, 0.28), u(0.15, 0.8)),
        skin=_rgb(u(0.04, 0.09), u(0.25, 0.55), u(0.35, 0.95)),
        hair=_rgb(u(0, 1), u(0, 0.35), u(0.05, 0.5)),
        gloves=gloves,  # type: ignore[arg-type]
        offset=(float(u(-0.05, 0.05)), float(u(-0.025, 0.025))),
        scale=float(u(0.9, 1.1)),
        hand_scale=float(u(0.92, 1.08)),
        lead=float(u(0.0, 0.1)),
        tail=float(u(0.0, 0.1)),
        transition=float(u(0.06, 0.14)),
        word_weights=tuple(float(w) for w in np.exp(u(-0.25, 0.25, _TEMPO_SLOTS))),
        jitter=float(u(0.002, 0.006)),
        jitter_seed=int(rng.integers(2**31)),
    )


def sample_sentence(rng: np.random.Generator, words: Sequence[str] = VOCABULARY,
                    max_words: int = 3, min_words: int = 1) -> tuple[str, ...]:
    """1..max_words distinct words, the length uniform."""
    n = int(rng.integers(min_words, max_words + 1))
    n = min(n, len(words))
    return tuple(str(w) for w in rng.choice(np.asarray(words), size=n, replace=False))


def _frame_times(num_frames: int) -> np.ndarray:
    """Frame f sits at time f / (F - 1): first and last frames at the clip's ends, which is
    also where a uniform temporal resample of the clip puts them."""
    if num_frames == 1:
        return np.array([0.5])
    return np.linspace(0.0, 1.0, num_frames)


def sentence_trajectory(words: str | Sequence[str], num_frames: int,
                        signer: Signer | None = None, jitter: bool = True) -> np.ndarray:
    """(F, 2, 2) hand positions (hand, (x, y)) in frame heights for a signer performing the
    words one after the other: hold the first pose, each word in turn with an eased transition
    between words, hold the last pose."""
    words = parse_caption(words)
    signer = signer or canonical_signer()
    t = _frame_times(num_frames)
    n = len(words)
    weights = np.array([signer.word_weights[i % len(signer.word_weights)] for i in range(n)])
    free = 1.0 - signer.lead - signer.tail
    # Transitions never take more than 40% of the clip, however many words it holds.
    trans = min(signer.transition, 0.4 * free / (n - 1)) if n > 1 else 0.0
    body = free - trans * (n - 1)
    durations = body * weights / weights.sum()
    # Segment boundaries: lead | word 0 | trans | word 1 | ... | word n-1 | tail
    starts = signer.lead + np.concatenate([[0.0], np.cumsum(durations[:-1] + trans)])
    ends = starts + durations
    pos = np.empty((num_frames, 2, 2))
    paths = [_WORDS[w] for w in words]

    def at(k: int, phase: np.ndarray) -> np.ndarray:
        return np.stack([paths[k][0](phase), paths[k][1](phase)], axis=1)

    for k in range(n):
        sel = (t >= (starts[k] if k else -np.inf)) & (t <= (ends[k] if k < n - 1 else np.inf))
        if sel.any():
            pos[sel] = at(k, np.clip((t[sel] - starts[k]) / durations[k], 0.0, 1.0))
        if k < n - 1:
            sel = (t > ends[k]) & (t < starts[k + 1])
            if sel.any():
                a, b = at(k, np.ones(1)), at(k + 1, np.zeros(1))
                e = _ease((t[sel] - ends[k]) / trans)[:, None, None]
                pos[sel] = a + (b - a) * e
    centre = np.array([0.0, _CHEST_Y])
    pos = centre + signer.scale * (pos - centre) + np.asarray(signer.offset)
    if jitter and signer.jitter > 0:
        noise = np.random.default_rng(signer.jitter_seed).normal(0.0, signer.jitter, pos.shape)
        pos = pos + noise
    return pos


def reference_trajectory(caption: str | Sequence[str], num_frames: int) -> np.ndarray:
    """The canonical (F, 2, 2) trajectory of a caption: what `score_clips` compares against."""
    return sentence_trajectory(caption, num_frames, canonical_signer(), jitter=False)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(v * f)))) for v in c)  # type: ignore[return-value]


def _elbow(shoulder: np.ndarray, hand: np.ndarray, length: float, side: float) -> np.ndarray:
    """Two-segment arm: the elbow bends outwards and down, like a relaxed arm."""
    d = hand - shoulder
    dist = float(np.hypot(*d)) + 1e-9
    half = min(dist / 2.0, length)
    bend = math.sqrt(max(length * length - half * half, 0.0))
    normal = np.array([-d[1], d[0]]) / dist
    if normal[0] * side < 0 or (abs(normal[0]) < 1e-6 and normal[1] < 0):
        normal = -normal
    return shoulder + d / 2.0 + bend * normal


def _render_static(signer: Signer, height: int, width: int) -> Image.Image:
    """Background, torso, neck and head: drawn once per clip, copied into every frame."""
    H, W = height, width
    s, (ox, oy) = signer.scale, signer.offset

    def px(x: float, y: float) -> tuple[float, float]:
        x = ox + s * x
        y = oy + _CHEST_Y + s * (y - _CHEST_Y)
        return W / 2.0 + x * H, y * H

    im = Image.new("RGB", (W, H), signer.background)
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, round(0.8 * H), W, H), fill=signer.floor)
    x0, y0 = px(-0.23, 0.42)
    x1, y1 = px(0.23, 1.3)
    draw.rounded_rectangle((x0, y0, x1, y1), radius=0.09 * H * s, fill=signer.clothing)
    x0, y0 = px(-0.045, 0.26)
    x1, y1 = px(0.045, 0.44)
    draw.rectangle((x0, y0, x1, y1), fill=_shade(signer.skin, 0.85))
    x0, y0 = px(-0.09, 0.09)
    x1, y1 = px(0.09, 0.33)
    draw.ellipse((x0, y0, x1, y1), fill=signer.skin)
    hx0, hy0 = px(-0.1, 0.07)
    hx1, hy1 = px(0.1, 0.27)
    draw.pieslice((hx0, hy0, hx1, hy1), 180, 360, fill=signer.hair)
    for ex in (-0.035, 0.035):
        cx, cy = px(ex, 0.2)
        r = 0.012 * H * s
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_shade(signer.hair, 0.5))
    mx0, my0 = px(-0.03, 0.27)
    mx1, _ = px(0.03, 0.27)
    draw.line((mx0, my0, mx1, my0), fill=_shade(signer.skin, 0.6), width=max(1, round(0.008 * H)))
    return im


def render_clip(words: str | Sequence[str], num_frames: int = REFERENCE_FRAMES,
                height: int = REFERENCE_HEIGHT, width: int = REFERENCE_WIDTH,
                seed: int | np.random.Generator | None = 0,
                signer: Signer | None = None, hand_size: float = 1.0) -> np.ndarray:
    """A (F, H, W, 3) uint8 clip of a signer performing the words. The signer is `signer` if
    given, else drawn from `seed` (an int or a Generator); the same inputs give the same
    pixels. Sleeves and gloves are drawn over the body, the gloves last. `hand_size` scales the
    gloves (bigger hands stay legible in small, low-resolution clips)."""
    if signer is None:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        signer = sample_signer(rng)
    traj = sentence_trajectory(words, num_frames, signer)
    H, W = height, width
    s, (ox, oy) = signer.scale, signer.offset
    static = _render_static(signer, H, W)

    def px(p: np.ndarray) -> np.ndarray:  # normalised (..., 2) -> pixel-centre coordinates
        return np.stack([W / 2.0 + p[..., 0] * H, p[..., 1] * H], axis=-1)

    shoulders = px(np.array([[ox - 0.17 * s, oy + _CHEST_Y + s * (0.47 - _CHEST_Y)],
                             [ox + 0.17 * s, oy + _CHEST_Y + s * (0.47 - _CHEST_Y)]]))
    hands = px(traj)
    sleeve = _shade(signer.clothing, 0.8)
    arm_w = max(1, round(0.06 * H * s))
    upper = 0.2 * H * s
    r = HAND_RADIUS * s * signer.hand_scale * hand_size * H
    out = np.empty((num_frames, H, W, 3), np.uint8)
    for f in range(num_frames):
        im = static.copy()
        draw = ImageDraw.Draw(im)
        for h, side in ((0, -1.0), (1, 1.0)):
            sh, hd = shoulders[h], hands[f, h]
            el = _elbow(sh, hd, upper, side)
            # Pillow's coordinates put pixel centres on integers; ours on +0.5.
            pts = [tuple(p - 0.5) for p in (sh, el, hd)]
            draw.line(pts, fill=sleeve, width=arm_w, joint="curve")
        for h in (0, 1):
            cx, cy = hands[f, h] - 0.5
            draw.ellipse((cx - r, cy - 1.1 * r, cx + r, cy + 1.1 * r), fill=signer.gloves[h],
                         outline=_shade(signer.gloves[h], 0.75), width=max(1, round(r / 6)))
        out[f] = np.asarray(im)
    return out


# --------------------------------------------------------------------------------------------
# Data set
# --------------------------------------------------------------------------------------------


def _clip_rng(seed: int, index: int, purpose: int) -> np.random.Generator:
    """Clip i's own streams (purpose 0: its sentence, 2: its signer): independent of n, of the
    other clips and of the worker that renders it."""
    return np.random.default_rng([seed, purpose, index])


def _vocab_subset(vocab: int | Sequence[str] | None) -> tuple[str, ...]:
    if vocab is None:
        return VOCABULARY
    if isinstance(vocab, int):
        if not 1 <= vocab <= len(VOCABULARY):
            raise ValueError(f"vocab_size must be 1..{len(VOCABULARY)}, got {vocab}")
        return VOCABULARY[:vocab]
    return parse_caption(list(vocab))


def sample_prompts(num_prompts: int, seed: int = 0, vocab: int | Sequence[str] | None = None,
                   max_words: int = 3) -> list[str]:
    """`num_prompts` distinct captions, drawn reproducibly (a demo's closed set of sentences)."""
    words = _vocab_subset(vocab)
    rng = np.random.default_rng([seed, 1])
    prompts: list[str] = []
    seen: set[str] = set()
    for _ in range(1000 * num_prompts):
        if len(prompts) == num_prompts:
            break
        text = caption_text(sample_sentence(rng, words, max_words))
        if text not in seen:
            seen.add(text)
            prompts.append(text)
    if len(prompts) < num_prompts:
        raise ValueError(f"cannot draw {num_prompts} distinct sentences of <= {max_words} words "
                         f"from {len(words)} words")
    return prompts


def _make_one(args: tuple) -> tuple[str, str]:
    """Render and write clip i (module level so a process pool can run it)."""
    out_dir, name, caption, seed, index, num_frames, height, width, fmt, fps, hand_size = args
    clip = render_clip(caption, num_frames, height, width, seed=_clip_rng(seed, index, 2),
                       hand_size=hand_size)
    path = Path(out_dir) / f"{name}.{fmt}"
    write_video(path, clip, fps=fps)
    path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return str(path), caption


def make_toy_dataset(out_dir: str | Path, n: int = 400, seed: int = 0,
                     num_frames: int = REFERENCE_FRAMES, height: int = REFERENCE_HEIGHT,
                     width: int = REFERENCE_WIDTH, vocab_size: int | Sequence[str] | None = None,
                     max_words: int = 3, fmt: str = "gif", num_prompts: int | None = None,
                     fps: float = 10.0, workers: int = 1, hand_size: float = 1.0,
                     progress: bool = True, captions: Sequence[str] | None = None
                     ) -> list[tuple[Path, str]]:
    """Write n clips `toy_00000.<fmt>` with same-named `.txt` captions and a `prompts.txt` of
    the distinct captions; return [(path, caption)]. The same arguments give the same files
    (each clip has its own seeded stream, so `workers` never changes the result).

    With `num_prompts`, captions come from a closed set of that many distinct sentences, used
    in turn (balanced), each performed by many different signers: a small demo the model can
    learn quickly and the metric can judge against a fixed list of candidates. `captions`
    gives every clip's caption instead (n of them; `shared.textfollow.training_captions`)."""
    from tqdm.auto import tqdm

    fmt = fmt.lower().lstrip(".")
    if fmt not in ("gif", "mp4"):
        raise ValueError(f"fmt must be 'gif' or 'mp4', got {fmt!r}")
    words = _vocab_subset(vocab_size)
    if captions is not None:
        if len(captions) != n:
            raise ValueError(f"{len(captions)} captions for {n} clips")
        captions = [caption_text(parse_caption(c)) for c in captions]
        prompts = list(dict.fromkeys(captions))
    elif num_prompts is not None:
        prompts = sample_prompts(num_prompts, seed, words, max_words)
        captions = [prompts[i % num_prompts] for i in range(n)]
    else:
        captions = [caption_text(sample_sentence(_clip_rng(seed, i, 0), words, max_words))
                    for i in range(n)]
        prompts = list(dict.fromkeys(captions))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), f"toy_{i:05d}", captions[i], seed, i, num_frames, height, width, fmt, fps,
             hand_size) for i in range(n)]
    bar = tqdm(total=n, desc="toy clips", unit="clip", disable=not progress)
    results: list[tuple[Path, str]] = []
    try:
        if workers > 1 and n > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for path, caption in pool.map(_make_one, jobs, chunksize=4):
                    results.append((Path(path), caption))
                    bar.update()
        else:
            for job in jobs:
                path, caption = _make_one(job)
                results.append((Path(path), caption))
                bar.update()
    finally:
        bar.close()
    (out / "prompts.txt").write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    return results


# --------------------------------------------------------------------------------------------
# Hand tracking
# --------------------------------------------------------------------------------------------

# Chroma (along a glove's hue) that counts as no glove / surely glove, in 0..255 units: other
# signer colours stay below ~60, gloves start near 150.
_CHROMA_LO, _CHROMA_HI = 60.0, 100.0
_HUE_TOL = math.tan(math.radians(40.0))  # max angle between a pixel's hue and the glove's
_MIN_PEAK_DENSITY = 0.3  # glove fraction in the densest hand-sized box
_MIN_COMPACTNESS = 0.25  # fraction of all glove-coloured weight near that box
_MIN_AREA = 0.15  # glove weight as a fraction of a canonical hand's area


def _glove_weights(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel evidence in [0, 1] for each glove, from the opponent-colour chroma plane
    (R - (G + B) / 2, (G - B) * sqrt(3) / 2), whose angle is the hue: the chroma component
    along the glove's hue, zeroed beyond a hue tolerance. (Elementwise on purpose: a BLAS
    matrix product here is no faster and stalls when the cores are busy.)"""
    rgb = np.asarray(rgb, np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    cx = r - np.float32(0.5) * (g + b)
    cy = np.float32(math.sqrt(3.0) / 2.0) * (g - b)
    out = []
    for hue in GLOVE_HUES:
        c, s = np.float32(math.cos(math.radians(hue))), np.float32(math.sin(math.radians(hue)))
        along = cx * c + cy * s
        across = np.abs(cy * c - cx * s)
        w = np.clip((along - _CHROMA_LO) * np.float32(1.0 / (_CHROMA_HI - _CHROMA_LO)), 0.0, 1.0)
        w[across > along * np.float32(_HUE_TOL)] = 0.0
        out.append(w)
    return out[0], out[1]


def _locate(w: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre (F, 2) as (x, y) pixel indices and a found flag (F,) of a hand-sized blob in
    weight maps (F, h, w): the densest hand-sized box, refined twice by the weighted centroid
    of a window around it. Scattered evidence (noise) has no dense box and no compact mass."""
    F, h, wd = w.shape
    side = int(max(3, min(h, wd, round(1.6 * radius))))
    side -= 1 - side % 2  # odd, so a box has a centre pixel
    side = max(1, min(side, h - (1 - h % 2), wd - (1 - wd % 2)))
    ii = np.zeros((F, h + 1, wd + 1), np.float32)
    ii[:, 1:, 1:] = w.cumsum(1).cumsum(2)
    box = ii[:, side:, side:] - ii[:, :-side, side:] - ii[:, side:, :-side] + ii[:, :-side, :-side]
    flat = box.reshape(F, -1)
    k = flat.argmax(1)
    density = flat[np.arange(F), k] / (side * side)
    cy = (k // box.shape[2] + side // 2).astype(np.float32)
    cx = (k % box.shape[2] + side // 2).astype(np.float32)
    total = ii[:, -1, -1].astype(np.float64)
    rho = max(1.5, 1.7 * radius)
    yy = np.arange(h, dtype=np.float32)
    xx = np.arange(wd, dtype=np.float32)
    mass = np.zeros(F)
    for _ in range(2):  # separable window: two batched mat-vecs instead of a masked copy
        my = (np.abs(yy[None] - cy[:, None]) <= rho).astype(np.float32)  # (F, h)
        mx = (np.abs(xx[None] - cx[:, None]) <= rho).astype(np.float32)  # (F, w)
        rows = np.einsum("fyx,fx->fy", w, mx) * my  # window mass per row
        cols = np.einsum("fyx,fy->fx", w, my) * mx  # window mass per column
        mass = rows.sum(1, dtype=np.float64)
        safe = np.maximum(mass, 1e-12)
        cy = np.where(mass > 0, (rows * yy).sum(1) / safe, cy).astype(np.float32)
        cx = np.where(mass > 0, (cols * xx).sum(1) / safe, cx).astype(np.float32)
    found = ((density >= _MIN_PEAK_DENSITY) & (mass >= _MIN_COMPACTNESS * np.maximum(total, 1e-12))
             & (mass >= _MIN_AREA * math.pi * radius * radius))
    return np.stack([cx, cy], axis=-1).astype(np.float64), found


def track_hands(clip: np.ndarray) -> np.ndarray:
    """(F, 2, 2) normalised (x, y) of hand 0 (green, image left) and hand 1 (magenta, image
    right) per frame; NaN where a hand is not found. Works for any frame size from ~16 px up:
    large frames are box-averaged to 60-119 px high first (the answer does not need more, and it
    keeps 400 reference clips to seconds)."""
    v = np.asarray(clip)
    if v.ndim == 3:
        v = v[None]
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"expected a clip shaped (F, H, W, 3), got {v.shape}")
    if v.dtype != np.uint8:  # colour thresholds are in 0..255 units
        raise ValueError(f"expected uint8 pixels, got {v.dtype}; see shared.video.to_uint8")
    F, H, W, _ = v.shape
    k = max(1, H // 60)
    if k > 1:  # box average by k x k: add row phases, then column phases (no 6-D reduce)
        hk, wk = H // k, W // k
        rows = v[:, 0:hk * k:k, :wk * k].astype(np.float32)
        for dy in range(1, k):
            rows += v[:, dy:hk * k:k, :wk * k]
        cols = rows.reshape(F, hk, wk, k, 3)
        v = cols[:, :, :, 0].copy()
        for dx in range(1, k):
            v += cols[:, :, :, dx]
        v *= np.float32(1.0 / (k * k))
    else:
        v = v.astype(np.float32)
    radius = HAND_RADIUS * H / k
    out = np.full((F, 2, 2), np.nan)
    for hand, w in enumerate(_glove_weights(v)):
        centre, found = _locate(w, radius)
        x = ((centre[:, 0] + 0.5) * k - W / 2.0) / H
        y = (centre[:, 1] + 0.5) * k / H
        out[found, hand, 0] = x[found]
        out[found, hand, 1] = y[found]
    return out


# --------------------------------------------------------------------------------------------
# Trajectory comparison and the faithfulness score
# --------------------------------------------------------------------------------------------

#: Cost of a frame where a hand was not found, in frame heights (wrong prompts cost ~0.1).
MISSING_PENALTY = 0.5
#: Sakoe-Chiba band: the fraction of the clip a frame may be matched away from its own time.
DTW_BAND = 0.12
#: Largest (x, y) shift, in frame heights, that the comparison forgives: the signer's offset
#: range plus a margin. Full centring would also erase where a symmetric sign is made (hands
#: high vs low), which is part of what tells words apart.
MAX_SHIFT = (0.07, 0.05)


def _mean_position(tracks: np.ndarray) -> np.ndarray:
    """(N, 2) mean (x, y) over found frames and both hands (0 where nothing was found)."""
    t = np.asarray(tracks, np.float64)
    valid = ~np.isnan(t)
    count = valid.sum((1, 2))
    total = np.where(valid, t, 0.0).sum((1, 2))
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def trajectory_errors(tracks: np.ndarray, references: np.ndarray, band: float = DTW_BAND,
                      max_shift: tuple[float, float] = MAX_SHIFT) -> np.ndarray:
    """(N, P) banded-DTW error between N tracked trajectories (N, F, 2, 2) and P references
    (P, R, 2, 2). Each pair is first aligned by the difference of their mean positions, clipped
    to `max_shift` (the signer's position). The local cost is the mean over the two hands of
    the Euclidean distance (frame heights), or MISSING_PENALTY for a hand not found in that
    frame; the symmetric step pattern normalised by F + R makes the error an average distance
    whatever the lengths. Vectorised over all pairs, row by row: the horizontal moves within a
    row are a min-plus prefix scan, so the Python loop is only F long."""
    x = np.asarray(tracks, np.float64)
    r = np.asarray(references, np.float64)
    N, F = x.shape[:2]
    P, R = r.shape[:2]
    if np.isnan(r).any():
        raise ValueError("references must not contain NaN")
    lim = np.asarray(max_shift, np.float64)
    shift = np.clip(_mean_position(x)[:, None] - _mean_position(r)[None], -lim, lim)  # (N,P,2)
    ti = np.linspace(0.0, 1.0, F) if F > 1 else np.zeros(1)
    tj = np.linspace(0.0, 1.0, R) if R > 1 else np.zeros(1)
    width = max(band, 1.0 / max(F - 1, 1), 1.0 / max(R - 1, 1)) + 1e-9
    allowed = np.abs(ti[:, None] - tj[None, :]) <= width
    out = np.empty((N, P))
    chunk = max(1, 2_000_000 // (P * F * R))  # clips per step: temporaries stay ~100 MB
    for lo in range(0, N, chunk):
        xs = x[lo:lo + chunk, None, :, None]  # (n, 1, F, 1, 2, 2)
        rs = r[None, :, None, :] + shift[lo:lo + chunk, :, None, None, None, :]  # (n,P,1,R,2,2)
        d = np.sqrt(((xs - rs) ** 2).sum(-1))  # (n, P, F, R, 2)
        cost = np.where(np.isnan(d), MISSING_PENALTY, d).mean(-1)
        out[lo:lo + chunk] = _dtw(cost, allowed)
    return out


def _dtw(cost: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Banded symmetric DTW over the last two axes of cost (..., F, R): D[i, j] = c[i, j] +
    min(D[i-1, j-1] + c[i, j], D[i-1, j], D[i, j-1]), normalised by F + R."""
    F, R = cost.shape[-2:]
    inf = np.inf
    prev = np.full(cost.shape[:-2] + (R,), inf)
    for i in range(F):
        c = cost[..., i, :]
        if i == 0:
            a = np.full_like(c, inf)
            a[..., 0] = 2.0 * c[..., 0]
        else:
            diag = np.concatenate([np.full(c.shape[:-1] + (1,), inf), prev[..., :-1]], -1)
            a = np.minimum(diag + 2.0 * c, prev + c)
        a = np.where(allowed[i], a, inf)
        # Horizontal moves: D[j] = min_k<=j (a[k] + sum_{k<l<=j} c[l]) = S[j] + min(a[k] - S[k])
        s = np.cumsum(c, -1)
        with np.errstate(invalid="ignore"):
            cur = s + np.minimum.accumulate(a - s, axis=-1)
        prev = np.where(allowed[i], cur, inf)
    return prev[..., -1] / (F + R)


@dataclass(eq=False)
class ToyScore:
    """Text faithfulness of a set of clips. `accuracy` is the fraction of clips whose own
    caption is the closest candidate (chance = 1 / num_prompts); `errors` the banded-DTW
    hand-position error against the own caption, in frame heights."""

    accuracy: float
    chance: float
    num_clips: int
    num_prompts: int
    mean_error: float
    median_error: float
    detection_rate: float  # fraction of (frame, hand) where a hand was found
    candidates: tuple[str, ...]
    errors: np.ndarray = field(repr=False)  # (N,) error against the own caption
    error_matrix: np.ndarray = field(repr=False)  # (N, P) against every candidate
    predictions: tuple[str, ...] = field(repr=False)  # closest candidate per clip ('' if none)
    correct: np.ndarray = field(repr=False)  # (N,) bool

    @property
    def chance_stderr(self) -> float:
        """Standard error of the accuracy of a guesser at chance, for 'is this above chance'."""
        return math.sqrt(self.chance * (1.0 - self.chance) / max(self.num_clips, 1))

    def format(self) -> str:
        z = (self.accuracy - self.chance) / max(self.chance_stderr, 1e-12)
        return (f"Toy-signer faithfulness on {self.num_clips} clips: prompt identification "
                f"{self.accuracy:.1%} among {self.num_prompts} candidate prompts (chance "
                f"{self.chance:.1%}, {z:+.1f} standard errors from it); hand-trajectory error "
                f"against the own caption {self.mean_error:.3f} mean / {self.median_error:.3f} "
                f"median frame heights; hands found in {self.detection_rate:.1%} of frames.")

    __str__ = format

    def summary(self) -> dict[str, float]:
        """The headline numbers, for logs and JSON reports."""
        return {"accuracy": self.accuracy, "chance": self.chance,
                "num_clips": float(self.num_clips), "num_prompts": float(self.num_prompts),
                "mean_error": self.mean_error, "median_error": self.median_error,
                "detection_rate": self.detection_rate}


def score_clips(clips: Sequence[np.ndarray] | np.ndarray | None, captions: Sequence[str],
                candidate_prompts: Sequence[str] | None = None,
                tracks: Sequence[np.ndarray] | None = None) -> ToyScore:
    """Judge how well each clip performs its caption. Candidates default to the distinct
    captions; a clip counts as correct when its own caption has the lowest error of all
    candidates (a clip with no hand found anywhere counts as wrong). Clips may differ in size
    and length; `tracks` (from `track_hands`) skips the tracking."""
    if tracks is None and (clips is None or len(clips) != len(captions)):
        raise ValueError(f"{0 if clips is None else len(clips)} clips but {len(captions)} "
                         "captions")
    own = [caption_text(parse_caption(c)) for c in captions]
    if not own:
        raise ValueError("no clips to score")
    cands = (list(dict.fromkeys(own)) if candidate_prompts is None
             else list(dict.fromkeys(caption_text(parse_caption(c)) for c in candidate_prompts)))
    missing = sorted(set(own) - set(cands))
    if missing:
        raise ValueError(f"captions not among the candidate prompts: {missing}")
    if tracks is None:
        tracks = [track_hands(c) for c in clips]
    if len(tracks) != len(own):
        raise ValueError(f"{len(tracks)} tracks but {len(own)} captions")
    N, P = len(own), len(cands)
    matrix = np.full((N, P), np.inf)
    by_len: dict[int, list[int]] = {}
    for i, t in enumerate(tracks):
        by_len.setdefault(len(t), []).append(i)
    for F, idx in by_len.items():
        refs = np.stack([reference_trajectory(c, F) for c in cands])
        matrix[idx] = trajectory_errors(np.stack([tracks[i] for i in idx]), refs)
    own_idx = np.array([cands.index(c) for c in own])
    errors = matrix[np.arange(N), own_idx]
    none_found = np.array([np.isnan(t).all() for t in tracks])
    best = matrix.argmin(1)
    correct = (best == own_idx) & ~none_found
    found = np.concatenate([(~np.isnan(t[..., 0])).ravel() for t in tracks]) if N else np.zeros(0)
    return ToyScore(
        accuracy=float(correct.mean()) if N else float("nan"),
        chance=1.0 / P if P else float("nan"),
        num_clips=N, num_prompts=P,
        mean_error=float(errors.mean()) if N else float("nan"),
        median_error=float(np.median(errors)) if N else float("nan"),
        detection_rate=float(found.mean()) if found.size else float("nan"),
        candidates=tuple(cands), errors=errors, error_matrix=matrix,
        predictions=tuple("" if none_found[i] else cands[best[i]] for i in range(N)),
        correct=correct,
    )
