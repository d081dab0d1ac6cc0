"""Errors both backends raise for the same situations, so the CLIs report them the same way."""


class TrainingDiverged(RuntimeError):
    """The loss stopped being a number; the message names the last good checkpoint."""
