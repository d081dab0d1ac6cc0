"""`data prepare`'s cut: decode only the frames a segment needs, then fit them to the output size.

A segment is decoded from the nearest keyframe before its start, and only the picked frames are
converted to RGB, so a 10-minute 720p video costs its decode, not its memory. Segments past the
video's end and undecodable files raise `SegmentError` with a bad-row reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from shared.data.clips import DataError
from shared.data.prepare_plan import PAST_END, UNDECODABLE
from shared.data.video import GIF_SUFFIXES, read_video

FITS = ("letterbox", "crop", "stretch")

_EPS = 1e-6
_MIN_FPS, _MAX_FPS = 1.0, 50.0


class SegmentError(Exception):
    """A segment that cannot be cut; `reason` is one of the bad-row reasons."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


# ---------------------------------------------------------------- cutting


@contextmanager
def _timed_frames(path: Path, seek_to: float):
    """(fps, duration or None, iterator of (time in s, () -> RGB uint8 frame)), starting at
    the last keyframe at or before `seek_to`; times count from the video's first frame."""
    if path.suffix.lower() in GIF_SUFFIXES:
        frames, fps = read_video(path)
        yield fps, len(frames) / fps, ((k / fps, (lambda f=f: f)) for k, f in enumerate(frames))
        return
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise SegmentError(UNDECODABLE, f"{path.name} has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        offset = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        duration = (float(stream.duration * stream.time_base) if stream.duration
                    else container.duration / av.time_base if container.duration else None)
        if seek_to > 0:
            container.seek(int((seek_to + offset) / stream.time_base), stream=stream)

        def frames() -> Iterator[tuple[float, Callable[[], np.ndarray]]]:
            last = None
            for frame in container.decode(stream):
                t = frame.time - offset if frame.time is not None else (
                    0.0 if last is None else last + 1 / fps)
                last = t
                yield t, (lambda fr=frame: fr.to_ndarray(format="rgb24"))

        yield fps, duration, frames()


def cut_segment(path: Path, start: float | None, end: float | None, num_frames: int,
                keep_fps: bool = False) -> tuple[np.ndarray, float, float, float]:
    """The frames shown at `num_frames` evenly spaced instants of [start, end) (the middle of
    each slice), or one per source frame with `keep_fps`. Returns (frames, fps to play them
    at in real time, start, end); start None means the whole clip.

    Raises SegmentError for a segment past the video's end (more than one frame interval
    beyond the last frame) and for files that cannot be decoded."""
    whole = start is None
    try:
        with _timed_frames(path, start or 0.0) as (fps, duration, frames):
            if whole:
                if duration is None:  # no duration in the container: read the frame times
                    frames = list(frames)
                    duration = frames[-1][0] + 1 / fps if frames else 1 / fps
                start, end = 0.0, duration
            n = max(1, round((end - start) * fps)) if keep_fps else num_frames
            targets = start + (np.arange(n) + 0.5) * (end - start) / n
            picked, last_t = _pick(frames, targets)
    except SegmentError:
        raise
    except Exception as e:  # decoders raise many types for damaged files
        raise SegmentError(UNDECODABLE, f"cannot decode {path.name} ({type(e).__name__}: "
                                        f"{e})") from e
    if last_t is not None and not whole:  # the video ended before the last target
        video_end = last_t + 1 / fps
        if start >= video_end - _EPS or end > video_end + 1 / fps + _EPS:
            raise SegmentError(PAST_END, f"segment {start:g}-{end:g} s goes past the end of "
                                         f"{path.name} ({video_end:.2f} s)")
    out_fps = fps if keep_fps else min(_MAX_FPS, max(_MIN_FPS, n / (end - start)))
    return np.stack(picked), out_fps, start, end


def _pick(frames: Iterable[tuple[float, Callable[[], np.ndarray]]],
          targets: np.ndarray) -> tuple[list[np.ndarray], float | None]:
    """For each target time, the frame on screen then (the last one starting at or before it),
    converting only those. Returns the picks and, if the video ended first, its last frame's
    time (None when every target was reached before the end)."""
    picks: list[np.ndarray] = []
    shown: list = [None, None, None]  # time, converter, converted array of the frame on screen
    i = 0
    for t, convert in frames:
        while i < len(targets) and t > targets[i] + _EPS:
            if shown[1] is None:  # the target precedes the first decodable frame
                shown = [t, convert, None]
            if shown[2] is None:
                shown[2] = shown[1]()
            picks.append(shown[2])
            i += 1
        if i == len(targets):
            return picks, None
        shown = [t, convert, None]
    if shown[1] is None:
        raise SegmentError(UNDECODABLE, "no frames")
    rest = len(targets) - i
    if rest:
        last = shown[2] if shown[2] is not None else shown[1]()
        picks.extend([last] * rest)
    return picks, shown[0]


def fit_frames(frames: np.ndarray, height: int, width: int, fit: str = "letterbox") -> np.ndarray:
    """Frames (F, h, w, 3) -> (F, height, width, 3). letterbox: the whole picture, scaled to
    fit, centred on black; crop: scaled to cover, centre cut; stretch: aspect ignored."""
    if fit not in FITS:
        raise DataError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    h, w = frames.shape[1:3]
    if (h, w) == (height, width):
        return frames
    if fit == "stretch":
        size = (width, height)
    elif fit == "letterbox":
        scale = min(width / w, height / h)
        size = (min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale))))
    else:
        scale = max(width / w, height / h)
        size = (max(width, round(w * scale)), max(height, round(h * scale)))
    out = np.zeros((len(frames), height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        image = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))
        if fit == "crop":
            top, left = (size[1] - height) // 2, (size[0] - width) // 2
            out[i] = image[top:top + height, left:left + width]
        else:
            top, left = (height - size[1]) // 2, (width - size[0]) // 2
            out[i, top:top + size[1], left:left + size[0]] = image
    return out
