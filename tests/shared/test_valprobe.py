"""shared.app.valprobe: the training-time real-sign probe, on real-person clips (MediaPipe finds the
body in them), with samplers that return a known answer: the same motion late (a model that
signs the caption) and another caption's motion (one that does not)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason='pose metrics need ".[pose]"')
pytest.importorskip("skimage", reason='the person clips need ".[pose]"')
pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from benchmarks import personclips as pc  # noqa: E402
from shared.app.tensorboard import TensorBoardLogger  # noqa: E402
from shared.app.valprobe import ValidationProbe, choose_items  # noqa: E402
from shared.config import SampleConfig, apply_overrides, preset  # noqa: E402
from shared.data.dataset import ClipDataset  # noqa: E402
from shared.evaluation.pose import PoseCache  # noqa: E402

FRAMES, SIZE = 8, 128
MOTIONS = {"sway": pc.sway, "bow": pc.bow}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two wide MP4 "signers" per caption (another tempo each), as a real set would hold."""
    return pc.write_two_take_set(tmp_path_factory.mktemp("probe"), MOTIONS, 16)


@pytest.fixture(scope="module")
def probe(folder, tmp_path_factory) -> ValidationProbe:
    config = apply_overrides(preset("tiny"), [
        f"data.data_dir={folder}", f"data.num_frames={FRAMES}", f"data.image_size={SIZE}"])
    clips = ClipDataset(config.data, split="all", progress=False)
    items = choose_items(clips.captions, 2)
    refs = {i: np.array(clips[i][0]) for item in items for i in (*item.paired, *item.shuffled)}
    cache = PoseCache(tmp_path_factory.mktemp("pose"))
    notes: list[str] = []
    made = ValidationProbe(items, refs, SampleConfig(steps=2), cache, log=notes.append)
    made.notes = notes  # type: ignore[attr-defined]
    return made


def signs(motion_of: dict[str, str]):
    """A sampler whose clip for a caption is `motion_of[caption]`'s motion, 2 frames late."""
    def sample(captions: list[str], sample: SampleConfig) -> np.ndarray:
        assert sample.steps == 2
        return np.stack([pc.render(pc.delayed(FRAMES, 2), MOTIONS[motion_of[c]], height=SIZE)
                         for c in captions])
    return sample


def test_items_pair_each_caption_with_its_clips_and_others_for_the_baseline():
    captions = ["hello", "Hello ", "bye", "thanks", "bye"]
    items = choose_items(captions, 2, max_references=5, seed=3)
    assert [(i.caption, i.paired) for i in items] == [("hello", (0, 1)), ("bye", (2, 4))]
    for item in items:
        assert len(item.shuffled) == len(item.paired)
        assert not set(item.shuffled) & set(item.paired)
    assert items == choose_items(captions, 2, max_references=5, seed=3)  # fixed for the run
    (alone,) = choose_items(["hi", "hi"], 4)
    assert alone.paired == (0, 1) and alone.shuffled == ()


@pytest.mark.slow
def test_a_model_that_signs_the_caption_beats_the_shuffled_baseline(probe, tmp_path):
    with TensorBoardLogger(tmp_path) as tb:
        scores = probe.run(signs({"sway": "sway", "bow": "bow"}), step=7, tb=tb)
    assert scores["body_frames"] == 1.0
    assert scores["dtw_mje"] < 0.5 * scores["dtw_mje_shuffled"]
    assert scores["psnr"] > scores["psnr_shuffled"] and scores["ssim"] > scores["ssim_shuffled"]
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    assert set(events.Tags()["scalars"]) == {f"val/{k}" for k in scores}
    for key, value in scores.items():
        (event,) = events.Scalars(f"val/{key}")
        assert event.step == 7 and math.isfinite(event.value)
        assert event.value == pytest.approx(value, rel=1e-6)


def test_a_model_that_signs_another_caption_does_not(probe):
    scores = probe.run(signs({"sway": "bow", "bow": "sway"}), step=8)
    assert scores["dtw_mje"] > scores["dtw_mje_shuffled"]


def test_noise_logs_pixels_and_no_body_with_one_note(probe):
    noise = np.random.default_rng(0).integers(0, 256, (2, FRAMES, SIZE, SIZE, 3), np.uint8)
    probe.notes.clear()
    for step in (1, 2):
        scores = probe.run(lambda captions, sample: noise, step=step)
    assert scores["body_frames"] == 0.0 and "dtw_mje" not in scores
    assert 0 < scores["psnr"] < 15 and abs(scores["ssim"]) < 0.2
    assert len(probe.notes) == 1 and "DTW-MJE is not logged" in probe.notes[0]


def test_no_validation_split_turns_the_probe_off_with_a_reason(folder):
    config = apply_overrides(preset("tiny"), [f"data.data_dir={folder}", "data.val_fraction=0",
                                              "train.eval_every=5"])
    notes: list[str] = []
    assert ValidationProbe.create(config, notes.append) is None
    assert len(notes) == 1 and "data.val_fraction" in notes[0]


def test_frames_below_ssims_window_log_psnr_and_say_why_not_ssim():
    rng = np.random.default_rng(1)
    refs = {i: rng.integers(0, 256, (2, 8, 8, 3), np.uint8) for i in range(2)}
    notes: list[str] = []
    small = ValidationProbe(choose_items(["a", "b"], 2), refs, SampleConfig(), None, notes.append)
    scores = small.run(lambda captions, sample: np.stack([refs[1], refs[0]]), step=1)
    assert set(scores) == {"psnr", "psnr_shuffled"}
    assert scores["psnr"] < scores["psnr_shuffled"] == math.inf  # each clip is the other's
    assert len(notes) == 1 and "SSIM is not logged" in notes[0]
