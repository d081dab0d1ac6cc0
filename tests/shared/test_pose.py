"""Pose keypoints (MediaPipe Holistic, the `pose` extra) on real decoded video that the tests
make from a bundled photo of a person (benchmarks/personclips.py): no mock of the keypoint model.

A clip against itself scores DTW-MJE 0; the same motion delayed, at another tempo, or filmed
elsewhere in a larger frame stays near 0; a mirrored clip or another motion does not.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason='pose metrics need ".[pose]"')
pytest.importorskip("skimage", reason='the person clips need ".[pose]"')

from benchmarks import personclips as pc  # noqa: E402
from shared.data.video import read_video, write_video  # noqa: E402
from shared.evaluation.metrics import dtw_mje  # noqa: E402
from shared.evaluation.pose import (  # noqa: E402
    NUM_JOINTS,
    PoseCache,
    PoseExtraMissing,
    PoseTrack,
    filled,
    pixels_key,
    require_mediapipe,
    shoulder_width,
)
from shared.evaluation.refeval import PoseSummary, pose_distance  # noqa: E402

N = 16
# Another framing of the same clip: a 160^2 frame, the person 0.8 of its height (128 px, as in
# the 128^2 clips, so MediaPipe sees them at the same resolution), off the centre.
ELSEWHERE = {"height": 160, "zoom": 0.8, "at": (-0.1, 0.0)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> PoseCache:
    with PoseCache(tmp_path_factory.mktemp("pose")) as c:
        yield c


def decoded(tmp_path_factory, name: str, frames: np.ndarray) -> np.ndarray:
    """The clip after a real round trip through a video file (as eval reads it)."""
    path = write_video(tmp_path_factory.mktemp("clips") / name, frames, fps=8)
    return read_video(path)[0]


@pytest.fixture(scope="module")
def tracks(cache, tmp_path_factory) -> dict[str, PoseTrack]:
    clips = {
        "base": pc.render(pc.uniform(N)),
        "delayed": pc.render(pc.delayed(N, 4)),
        "early": pc.render(pc.early(N, 4)),
        "eased": pc.render(pc.eased(N)),
        "mirrored": pc.mirrored(pc.render(pc.uniform(N))),
        "other": pc.render(pc.uniform(N), pc.bow),
        "elsewhere": pc.render(pc.uniform(N), **ELSEWHERE),
        "mirrored elsewhere": pc.mirrored(pc.render(pc.uniform(N), **ELSEWHERE)),
        "other elsewhere": pc.render(pc.uniform(N), pc.bow, **ELSEWHERE),
    }
    return {k: cache.track(decoded(tmp_path_factory, f"{k.replace(' ', '_')}.gif", v))
            for k, v in clips.items()}


@pytest.fixture(scope="module")
def summaries(tracks) -> dict[str, PoseSummary]:
    return {k: PoseSummary.of(t) for k, t in tracks.items()}


def test_the_body_is_found_in_every_frame_of_a_decoded_gif_and_mp4(cache, tmp_path_factory):
    frames = pc.render(pc.uniform(8), height=180, width=320)
    for suffix in (".gif", ".mp4"):
        track = cache.track(decoded(tmp_path_factory, f"wide{suffix}", frames))
        assert track.keypoints.shape == (8, NUM_JOINTS, 2)
        assert track.pose_found.all(), suffix
        body = track.keypoints[:, :11]
        assert np.isfinite(body).all()
        # keypoints are in pixels of this frame: the person stands in the centre square
        assert 60 < np.median(body[..., 0]) < 260 and 0 < np.median(body[..., 1]) < 180


def test_a_clip_against_itself_scores_zero(summaries):
    assert pose_distance(summaries["base"], summaries["base"]) == 0.0


def test_time_shifted_or_retimed_copies_stay_near_zero_and_others_do_not(summaries):
    base = summaries["base"]
    near = {k: pose_distance(summaries[k], base) for k in ("delayed", "early", "eased")}
    far = {k: pose_distance(summaries[k], base) for k in ("mirrored", "other")}
    # in shoulder widths: a retimed copy differs by keypoint jitter and frame sampling only
    assert max(near.values()) < 0.15, near
    assert min(far.values()) > 0.25, far
    assert max(near.values()) < 0.5 * min(far.values()), (near, far)
    # symmetric in which clip is the reference: each clip is in its own unit (its shoulder
    # width), no longer the reference's, so swapping them changes nothing
    assert pose_distance(base, summaries["other"]) == pytest.approx(far["other"], rel=1e-9)


def test_the_same_motion_framed_elsewhere_scores_near_zero_and_others_do_not(summaries, tracks):
    base = summaries["base"]
    elsewhere = pose_distance(summaries["elsewhere"], base)
    far = {k: pose_distance(summaries[k], base) for k in ("mirrored elsewhere", "other elsewhere")}
    # each clip in its own body frame: as close as the delayed copy (the bound above)
    assert elsewhere < 0.15, elsewhere
    assert min(far.values()) > 0.25 and elsewhere < 0.5 * min(far.values()), (elsewhere, far)
    # the framing really differs: compared where the points lie in the frame, in the
    # reference's shoulder widths (the metric before), the same motion looked like another
    in_frame = dtw_mje(filled(tracks["elsewhere"]), filled(tracks["base"]),
                       shoulder_width(tracks["base"]))
    assert in_frame > 0.4, in_frame


def test_a_still_clip_travels_nowhere_and_a_moving_one_does(cache):
    still = PoseSummary.of(cache.track(pc.render(np.zeros(6))))
    moving = PoseSummary.of(cache.track(pc.render(pc.uniform(6))))
    # static-image mode: the same frame always gives the same keypoints
    assert still.hand_travel == 0.0
    assert moving.hand_travel > 0.5
    assert 0.0 <= moving.hand_frames <= 1.0 and moving.body_frames == 1.0


def test_the_cache_serves_the_same_pixels_without_running_the_model(tmp_path):
    frames = pc.render(pc.uniform(4))
    with PoseCache(tmp_path) as first:
        track = first.track(frames)
        assert (first.hits, first.misses) == (0, 1)
    with PoseCache(tmp_path) as second:
        again = second.track(frames.copy())
        assert (second.hits, second.misses) == (1, 0)
        assert second._extractor is None  # mediapipe's graph was never built
    np.testing.assert_array_equal(track.keypoints, again.keypoints)
    assert pixels_key(frames) != pixels_key(frames[::-1])
    # a damaged entry is recomputed, not trusted
    entry = next(tmp_path.glob("*.npz"))
    entry.write_bytes(b"not an npz")
    with PoseCache(tmp_path) as third:
        np.testing.assert_array_equal(third.track(frames).keypoints, track.keypoints)
        assert third.misses == 1


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # as if not installed
    with pytest.raises(PoseExtraMissing, match=r'pip install "\.\[pose\]"') as info:
        require_mediapipe()
    assert "\n" not in str(info.value)
