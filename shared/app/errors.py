"""Errors both backends raise for the same situations, so the CLIs report them the same way."""


class TrainingDiverged(RuntimeError):
    """The loss stopped being a number; the message names the last good checkpoint."""


def diverged(out_dir, step: int, value: float, what: str) -> TrainingDiverged:
    """The error a trainer raises when `what` (loss, gradient norm) stops being finite at
    `step`: it names the last good checkpoint of the run in `out_dir` and what to change."""
    from shared.model.checkpoint import CheckpointError, resolve_checkpoint

    try:
        good = resolve_checkpoint(out_dir)
        where = f"the last good checkpoint is {good} (resume from it with --resume)"
    except CheckpointError:
        where = "no checkpoint was written before it"
    return TrainingDiverged(f"the {what} became {value} at step {step}; {where}. Lower train.lr, "
                            "keep train.grad_clip on, or train with mixed_precision=no")


class TrainingInterrupted(Exception):
    """A run stopped by a signal after saving a checkpoint: the CLI prints the message and exits
    with 128 + the signal's number, the status a shell (and a scheduler deciding whether to
    requeue) reads for a job ended by that signal."""

    def __init__(self, message: str, signum: int, checkpoint=None):
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interrupted(signal_name: str, signum: int, step: int, checkpoint, flag: str = "--resume"
                ) -> TrainingInterrupted:
    """The error a trainer raises once it has stopped for `signal_name` and saved."""
    saved = f"saved {checkpoint}" if checkpoint is not None else "rank 0 saved the checkpoint"
    return TrainingInterrupted(f"stopped by {signal_name} at step {step}: {saved}; continue "
                               f"with {flag}", signum, checkpoint)
