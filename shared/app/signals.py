"""Stopping a training run cleanly on a signal, the same way on every backend.

Schedulers do not press Ctrl-C: SLURM and Kubernetes send SIGTERM before they kill a job (SLURM's
`--signal` sends SIGUSR1 ahead of the time limit), as does a plain `kill`. A trainer wraps its
loop in `stop_signals()`; the first SIGINT, SIGTERM or SIGUSR1 only sets a flag, which the loop
reads once per optimizer step: it finishes the step it is in, writes a checkpoint of exactly that
step (so `--resume` continues bit-identically) and stops with
`shared.app.errors.TrainingInterrupted`. A second signal means "now": it raises KeyboardInterrupt
wherever the program is, and a checkpoint being written at that moment is discarded by the
atomic protocol of `shared.model.checkpoint`, leaving the previous one as `latest`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1")
                     if hasattr(signal, name))  # no SIGUSR1 on Windows


class StopRequest:
    """Set by the first stop signal; the training loop polls it between optimizer steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


@contextlib.contextmanager
def stop_signals(log: Callable[[str], None] = print) -> Iterator[StopRequest]:
    """Handle the stop signals as described above for the body of the `with`, then restore
    the previous handlers. Outside the main thread (where Python delivers signals) nothing is
    installed and the request is never set."""
    request = StopRequest()

    def handler(signum: int, frame) -> None:
        if request.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        request.signum = signum
        log(f"{request.name} received: finishing this step, then saving a checkpoint (send it "
            "again to stop at once, without saving)")

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
