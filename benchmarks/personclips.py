"""Clips of a real person made from one bundled photograph, for checking the pose metrics.

A fixture of the tests and the benchmarks (`metric_reference.py`, `eval_reference.py`,
`reference_quality.py`), not part of the installed core: nothing in `shared/` makes or needs it.

No signing video ships with any installed package, and none can be downloaded here, but the
keypoint model must be tested on real pixels, not on mocks. scikit-image's wheel bundles a
photograph of a person (`skimage.data.astronaut()`, a NASA portrait) on which MediaPipe finds
the body in every frame. Moving that photo on a camera-like path over the frames makes clips
whose keypoints move: the same path delayed or played at another speed is "the same sign",
a mirrored copy or another path is not.

A path is a function of the motion's phase p in [0, 1]; a clip samples it at chosen phases,
so a delay or a change of speed is only another list of phases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def person_photo() -> np.ndarray:
    """The astronaut portrait, RGB uint8 (512, 512, 3) (needs scikit-image, in the pose extra)."""
    try:
        from skimage import data
    except ImportError as e:
        raise ImportError('the person test clips need scikit-image: pip install ".[pose]"') from e
    return data.astronaut()


@dataclass(frozen=True)
class Pose2D:
    """Where the photo sits at one phase: a shift (fractions of the frame) and a tilt."""

    dx: float = 0.0
    dy: float = 0.0
    degrees: float = 0.0


Path2D = Callable[[float], Pose2D]


def sway(p: float) -> Pose2D:
    """Left, right and back with a small tilt: one motion."""
    s = np.sin(2 * np.pi * p)
    return Pose2D(dx=0.12 * s, dy=0.0, degrees=8.0 * s)


def bow(p: float) -> Pose2D:
    """Down and up with a tilt the other way: another motion."""
    s = np.sin(np.pi * p)
    return Pose2D(dx=-0.04 * s, dy=0.14 * s, degrees=-10.0 * s)


def uniform(n: int) -> np.ndarray:
    """n phases at a constant speed."""
    return np.linspace(0.0, 1.0, n)


def delayed(n: int, hold: int) -> np.ndarray:
    """The whole motion, starting `hold` frames late (held still before)."""
    return np.concatenate([np.zeros(hold), np.linspace(0.0, 1.0, n - hold)])


def early(n: int, hold: int) -> np.ndarray:
    """The whole motion, finished `hold` frames early (held still after)."""
    return np.concatenate([np.linspace(0.0, 1.0, n - hold), np.ones(hold)])


def eased(n: int) -> np.ndarray:
    """The motion slow at first and fast at the end: the same sign at another tempo."""
    return uniform(n) ** 2


def render(phases: Sequence[float], path: Path2D = sway, height: int = 128,
           width: int | None = None, photo: np.ndarray | None = None,
           background: tuple[int, int, int] = (96, 96, 96), zoom: float = 1.0,
           at: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """uint8 (F, height, width, 3): the photo, scaled to the frame's height and centred, moved
    along `path` at each phase. A landscape frame keeps the person inside the centre square, so
    the training transform's centre crop sees all of them.

    `zoom` scales the person (1: the photo as tall as the frame; smaller, they stand on the
    frame's bottom edge, cut by it as at 1) and `at` moves them (x, y in fractions of the
    frame's height): another framing of the same motion, whose shifts scale with the person, as
    another camera would see the same signer.
    """
    photo = person_photo() if photo is None else photo
    width = width or height
    size = round(height * zoom)
    image = Image.fromarray(photo).resize((size, size), Image.Resampling.BICUBIC)
    frames = []
    for p in phases:
        pose = path(float(p))
        moved = image.rotate(pose.degrees, resample=Image.Resampling.BICUBIC,
                             fillcolor=background)
        canvas = Image.new("RGB", (width, height), background)
        canvas.paste(moved, (round((width - size) / 2 + at[0] * height + pose.dx * size),
                             round(height - size + at[1] * height + pose.dy * size)))
        frames.append(np.asarray(canvas))
    return np.stack(frames)


def mirrored(frames: np.ndarray) -> np.ndarray:
    """The clip flipped left to right: the signer's hands and sides swap."""
    return np.ascontiguousarray(frames[:, :, ::-1])


def write_two_take_set(folder: Path, paths: Mapping[str, Path2D], frames: int,
                       height: int = 180, width: int = 320) -> Path:
    """Each caption twice, as wide MP4 + .txt: take "a" at an even tempo, "b" eased. The smallest
    real-pixel set where every clip has a same-caption mate and other captions to be shuffled
    against, which the reference metrics' baseline needs."""
    from shared.data.video import write_video

    for caption, path in paths.items():
        for take, phases in (("a", uniform(frames)), ("b", eased(frames))):
            write_video(folder / f"{caption}_{take}.mp4",
                        render(phases, path, height=height, width=width), 25)
            (folder / f"{caption}_{take}.txt").write_text(caption + "\n")
    return folder
