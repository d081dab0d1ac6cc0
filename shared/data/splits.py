"""The train / validation split: deterministic by seed, and by group where asked.

A clip's side of the line depends only on the seed and the clip (never on the machine, the
folder's location or listing order). With `data.split_by`, clips of one source video or one
signer (a column of the labels file or of `data prepare`'s manifest) never straddle the line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from shared.config import DataConfig
from shared.data.clips import Clip, DataError


def split_indices(clips: Sequence[Clip], root: Path, val_fraction: float,
                  seed: int, groups: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Deterministic train / validation split by seed.

    Each clip's rank is a hash of (seed, its path relative to the data folder), so the split
    does not depend on the machine, on the folder's absolute location, or on listing order, and
    adding clips moves few existing ones across the line.

    With `groups` (one label per clip, see `clip_groups`), whole groups are ranked the same way
    and moved to validation until it holds at least `val_fraction` of the clips, always leaving
    one group for training: clips of one source video or one signer never straddle the line.
    """
    n = len(clips)
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    if groups is not None:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} group labels for {n} clips")
        members: dict[str, list[int]] = {}
        for i, group in enumerate(groups):
            members.setdefault(group, []).append(i)
        ranked = sorted(members, key=lambda g: hashlib.sha256(f"{seed}|{g}".encode()).hexdigest())
        val = []
        for group in ranked[:-1]:
            if len(val) >= n_val:
                break
            val += members[group]
        held = set(val)
        return [i for i in range(n) if i not in held], sorted(val)

    def rank(i: int) -> str:
        rel = Path(os.path.relpath(clips[i].path.resolve(), root.resolve())).as_posix()
        return hashlib.sha256(f"{seed}|{rel}".encode()).hexdigest()

    order = sorted(range(n), key=rank)
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return train, val


MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")  # what `data prepare` writes



def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV with a header line, or of a JSON-lines file (keys as columns)."""
    if path.suffix == ".jsonl":
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                rows.append({str(k): "" if v is None else str(v) for k, v in value.items()})
        return list(dict.fromkeys(k for r in rows for k in r)), rows
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
        return [h.strip() for h in reader.fieldnames or []], rows


def clip_groups(clips: Sequence[Clip], config: DataConfig) -> list[str] | None:
    """Each clip's split group under `config.split_by` (None: every clip alone).

    "source" and any other name are looked up, case-insensitively, as a column of the labels
    file (its first line must name the columns: `filename,text,signer`), else of the manifest
    `data prepare` wrote into the data folder (which always has `source`). A clip the table does
    not list, or whose cell is empty, is a group of its own.
    """
    by = config.split_by.strip()
    if not by:
        return None
    root = Path(config.data_dir)
    tables: list[tuple[Path, str]] = []  # (file, its file-name column)
    if config.labels_file:
        labels = Path(config.labels_file)
        tables.append((labels if labels.is_absolute() or labels.exists() else root / labels,
                       "filename"))
    tables += [(root / name, "output") for name in MANIFEST_NAMES if (root / name).is_file()]
    looked = []
    for path, name_column in tables:
        header, rows = _read_table(path)
        columns = {h.lower(): h for h in header}
        looked.append(f"{path} (columns: {', '.join(header) or 'none'})")
        if by.lower() not in columns or name_column not in columns:
            continue
        column, names = columns[by.lower()], columns[name_column]
        value = {(root / r[names]).resolve(): r.get(column, "") for r in rows if r.get(names)}
        out = []
        for clip in clips:
            group = value.get(clip.path.resolve(), "")
            out.append(f"{column}={group}" if group else f"clip={clip.path}")
        return out
    where = "; ".join(looked) if looked else f"no labels file and no manifest.csv in {root}"
    fix = ("prepare the folder with `data prepare` (its manifest records each clip's source "
           "video)" if by.lower() == "source" else
           f"add a {by!r} column to the labels file (its first line naming the columns), or "
           f"cut the clips with `data prepare --segments CSV --keep-column {by}`")
    raise DataError(f"data.split_by={by!r}: no such column in {where}; {fix}, or set "
                    "data.split_by='' to split clip by clip")
