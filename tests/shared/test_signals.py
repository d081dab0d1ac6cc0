"""Stop signals: the first one only asks the loop to stop, a second one stops at once, and the
handlers that were there before come back."""

from __future__ import annotations

import os
import signal

import pytest

from shared.app.errors import TrainingInterrupted, interrupted
from shared.app.signals import STOP_SIGNALS, stop_signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_first_signal_asks_second_stops_now(sig):
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    lines: list[str] = []
    with (pytest.raises(KeyboardInterrupt, match=f"second {sig.name}"),
          stop_signals(lines.append) as stop):
        assert not stop
        os.kill(os.getpid(), sig)  # delivered before the next bytecode runs
        assert stop and stop.signum == sig and stop.name == sig.name
        assert lines == [f"{sig.name} received: finishing this step, then saving a "
                         "checkpoint (send it again to stop at once, without saving)"]
        os.kill(os.getpid(), sig)
        pytest.fail("the second signal did not interrupt")
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_interrupted_exits_with_128_plus_the_signal():
    error = interrupted("SIGTERM", signal.SIGTERM, 7, "runs/x/checkpoints/step_0000007")
    assert isinstance(error, TrainingInterrupted) and error.exit_code == 143
    assert str(error) == ("stopped by SIGTERM at step 7: saved runs/x/checkpoints/step_0000007; "
                          "continue with --resume")
