"""Toy-signer data set: a small vocabulary of two-hand signs, rendered as clips.

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
* Judge. `shared.evaluation.toyjudge` reads the hands back and scores clips against captions;
  this module only draws them.
"""

from __future__ import annotations

import colorsys
import math
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

from shared.data.video import write_video

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
    gives every clip's caption instead (n of them;
    `shared.evaluation.textfollow.training_captions`)."""
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
