"""Which checkpoint a training run continues from, and the checks it passes first.

`train --resume` must continue a run exactly or refuse in one line. `verify_checkpoint` checks a
whole checkpoint (every tensor file's header, the JSON files, the checksums) before any of it is
loaded; `pick_resume_checkpoint` uses it to fall back to the newest intact step when the last
save was cut short; `resume_checkpoint` is what `--resume [CHECKPOINT]` means, and
`refuse_existing_run` keeps a new run from mixing its checkpoints with an old one's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from shared.model.checkpoint import (
    CONFIG_FILE,
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    CheckpointError,
    check_checksums,
    list_checkpoints,
    listing,
    load_json,
    resolve_checkpoint,
)
from shared.model.safetensors_io import TensorSpec
from shared.model.tensor_files import check_tensor_file


def verify_checkpoint(checkpoint: Path, expected: Mapping[str, Mapping[str, TensorSpec] | None],
                      layout: str | None = None,
                      json_files: tuple[str, ...] = (CONFIG_FILE, TRAINER_STATE_FILE)) -> None:
    """Check a whole checkpoint before resuming from it: each tensor file in `expected` (file
    name -> the specs its tensors must have, or None for a header check only) and each JSON
    file must be present and intact, and every file must match the checksum written at save
    time; the first problem is raised as a CheckpointError."""
    for name, specs in expected.items():
        check_tensor_file(checkpoint / name, specs, layout)
    for name in json_files:
        data = load_json(checkpoint / name)
        if not isinstance(data, dict):
            raise CheckpointError(f"{checkpoint / name}: not a JSON object; the checkpoint is "
                                  "damaged")
    check_checksums(checkpoint)


def check_resume_files(checkpoint: Path, specs: Mapping[str, TensorSpec], layout: str) -> None:
    """Everything `--resume` reads from `checkpoint`, checked before any of it is loaded:
    model and EMA weights against `specs`, the optimizer file's header, the JSON files."""
    verify_checkpoint(checkpoint, {MODEL_FILE: specs, EMA_FILE: specs, OPTIMIZER_FILE: None},
                      layout)


def pick_resume_checkpoint(run_dir: Path, verify: Callable[[Path], None], strict: bool = False,
                           warn: Callable[[str], None] = print, flag: str = "--resume") -> Path:
    """The newest intact checkpoint of the run in `run_dir`, checked with `verify`.

    A damaged newest step is skipped with a one-line warning that names both steps, so a run
    whose last save was cut short (a full disk, a copy interrupted) continues from the step
    before it; with `strict` it is an error that names the step to pass to `flag` instead.
    """
    checkpoints = run_dir / "checkpoints"
    found = list_checkpoints(checkpoints)[::-1]
    if not found:
        raise CheckpointError(f"{run_dir}: nothing to resume (no {checkpoints.name}/step_N; "
                              f"found {listing(run_dir)}); drop {flag} to start a new run")
    newest_step, newest = found[0]
    problems = []
    for step, path in found:
        try:
            verify(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if step == newest_step:
            return path
        why = problems[0]
        if strict:
            raise CheckpointError(f"step {newest_step} cannot be used ({why}); the newest intact "
                                  f"checkpoint is step {step}: resume from it with "
                                  f"`{flag} {path}`")
        warn(f"warning: step {newest_step} cannot be used ({why}); resuming from step {step}, "
             "the newest intact checkpoint")
        return path
    raise CheckpointError(f"{checkpoints}: no intact checkpoint to resume from; step "
                          f"{newest_step}: {problems[0]}")


def resume_checkpoint(run_dir: Path, which: str | Path | bool, verify: Callable[[Path], None],
                      strict: bool = False, warn: Callable[[str], None] = print,
                      flag: str = "--resume", weights: str = MODEL_FILE) -> Path:
    """The checkpoint `train --resume [CHECKPOINT]` continues from: with no path (or `latest`),
    the newest intact step of `run_dir`; with a path (any form `resolve_checkpoint` accepts),
    that step, which must belong to the run in `run_dir` and be intact (no fallback: it was
    asked for by name)."""
    if which is True or which in ("", "latest"):
        return pick_resume_checkpoint(run_dir, verify, strict, warn, flag)
    checkpoint = resolve_checkpoint(which, weights=weights)
    own = (run_dir / "checkpoints").resolve()
    if checkpoint.resolve().parent != own:
        raise CheckpointError(f"{checkpoint}: not a checkpoint of the run in {run_dir}; pass "
                              f"one of {own}/step_N, or that run's folder as the output folder")
    verify(checkpoint)
    return checkpoint


def refuse_existing_run(run_dir: Path) -> None:
    """A new run must not mix its checkpoints with an older run's in the same folder."""
    existing = list_checkpoints(run_dir / "checkpoints")
    if existing:
        raise CheckpointError(f"{run_dir} already holds a run (checkpoints up to step "
                              f"{existing[-1][0]}); continue it with --resume, or train into "
                              "another --out")
