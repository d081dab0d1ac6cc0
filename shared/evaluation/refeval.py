"""`eval GENERATED --reference DIR`: generated clips scored against real signing clips.

Each generated clip is paired with the reference clips of the same caption (captions compared
case- and space-insensitively) and scored, per clip and in total, on:

- PSNR and SSIM at the generated size, the reference brought there by the training transform
  (uniform frame resampling, centre square crop, bicubic resize;
  `shared.data.preprocess.preprocess_clip`);
- pose, from MediaPipe Holistic body + hand keypoints (`shared.evaluation.pose`): DTW-MJE, the
  mean joint error along the best time alignment, each clip's keypoints first moved to its own
  body frame (origin at its median shoulder midpoint, unit its median shoulder width, so where the
  signer stands and how large they appear do not count); the share of frames with a hand found;
  the total distance both hands travel and the clip's duration, each as a ratio to the
  reference's;
- FVD over the whole set, only with a user-supplied local I3D (`shared.evaluation.fvd`).

Every metric is also computed against references of *other* captions (the same number, drawn
with a fixed seed): the shuffled-caption baseline. A model that follows its text scores better
paired than shuffled; without that gap, a good PSNR only says the background is right.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from shared.config import DataConfig
from shared.data.clips import CACHE_DIRNAME, Clip, DataError, DataReport, find_clips
from shared.data.decode_cache import prepare_cache
from shared.data.video import read_video
from shared.evaluation.fvd import FeatureExtractor, FVDProtocol, clip_features, fvd
from shared.evaluation.metrics import dtw_mje, path_length, psnr, ssim
from shared.evaluation.pose import (
    PoseCache,
    PoseTrack,
    body_normalised,
    hand_positions,
    shoulder_width,
)

POSE_CACHE_NAME = "pose-v1"
# (key, label, which way is better) in report order.
METRICS = (
    ("psnr", "PSNR (dB)", "higher"),
    ("ssim", "SSIM", "higher"),
    ("dtw_mje", "DTW-MJE (shoulder widths)", "lower"),
    ("hand_travel_ratio", "hand travel / reference", "near 1"),
    ("duration_ratio", "duration / reference", "near 1"),
    ("ref_hand_frames", "reference frames with a hand", "context"),
)


@dataclass(frozen=True)
class RefEvalConfig:
    """How generated clips meet their references."""

    # References of one caption scored per generated clip (the first ones by path); the
    # shuffled baseline draws the same number from other captions.
    max_references: int = 5
    seed: int = 0
    pose: bool = True
    # A `filename,text` CSV for the reference folder, as `data.labels_file` for training.
    labels_file: str | None = None
    # Where keypoint tracks are cached; None = each folder's own `.t2s_cache/pose-v1`.
    pose_cache_dir: str | None = None
    fvd_size: int = 224
    progress: bool = True


def caption_key(text: str) -> str:
    """Captions match whatever their case and spacing ("Hello  world" == "hello world")."""
    return " ".join(text.split()).casefold()


def clip_duration(path: Path) -> float:
    """Seconds a clip lasts, from its container's timing (no full decode for MP4)."""
    if path.suffix.lower() == ".gif":
        from PIL import Image

        total = 0
        with Image.open(path) as im:
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                total += im.info.get("duration", 100) or 100
        return total / 1000.0
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / 1_000_000
    frames, fps = read_video(path)
    return len(frames) / fps


# ------------------------------------------------------------------------------ the clips


@dataclass
class Generated:
    path: Path
    caption: str
    frames: np.ndarray  # uint8 (F, S, S, 3)
    duration: float


def load_generated(folder: Path) -> tuple[list[Generated], DataReport]:
    """Generated clips with their captions (what `sample` writes: GIF + same-named .txt)."""
    report = DataReport()
    clips = find_clips(DataConfig(data_dir=str(folder)), report)
    if not clips:
        raise DataError(f"{folder}: no clips with captions to score (expected GIF/MP4 files "
                        "with same-named .txt captions, as `sample` writes)")
    out = []
    for clip in clips:
        frames, fps = read_video(clip.path)
        if frames.shape[1] != frames.shape[2]:
            raise DataError(f"{clip.path}: {frames.shape[2]}x{frames.shape[1]} is not square; "
                            "generated clips are scored at their own square size as `sample` "
                            "writes them")
        out.append(Generated(clip.path, clip.caption, frames, len(frames) / fps))
    return out, report


class ReferenceSet:
    """Reference clips grouped by caption, served at any generated size through the training
    transform and the decoded-clip cache (decoding is paid once per size)."""

    def __init__(self, folder: Path, labels_file: str | None = None, progress: bool = True):
        self.folder = folder
        self.labels_file = labels_file
        self.progress = progress
        self.report = DataReport()
        self.clips = find_clips(DataConfig(data_dir=str(folder), labels_file=labels_file),
                                self.report)
        if not self.clips:
            raise DataError(f"{folder}: no reference clips with captions (GIF/MP4 with "
                            "same-named .txt captions, or --reference-labels CSV)")
        self.by_caption: dict[str, list[Clip]] = {}
        for clip in self.clips:
            self.by_caption.setdefault(caption_key(clip.caption), []).append(clip)
        self._arrays: dict[tuple[int, int], dict[Path, Path]] = {}
        self._durations: dict[Path, float] = {}

    def pixels(self, clip: Clip, num_frames: int, size: int) -> np.ndarray:
        if (num_frames, size) not in self._arrays:
            config = DataConfig(data_dir=str(self.folder), labels_file=self.labels_file,
                                num_frames=num_frames, image_size=size)
            usable = prepare_cache(self.clips, config, self.report, progress=self.progress)
            self._arrays[num_frames, size] = {c.path: npy for c, npy in usable}
        npy = self._arrays[num_frames, size].get(clip.path)
        if npy is None:
            raise DataError(f"{clip.path}: reference clip cannot be decoded")
        return np.load(npy)

    def duration(self, clip: Clip) -> float:
        if clip.path not in self._durations:
            self._durations[clip.path] = clip_duration(clip.path)
        return self._durations[clip.path]


# ------------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class PoseSummary:
    """What one clip's keypoints say, ready to compare."""

    # filled (F, J, 2) in the clip's own body frame (`body_normalised`), None without a body
    points: np.ndarray | None
    scale: float  # shoulder width in pixels (NaN without a body)
    body_frames: float  # share of frames with a body
    hand_frames: float  # share of frames with at least one hand
    hand_travel: float | None  # both hands' path length in shoulder widths

    @classmethod
    def of(cls, track: PoseTrack) -> PoseSummary:
        scale = shoulder_width(track)
        travel = None
        if track.pose_found.any() and scale > 0:
            hands = hand_positions(track)
            travel = (path_length(hands[:, 0]) + path_length(hands[:, 1])) / scale
        return cls(body_normalised(track), scale, float(track.pose_found.mean()),
                   float(track.hands_found.any(axis=1).mean()), travel)


def pose_distance(generated: PoseSummary, reference: PoseSummary) -> float | None:
    """DTW-MJE between two clips, each in its own body frame (origin its median shoulder
    midpoint, unit its median shoulder width); None when either clip has no body."""
    if generated.points is None or reference.points is None:
        return None
    return dtw_mje(generated.points, reference.points)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b > 0:
        return None
    return a / b


def score_pair(gen: Generated, gen_pose: PoseSummary | None, ref_pixels: np.ndarray,
               ref_pose: PoseSummary | None, ref_duration: float) -> dict[str, float | None]:
    """Every per-pair metric of one generated clip against one reference clip."""
    out: dict[str, float | None] = {
        "psnr": psnr(gen.frames, ref_pixels),
        "ssim": ssim(gen.frames, ref_pixels),
        "duration_ratio": _ratio(gen.duration, ref_duration),
        "dtw_mje": None, "hand_travel_ratio": None, "ref_hand_frames": None,
    }
    if gen_pose is not None and ref_pose is not None:
        out["dtw_mje"] = pose_distance(gen_pose, ref_pose)
        out["hand_travel_ratio"] = _ratio(gen_pose.hand_travel, ref_pose.hand_travel)
        out["ref_hand_frames"] = ref_pose.hand_frames
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _average(pairs: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    return {key: _mean([p[key] for p in pairs]) for key, _, _ in METRICS}


@dataclass
class ClipResult:
    path: str
    caption: str
    references: list[str]
    shuffled_references: list[str]
    duration: float
    body_frames: float | None
    hand_frames: float | None
    hand_travel: float | None
    paired: dict[str, float | None]
    shuffled: dict[str, float | None]


@dataclass
class RefEvalResult:
    clips: list[ClipResult]
    unmatched: list[str]
    num_references: int
    num_captions: int
    config: RefEvalConfig
    pose_cache: dict[str, int] = field(default_factory=dict)
    fvd: dict[str, Any] = field(default_factory=dict)

    def totals(self) -> dict[str, dict[str, float | int | None]]:
        """Per metric: the mean over clips, paired and shuffled, with standard errors."""
        out = {}
        for key, _, _ in METRICS:
            row: dict[str, float | int | None] = {}
            for side in ("paired", "shuffled"):
                vals = np.array([c.__dict__[side][key] for c in self.clips
                                 if c.__dict__[side][key] is not None], dtype=np.float64)
                row[side] = float(vals.mean()) if len(vals) else None
                finite = vals[np.isfinite(vals)]
                row[f"{side}_se"] = (float(finite.std(ddof=1) / math.sqrt(len(finite)))
                                     if len(finite) > 1 and len(finite) == len(vals) else None)
                row[f"{side}_n"] = len(vals)
            out[key] = row
        for key in ("body_frames", "hand_frames", "hand_travel"):
            out[key] = {"generated": _mean([getattr(c, key) for c in self.clips])}
        return out

    def to_dict(self) -> dict[str, Any]:
        return _json_safe({
            "kind": "reference",
            "protocol": {
                "num_generated": len(self.clips), "num_references": self.num_references,
                "num_captions": self.num_captions, "unmatched": self.unmatched,
                "max_references": self.config.max_references, "seed": self.config.seed,
                "psnr_ssim": "at the generated size; the reference resampled, centre-cropped "
                             "and resized as for training; SSIM with a Gaussian window "
                             "(sigma 1.5), averaged over channels and frames",
                "pose": ("MediaPipe Holistic 0.10.14, static-image mode; 11 upper-body + "
                         "2 x 21 hand points; DTW-MJE = mean joint error along the DTW path, "
                         "each clip centred on its median shoulder midpoint and scaled by "
                         "its own median shoulder width" if self.config.pose
                         else "not computed (--no-pose)"),
                "baseline": "shuffled: the same number of references drawn from other "
                            "captions",
                "pose_cache": self.pose_cache,
            },
            "totals": self.totals(),
            "fvd": self.fvd,
            "clips": [asdict(c) for c in self.clips],
        })

    def format(self) -> str:
        t = self.totals()
        lines = [f"{len(self.clips)} generated clips against {self.num_references} reference "
                 f"clips ({self.num_captions} captions)"
                 + (f"; {len(self.unmatched)} without a reference caption skipped"
                    if self.unmatched else ""),
                 f"  {'metric':30s} {'paired':>16s} {'shuffled':>16s}  better"]
        for key, label, better in METRICS:
            row = t[key]
            lines.append(f"  {label:30s} {_fmt(row['paired'], row['paired_se']):>16s} "
                         f"{_fmt(row['shuffled'], row['shuffled_se']):>16s}  {better}")
        if self.config.pose:
            lines.append(f"  generated frames with a body {_pct(t['body_frames']['generated'])}"
                         f", with a hand {_pct(t['hand_frames']['generated'])}")
        fvd_line = (f"{self.fvd['paired']:.2f} (shuffled {self.fvd['shuffled']:.2f}); "
                    + ", ".join(f"{k} {v}" for k, v in self.fvd["protocol"].items())
                    if "paired" in self.fvd else self.fvd.get("note", "not computed"))
        lines.append(f"  FVD: {fvd_line}")
        return "\n".join(lines)


def _fmt(value: float | None, se: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.3f}" + (f" ± {se:.3f}" if se is not None else "")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _json_safe(value: Any) -> Any:
    """JSON has no infinity: +inf (PSNR of identical clips) is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _pose_caches(config: RefEvalConfig, generated: Path, reference: Path
                 ) -> tuple[PoseCache, PoseCache]:
    if config.pose_cache_dir:
        shared_cache = PoseCache(config.pose_cache_dir)
        return shared_cache, shared_cache
    return (PoseCache(generated / CACHE_DIRNAME / POSE_CACHE_NAME),
            PoseCache(reference / CACHE_DIRNAME / POSE_CACHE_NAME))


def evaluate_against_reference(generated: Path, reference: Path,
                               config: RefEvalConfig = RefEvalConfig(),
                               i3d: Callable[[], FeatureExtractor] | None = None,
                               ) -> RefEvalResult:
    """Score every generated clip of `generated` against `reference` (see the module doc).

    `i3d` loads the FVD feature network when called (a backend's `load_i3d`); None: FVD is
    reported as not computed.
    """
    gens, _ = load_generated(generated)
    refs = ReferenceSet(reference, config.labels_file, config.progress)
    matched = [g for g in gens if caption_key(g.caption) in refs.by_caption]
    unmatched = [str(g.path) for g in gens if caption_key(g.caption) not in refs.by_caption]
    if not matched:
        some = ", ".join(sorted({repr(g.caption) for g in gens})[:3])
        raise DataError(f"{generated}: no generated caption ({some}) has a reference clip in "
                        f"{reference}; sample the reference captions (captions match "
                        "ignoring case and spacing)")
    gen_cache, ref_cache = _pose_caches(config, generated, reference)
    results: list[ClipResult] = []
    fvd_pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    ref_pose_memo: dict[tuple[Path, tuple[int, ...]], PoseSummary] = {}

    def ref_item(clip: Clip, shape: tuple[int, ...]) -> tuple[np.ndarray, PoseSummary | None]:
        pixels = refs.pixels(clip, shape[0], shape[1])
        if not config.pose:
            return pixels, None
        key = (clip.path, shape)
        if key not in ref_pose_memo:
            ref_pose_memo[key] = PoseSummary.of(ref_cache.track(pixels))
        return pixels, ref_pose_memo[key]

    try:
        for index, gen in enumerate(tqdm(matched, desc="scoring clips", unit="clip",
                                         disable=not config.progress)):
            key = caption_key(gen.caption)
            same = refs.by_caption[key][:config.max_references]
            others = [c for k, group in refs.by_caption.items() if k != key for c in group]
            rng = np.random.default_rng([config.seed, index])
            shuffled = ([others[i] for i in rng.choice(len(others), min(len(same), len(others)),
                                                       replace=False)] if others else [])
            gen_pose = PoseSummary.of(gen_cache.track(gen.frames)) if config.pose else None
            shape = gen.frames.shape
            paired_scores, shuffled_scores = [], []
            first: dict[str, np.ndarray | None] = {"paired": None, "shuffled": None}
            for side, group, scores in (("paired", same, paired_scores),
                                        ("shuffled", shuffled, shuffled_scores)):
                for clip in group:
                    pixels, pose = ref_item(clip, shape)
                    if first[side] is None:
                        first[side] = pixels
                    scores.append(score_pair(gen, gen_pose, pixels, pose, refs.duration(clip)))
            fvd_pairs.append((gen.frames, first["paired"], first["shuffled"]))
            results.append(ClipResult(
                str(gen.path), gen.caption, [str(c.path) for c in same],
                [str(c.path) for c in shuffled], gen.duration,
                gen_pose.body_frames if gen_pose else None,
                gen_pose.hand_frames if gen_pose else None,
                gen_pose.hand_travel if gen_pose else None,
                _average(paired_scores),
                _average(shuffled_scores) if shuffled_scores else dict.fromkeys(
                    (k for k, _, _ in METRICS), None)))
    finally:
        gen_cache.close()
        ref_cache.close()
    hits = {"hits": gen_cache.hits + (ref_cache.hits if ref_cache is not gen_cache else 0),
            "misses": gen_cache.misses + (ref_cache.misses if ref_cache is not gen_cache else 0)}
    result = RefEvalResult(results, unmatched, len(refs.clips), len(refs.by_caption), config,
                           pose_cache=hits if config.pose else {})
    result.fvd = (compute_fvd(i3d(), fvd_pairs, config.fvd_size) if i3d is not None else
                  {"note": "not computed (pass --i3d PATH: a local Kinetics I3D checkpoint)"})
    return result


def compute_fvd(extractor: FeatureExtractor,
                pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                size: int) -> dict[str, Any]:
    """FVD of the generated clips against their paired references and against the shuffled
    ones (each generated clip's first reference of either kind), with its protocol."""
    gens = [g for g, _, _ in pairs]
    if len({g.shape for g in gens}) != 1:
        raise DataError("FVD needs generated clips of one shape; found "
                        f"{sorted({g.shape for g in gens})}")
    if len(gens) < 2:
        return {"note": "not computed: FVD needs at least 2 generated clips"}
    gen_f = clip_features(extractor, gens, size)
    out: dict[str, Any] = {"paired": fvd(gen_f, clip_features(extractor, [p for _, p, _ in pairs],
                                                              size))}
    shuffled = [s for _, _, s in pairs if s is not None]
    out["shuffled"] = (fvd(gen_f, clip_features(extractor, shuffled, size))
                       if len(shuffled) >= 2 else float("nan"))
    out["protocol"] = FVDProtocol(len(gens), len(pairs), gens[0].shape[0], size,
                                  str(getattr(extractor, "path", "")), extractor.sha256,
                                  extractor.feature_name).to_dict()
    return out
