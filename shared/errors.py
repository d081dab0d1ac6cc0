"""Errors both backends raise for the same situations, so the CLIs report them the same way."""


class TrainingDiverged(RuntimeError):
    """The loss stopped being a number; the message names the last good checkpoint."""


def diverged(out_dir, step: int, value: float, what: str) -> TrainingDiverged:
    """The error a trainer raises when `what` (loss, gradient norm) stops being finite at
    `step`: it names the last good checkpoint of the run in `out_dir` and what to change."""
    from shared.checkpoint import CheckpointError, resolve_checkpoint

    try:
        good = resolve_checkpoint(out_dir)
        where = f"the last good checkpoint is {good} (resume from it with --resume)"
    except CheckpointError:
        where = "no checkpoint was written before it"
    return TrainingDiverged(f"the {what} became {value} at step {step}; {where}. Lower train.lr, "
                            "keep train.grad_clip on, or train with mixed_precision=no")
