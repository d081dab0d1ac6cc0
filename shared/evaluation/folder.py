"""Scoring a folder of generated clips with the toy-signer faithfulness metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.config import DataConfig
from shared.data.clips import DataError, DataReport, find_clips
from shared.data.video import read_video
from shared.evaluation.textfollow import SetScore, score_set
from shared.evaluation.toyjudge import ToyScore, score_clips


def read_prompts(path: Path) -> list[str]:
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise DataError(f"{path}: no prompts (one per line expected)")
    return prompts


def _read_folder(folder: Path, prompts_file: Path | None
                 ) -> tuple[list[np.ndarray], list[str], list[str] | None]:
    """Clips, captions and candidate prompts: `prompts_file`, else the folder's own
    `prompts.txt`, else None (the distinct captions)."""
    report = DataReport()
    clips = find_clips(DataConfig(data_dir=str(folder)), report)
    if not clips:
        raise DataError(f"{folder}: no clips with captions to score")
    videos = [read_video(c.path)[0] for c in clips]
    if prompts_file is None and (folder / "prompts.txt").exists():
        prompts_file = folder / "prompts.txt"
    candidates = read_prompts(prompts_file) if prompts_file else None
    return videos, [c.caption for c in clips], candidates


def evaluate_folder(folder: Path, prompts_file: Path | None = None) -> ToyScore:
    """Score every clip of `folder` (GIF/MP4 + same-named .txt) against the candidate prompts.

    Candidates come from `prompts_file`, else the folder's own `prompts.txt`, else the distinct
    captions; the fewer candidates, the higher chance level, so the report states it.
    """
    return score_clips(*_read_folder(folder, prompts_file))


def evaluate_set(folder: Path, name: str | None = None, prompts_file: Path | None = None
                 ) -> SetScore:
    """`evaluate_folder` plus the text-following view: the standard error and per-position
    word accuracy (`shared.evaluation.textfollow`)."""
    videos, captions, candidates = _read_folder(folder, prompts_file)
    return score_set(name or folder.name, videos, captions, candidates)


def set_folders(folder: Path) -> list[Path]:
    """The evaluation sets under a demo's samples folder (`seen/`, `unseen/`, `longer/`, in that
    order, then any other sub-folder with clips), or [folder] when it holds clips itself."""
    if any(p.suffix.lower() in (".gif", ".mp4") for p in folder.iterdir()):
        return [folder]
    subs = [p for p in sorted(folder.iterdir()) if p.is_dir()
            and any(q.suffix.lower() in (".gif", ".mp4") for q in p.iterdir())]
    rank = {name: i for i, name in enumerate(("seen", "unseen", "longer"))}
    return sorted(subs, key=lambda p: (rank.get(p.name, len(rank)), p.name)) or [folder]


def score_to_dict(score: ToyScore) -> dict[str, Any]:
    """The JSON view of a score: the summary numbers and each clip's verdict."""
    return {
        "accuracy": score.accuracy, "chance": score.chance, "num_clips": score.num_clips,
        "num_prompts": score.num_prompts, "mean_error": score.mean_error,
        "median_error": score.median_error, "detection_rate": score.detection_rate,
        "candidates": list(score.candidates),
        "clips": [{"error": float(e), "prediction": p, "correct": bool(c)}
                  for e, p, c in zip(score.errors, score.predictions, score.correct)],
    }
