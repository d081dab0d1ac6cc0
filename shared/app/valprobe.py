"""Real-sign metrics on the validation split during training (`train.eval_every`).

The training loss says how well the model denoises, not whether its samples look like the
signs it was asked for. Every `train.eval_every` steps the trainer hands this probe a sampler
(the backend's, on the EMA weights); the probe draws one clip for each of a fixed handful of
validation captions (`train.eval_clips`, `train.eval_steps` sampler steps, the run's sampler,
eta and guidance, a fixed seed, so successive points differ only by the weights) and scores it
as `eval --reference` does (`shared.evaluation.refeval`): PSNR and SSIM against the validation clips
of that caption, DTW-MJE over MediaPipe body and hand keypoints, and each metric against clips of
*other* validation captions, the shuffled-caption baseline. A model that follows its text pulls
the paired curve away from the shuffled one; one that only learned the background moves both.

The references are the validation split's cached clips, already at the model's size through
the training transform, so nothing is decoded here. Keypoints of the references are cached on
disk next to the decoded clips; the generated clips' are computed each time (they change).
Without the `pose` extra, pose is skipped with one note and the pixel metrics still run.

Logged under `val/`: psnr, ssim, dtw_mje (when a body is found in both clips of some pair),
each with a `_shuffled` twin, and with pose on, `body_frames` / `hand_frames`: the share of
generated frames where MediaPipe finds a body / a hand (0 for noise; a signer needs both).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from shared.app.tensorboard import TensorBoardLogger
from shared.config import Config, SampleConfig
from shared.data.clips import DataError
from shared.data.dataset import ClipDataset
from shared.data.decode_cache import cache_root
from shared.evaluation.metrics import psnr, ssim
from shared.evaluation.pose import PoseCache, PoseExtraMissing, require_mediapipe
from shared.evaluation.refeval import POSE_CACHE_NAME, PoseSummary, caption_key, pose_distance

# captions -> uint8 clips (N, F, S, S, 3), one per caption: the backend's sampler on EMA weights.
SampleFn = Callable[[list[str], SampleConfig], np.ndarray]
TAG = "val"
PIXEL_METRICS = ("psnr", "ssim")
SSIM_MIN_SIDE = 11  # shared.evaluation.metrics.ssim's Gaussian window


@dataclass(frozen=True)
class ProbeItem:
    """One validation caption: the clips it is scored against, paired and shuffled."""

    caption: str
    paired: tuple[int, ...]  # indices into the validation set
    shuffled: tuple[int, ...]


def choose_items(captions: Sequence[str], num: int, max_references: int = 5, seed: int = 0
                 ) -> list[ProbeItem]:
    """The first `num` distinct captions of the validation set (in its own, sorted order), each
    with up to `max_references` clips of that caption and as many drawn, with a fixed seed, from
    other captions. Fixed for the run, so successive evaluations are comparable."""
    groups: dict[str, list[int]] = {}
    for i, caption in enumerate(captions):
        groups.setdefault(caption_key(caption), []).append(i)
    items = []
    for k, (key, members) in enumerate(list(groups.items())[:num]):
        paired = members[:max_references]
        others = [i for other, group in groups.items() if other != key for i in group]
        rng = np.random.default_rng([seed, k])
        picked = (rng.choice(len(others), min(len(paired), len(others)), replace=False)
                  if others else [])
        items.append(ProbeItem(captions[members[0]], tuple(paired),
                               tuple(sorted(others[int(j)] for j in picked))))
    return items


class ValidationProbe:
    """Scores samples of a few validation captions against their reference clips; see the
    module doc. Built once per run (`create`), called every `train.eval_every` steps."""

    def __init__(self, items: Sequence[ProbeItem], references: Mapping[int, np.ndarray],
                 sample: SampleConfig, pose_cache: PoseCache | None,
                 log: Callable[[str], None] = print):
        if not items:
            raise DataError("the validation probe needs at least one validation clip")
        self.items = list(items)
        self.references = dict(references)  # validation index -> uint8 (F, S, S, 3)
        self.sample = sample
        self.pose_cache = pose_cache
        self.log = log
        self._noted: set[str] = set()
        self._ref_pose: dict[int, PoseSummary] = {}
        if not any(item.shuffled for item in self.items):
            self._note("baseline", "validation probe: every validation clip has the same "
                       "caption, so there is no shuffled-caption baseline")

    @classmethod
    def create(cls, config: Config, log: Callable[[str], None] = print,
               progress: bool = False) -> ValidationProbe | None:
        """The probe `config` asks for, or None (with one line saying why) when it cannot run:
        no validation split. Pose is dropped, with one note, without the `pose` extra."""
        tc = config.train
        try:
            val = ClipDataset(replace(config.data, vae=""), split="val", progress=progress)
        except DataError as error:
            log(f"validation probe off: {error}")
            return None
        if len(val) == 0:
            log(f"validation probe off (train.eval_every={tc.eval_every}): the validation split "
                f"is empty (data.val_fraction={config.data.val_fraction}); set "
                "data.val_fraction > 0")
            return None
        pose_cache = None
        if tc.eval_pose:
            try:
                require_mediapipe()
                pose_cache = PoseCache(cache_root(config.data).parent / POSE_CACHE_NAME)
            except PoseExtraMissing as error:
                log(f"validation probe: pose metrics skipped, {error}")
        items = choose_items(val.captions, tc.eval_clips, seed=config.data.seed)
        # Only the clips the probe scores are read (from the memory-mapped cache), once.
        references = {i: np.array(val[i][0]) for item in items
                      for i in (*item.paired, *item.shuffled)}
        sample = replace(config.sample, steps=tc.eval_steps, num_samples=1)
        return cls(items, references, sample, pose_cache, log)

    def _note(self, key: str, message: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            self.log(message)

    def _reference_pose(self, index: int) -> PoseSummary:
        assert self.pose_cache is not None
        if index not in self._ref_pose:
            self._ref_pose[index] = PoseSummary.of(self.pose_cache.track(self.references[index]))
        return self._ref_pose[index]

    def score(self, clips: np.ndarray) -> dict[str, float]:
        """The probe's scalars for uint8 clips, one per item in order (see the module doc)."""
        if len(clips) != len(self.items):
            raise ValueError(f"{len(clips)} clips for {len(self.items)} validation captions")
        sums: dict[str, list[float]] = {}

        def add(key: str, value: float | None) -> None:
            if value is not None:
                sums.setdefault(key, []).append(value)

        for clip, item in zip(clips, self.items, strict=True):
            if clip.shape != self.references[item.paired[0]].shape:
                raise ValueError(f"generated {clip.shape} but references are "
                                 f"{self.references[item.paired[0]].shape}")
            gen_pose = (PoseSummary.of(self.pose_cache.track(clip))
                        if self.pose_cache is not None else None)
            if gen_pose is not None:
                add("body_frames", gen_pose.body_frames)
                add("hand_frames", gen_pose.hand_frames)
            for side, indices in (("", item.paired), ("_shuffled", item.shuffled)):
                pixel = {m: [] for m in PIXEL_METRICS}
                poses = []
                for i in indices:
                    ref = self.references[i]
                    pixel["psnr"].append(psnr(clip, ref))
                    if min(clip.shape[1:3]) >= SSIM_MIN_SIDE:
                        pixel["ssim"].append(ssim(clip, ref))
                    if gen_pose is not None:
                        d = pose_distance(gen_pose, self._reference_pose(i))
                        if d is not None:
                            poses.append(d)
                for m in PIXEL_METRICS:
                    if pixel[m]:
                        add(m + side, float(np.mean(pixel[m])))
                if poses:
                    add("dtw_mje" + side, float(np.mean(poses)))
        if min(clips.shape[2:4]) < SSIM_MIN_SIDE:
            self._note("ssim", f"validation probe: {clips.shape[2]}-pixel frames are smaller "
                       f"than SSIM's {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} window; SSIM is not logged")
        if self.pose_cache is not None and "dtw_mje" not in sums:
            self._note("no-body", "validation probe: no body found in the generated clips (or "
                       "their references) yet, so DTW-MJE is not logged; val/body_frames "
                       "shows when the samples start to hold a signer")
        return {k: float(np.mean(v)) for k, v in sums.items()}

    def run(self, sample_fn: SampleFn, step: int, tb: TensorBoardLogger | None = None
            ) -> dict[str, float]:
        """Sample the probe's captions with `sample_fn`, score them, log `val/*` at `step`."""
        clips = np.asarray(sample_fn([item.caption for item in self.items], self.sample))
        scores = self.score(clips)
        if tb is not None:
            tb.scalars({f"{TAG}/{k}": v for k, v in scores.items()}, step)
        return scores

    def close(self) -> None:
        if self.pose_cache is not None:
            self.pose_cache.close()
