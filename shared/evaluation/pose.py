"""Body and hand keypoints of a clip (MediaPipe Holistic), cached per clip.

Pose metrics compare where the signer's body and hands are, frame by frame, each clip in its
own body frame (`body_normalised`: centred on the shoulders, in shoulder widths). MediaPipe
Holistic 0.10.14 is used because its wheel ships the pose, hand and face models, so it runs
offline; it is the optional extra `pose` (`pip install ".[pose]"`). Extraction runs in
static-image mode (each frame on its own): the result of a frame does not depend on the frames
before it, so a cached clip, a reordered clip and a repeated frame all give the same keypoints.

A track holds 53 points per frame in pixels of the frame it was found in: 11 upper-body points
(nose, eyes, ears, shoulders, elbows, wrists) and 21 per hand (the signer's left, then right).
Points not found are NaN. The cache is keyed by the pixels themselves (and the extractor's
version), so the same clip at the same size is never processed twice, wherever it lies.

MediaPipe's C++ side logs straight to file descriptor 2 (absl lines such as `W0000 ...
inference_feedback_manager.cc`, TFLite's `INFO: Created ... delegate`), which neither Python's
`sys.stderr` nor GLOG_minloglevel / TF_CPP_MIN_LOG_LEVEL reach in 0.10.14; every native call
therefore runs inside `quiet_native()`. Set T2S_MEDIAPIPE_LOGS=1 to see those lines again.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.data.clips import DataError
from shared.io_atomic import write_bytes_atomic

POSE_EXTRA_HINT = 'pip install ".[pose]"  (mediapipe==0.10.14, which ships its models)'
MEDIAPIPE_VERSION = "0.10.14"
# Bump when extraction changes in a way that invalidates cached tracks.
POSE_CACHE_VERSION = 1
# Set to 1 to let MediaPipe's native log lines through (when debugging the extractor).
LOGS_ENV = "T2S_MEDIAPIPE_LOGS"

# MediaPipe Pose landmark indices of the upper body: nose, eyes, ears, shoulders, elbows, wrists.
BODY_LANDMARKS = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16)
BODY_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
              "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist")
HAND_POINTS = 21
NUM_JOINTS = len(BODY_LANDMARKS) + 2 * HAND_POINTS
LEFT_SHOULDER, RIGHT_SHOULDER = 5, 6  # positions in the track's joint axis
LEFT_WRIST, RIGHT_WRIST = 9, 10
LEFT_HAND = slice(len(BODY_LANDMARKS), len(BODY_LANDMARKS) + HAND_POINTS)
RIGHT_HAND = slice(len(BODY_LANDMARKS) + HAND_POINTS, NUM_JOINTS)


class PoseExtraMissing(DataError):
    """The pose extra is not installed; the message is the one line that fixes it."""


@dataclass(frozen=True)
class PoseTrack:
    """Keypoints of one clip: (F, 53, 2) pixels (NaN where not found) and what was found."""

    keypoints: np.ndarray  # float32 (F, NUM_JOINTS, 2), x then y, in pixels
    pose_found: np.ndarray  # bool (F,)
    hands_found: np.ndarray  # bool (F, 2): the signer's left, right hand

    def __len__(self) -> int:
        return len(self.keypoints)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, keypoints=self.keypoints, pose_found=self.pose_found,
                 hands_found=self.hands_found)
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path) -> PoseTrack:
        with np.load(path) as z:
            return cls(z["keypoints"], z["pose_found"], z["hands_found"])


def require_mediapipe():
    """The mediapipe module, or a one-line error naming the extra to install."""
    try:
        import mediapipe as mp
    except ImportError as e:
        raise PoseExtraMissing(f"pose metrics need MediaPipe Holistic: {POSE_EXTRA_HINT}") from e
    if not hasattr(mp, "solutions"):
        raise PoseExtraMissing(f"mediapipe {getattr(mp, '__version__', '?')} has no bundled "
                               f"Holistic models; {POSE_EXTRA_HINT}")
    return mp


@contextmanager
def _stderr_fd_to_devnull() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null until the block ends, then back where it was, so
    only what native code writes meanwhile is lost (a progress bar written between calls shows).
    Left alone when descriptor 2 is not open."""
    for stream in (sys.stderr, sys.__stderr__):
        with suppress(AttributeError, ValueError, OSError):  # None or closed: nothing pending
            stream.flush()  # Python's own pending text goes out before the switch
    try:
        saved = os.dup(2)
    except OSError:
        saved = None
    if saved is None:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextmanager
def quiet_native() -> Iterator[None]:
    """Runs a MediaPipe call without its native log lines and protobuf's deprecation warning
    (`SymbolDatabase.GetPrototype() is deprecated`, raised inside mediapipe, not ours to fix),
    which would otherwise bury an evaluation's summary. T2S_MEDIAPIPE_LOGS=1 shows them."""
    if os.environ.get(LOGS_ENV, "") not in ("", "0"):
        yield
        return
    with warnings.catch_warnings(), _stderr_fd_to_devnull():
        warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\)")
        yield


class HolisticExtractor:
    """One MediaPipe Holistic graph reused across clips (building it costs ~0.2 s)."""

    def __init__(self, min_detection_confidence: float = 0.5):
        mp = require_mediapipe()
        with quiet_native():
            # model_complexity=1 is the only pose model the 0.10.14 wheel ships (0 and 2 download).
            self._graph = mp.solutions.holistic.Holistic(
                static_image_mode=True, model_complexity=1, smooth_landmarks=False,
                min_detection_confidence=min_detection_confidence)
            # The graph opens its models on its own threads, which log after the constructor
            # returns; one blank frame waits for them while stderr is still quiet.
            self._graph.process(np.zeros((32, 32, 3), np.uint8))

    def close(self) -> None:
        with quiet_native():
            self._graph.close()

    def __enter__(self) -> HolisticExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frame(self, image: np.ndarray) -> tuple[np.ndarray, bool, tuple[bool, bool]]:
        """Keypoints (53, 2) in pixels of one RGB uint8 frame, and what was found."""
        h, w = image.shape[:2]
        with quiet_native():
            result = self._graph.process(np.ascontiguousarray(image))
        points = np.full((NUM_JOINTS, 2), np.nan, np.float32)

        def fill(landmarks, rows, index: Iterable[int]) -> bool:
            if landmarks is None:
                return False
            marks = landmarks.landmark
            points[rows] = [(marks[i].x * w, marks[i].y * h) for i in index]
            return True

        pose = fill(result.pose_landmarks, slice(0, len(BODY_LANDMARKS)), BODY_LANDMARKS)
        left = fill(result.left_hand_landmarks, LEFT_HAND, range(HAND_POINTS))
        right = fill(result.right_hand_landmarks, RIGHT_HAND, range(HAND_POINTS))
        return points, pose, (left, right)

    def clip(self, frames: np.ndarray) -> PoseTrack:
        """Keypoints of every frame of a uint8 (F, H, W, 3) clip; a frame repeated in the clip
        is processed once."""
        seen: dict[bytes, tuple[np.ndarray, bool, tuple[bool, bool]]] = {}
        rows = []
        for f in frames:
            key = hashlib.sha1(f.tobytes()).digest()
            if key not in seen:
                seen[key] = self.frame(f)
            rows.append(seen[key])
        return PoseTrack(np.stack([r[0] for r in rows]), np.array([r[1] for r in rows]),
                         np.array([r[2] for r in rows], dtype=bool).reshape(len(rows), 2))


def pixels_key(frames: np.ndarray) -> str:
    """The cache key of a clip: a hash of its pixels, shape and the extractor's version."""
    h = hashlib.sha256(f"pose-v{POSE_CACHE_VERSION}|mp{MEDIAPIPE_VERSION}|{frames.shape}".encode())
    h.update(np.ascontiguousarray(frames, dtype=np.uint8).tobytes())
    return h.hexdigest()[:32]


class PoseCache:
    """Keypoint tracks on disk, one `.npz` per clip, keyed by the clip's pixels.

    The MediaPipe graph is built only on the first miss, so a fully cached evaluation neither
    needs nor imports mediapipe.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._extractor: HolisticExtractor | None = None
        self.hits = 0
        self.misses = 0

    def track(self, frames: np.ndarray) -> PoseTrack:
        path = self.root / f"{pixels_key(frames)}.npz"
        if path.exists():
            try:
                track = PoseTrack.from_file(path)
                self.hits += 1
                return track
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a damaged entry is recomputed
        if self._extractor is None:
            self._extractor = HolisticExtractor()
        track = self._extractor.clip(frames)
        self.misses += 1
        self.root.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, track.to_bytes(), prefix=f".{path.stem}.")
        return track

    def close(self) -> None:
        if self._extractor is not None:
            self._extractor.close()
            self._extractor = None

    def __enter__(self) -> PoseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------- tracks ready to compare


def shoulder_width(track: PoseTrack) -> float:
    """Median distance between the shoulders over the frames with a body (NaN if none): each
    clip's own unit in the pose metrics, so a score does not depend on image size or on how
    large the signer appears."""
    k = track.keypoints
    d = np.linalg.norm(k[:, LEFT_SHOULDER] - k[:, RIGHT_SHOULDER], axis=-1)
    d = d[track.pose_found & np.isfinite(d)]
    return float(np.median(d)) if len(d) else float("nan")


def shoulder_centre(track: PoseTrack) -> np.ndarray:
    """(2,): the median shoulder midpoint over the frames with a body (NaN if none)."""
    k = track.keypoints
    mid = (k[:, LEFT_SHOULDER] + k[:, RIGHT_SHOULDER]) / 2
    mid = mid[track.pose_found & np.isfinite(mid).all(axis=-1)]
    return np.median(mid, axis=0).astype(np.float64) if len(mid) else np.full(2, np.nan)


def body_normalised(track: PoseTrack) -> np.ndarray | None:
    """The filled keypoints in the clip's own body frame: origin at the shoulder midpoint, unit
    the shoulder width, both the clip's median over its frames with a body. None when the clip
    has no body (or no shoulder width).

    Each clip is normalised by its own body, so where the signer stands in the frame and how
    large they appear no longer count, only how they move; the hands stay where they are
    relative to the body, which is the sign. The origin is the clip's median, not each frame's
    own midpoint: a per-frame origin would add the shoulders' keypoint jitter to all 53 points
    of every frame, and would erase the body's own movement within the clip (a lean, a shift,
    a nod of the shoulders), which belongs to the signing. A clip whose camera moves while it
    films would need the per-frame origin; sign-language references are filmed still.
    """
    points = filled(track)
    scale = shoulder_width(track)
    if points is None or not scale > 0:
        return None
    return (points - shoulder_centre(track)) / scale


def filled(track: PoseTrack) -> np.ndarray | None:
    """The keypoints with gaps closed, ready for a frame-by-frame comparison, or None when the
    clip has no body in any frame.

    A hand not found sits at its wrist (all 21 points), so a missing hand costs the hand's
    spread instead of vanishing from the error; a frame without a body takes the keypoints of
    the nearest frame with one (the earlier one on a tie).
    """
    if not track.pose_found.any():
        return None
    k = track.keypoints.astype(np.float64).copy()
    for hand, found_col, wrist in ((LEFT_HAND, 0, LEFT_WRIST), (RIGHT_HAND, 1, RIGHT_WRIST)):
        missing = ~track.hands_found[:, found_col]
        k[missing, hand] = k[missing, wrist][:, None, :]
    have = np.flatnonzero(track.pose_found)
    for f in np.flatnonzero(~track.pose_found):
        k[f] = k[have[np.argmin(np.abs(have - f))]]
    return k


def hand_positions(track: PoseTrack) -> np.ndarray:
    """(F, 2, 2): each hand's position per frame, its own wrist point where the hand was found,
    else the body's wrist (NaN when neither was)."""
    k = track.keypoints
    left = np.where(track.hands_found[:, :1], k[:, LEFT_HAND.start], k[:, LEFT_WRIST])
    right = np.where(track.hands_found[:, 1:], k[:, RIGHT_HAND.start], k[:, RIGHT_WRIST])
    return np.stack([left, right], axis=1)
