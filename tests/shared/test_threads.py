"""The CPU thread-count search (`shared.app.threads.ThreadTuner`) driven by simulated step times:
an idle machine keeps all cores, a busy neighbour moves training to fewer threads, and the
count comes back when the neighbour leaves."""

from __future__ import annotations

import pytest

from shared.app.threads import ThreadTuner, pinned_threads, thread_options

# The toy step on 2 cores (docs/benchmarks.md): idle 0.25 s with 2 threads, 0.50 s with 1;
# beside a busy-looping process, 2 threads take over 1.4 s while 1 thread still takes 0.50 s.
IDLE = {2: 0.25, 1: 0.50}
BUSY = {2: 1.40, 1: 0.50}


def simulate(tuner: ThreadTuner, threads: list[int], phases: list[tuple[int, dict]]
             ) -> list[int]:
    """Run steps through the tuner; each phase is (steps, seconds per thread count). Returns
    the thread count each step ran with."""
    used = []
    for steps, speed in phases:
        for _ in range(steps):
            used.append(threads[-1])
            tuner.record(speed[threads[-1]])
    return used


def make(**kwargs) -> tuple[ThreadTuner, list[int]]:
    threads = [2]
    return ThreadTuner(thread_options(2), threads.append, **kwargs), threads


def test_an_idle_machine_keeps_every_core_and_pays_only_the_trials():
    tuner, threads = make(every=100, trial=3, first=10)
    used = simulate(tuner, threads, [(1000, IDLE)])
    assert tuner.current == 2 and tuner.switches == []
    # A look at the first check and about every 100 steps after; one thread's first step is
    # already 2x slower, so each look costs that one step: 1% of the steps.
    assert 9 <= used.count(1) <= 10
    assert used[-1] == 2 and threads[-1] == 2


def test_a_busy_neighbour_moves_training_to_one_thread_and_back_when_it_leaves():
    tuner, threads = make(every=100, trial=3, first=10)
    used = simulate(tuner, threads, [(300, BUSY), (300, IDLE)])
    assert tuner.switches[0] == (13, 1)  # at the first check, 3 trial steps after step 10
    # Busy: 2 threads only for the first step of each look back (a hopeless trial stops there).
    assert used[20:300].count(2) <= 6
    # Below the full count it looks back every 100 / 2 steps.
    assert tuner.switches[-1][1] == 2 and 300 < tuner.switches[-1][0] <= 300 + 50 + 6
    assert used[-1] == 2
    seconds = sum(BUSY[n] for n in used[:300])
    assert seconds < 0.5 * 300 * BUSY[2]  # what the busy phase would have cost without it


def test_a_neighbour_arriving_between_checks_is_noticed_within_a_few_steps():
    tuner, threads = make(every=1000, trial=3, first=10)
    used = simulate(tuner, threads, [(100, IDLE), (100, BUSY)])
    assert tuner.switches == [(100 + 3 + 3, 1)]  # 3 slow steps, then 3 trial steps
    assert used[106:] == [1] * 94


def test_a_tie_keeps_the_current_count():
    tuner, threads = make(every=50, trial=3, first=5)
    simulate(tuner, threads, [(200, {2: 0.30, 1: 0.29})])  # 1 thread only 3% faster
    assert tuner.current == 2 and tuner.switches == []


def test_restore_returns_to_the_starting_count():
    tuner, threads = make(every=100, trial=3, first=10)
    simulate(tuner, threads, [(50, BUSY)])
    assert tuner.current == 1
    tuner.restore()
    assert threads[-1] == 2


def test_options_and_the_pin(monkeypatch):
    assert thread_options(2) == [2, 1] and thread_options(8) == [8, 4, 1]
    assert thread_options(1) == [1]
    for value, expected in (("", None), ("auto", None), ("0", None), ("3", 3)):
        monkeypatch.setenv("T2S_CPU_THREADS", value)
        assert pinned_threads() == expected
    for bad in ("-1", "two"):
        monkeypatch.setenv("T2S_CPU_THREADS", bad)
        with pytest.raises(ValueError, match="T2S_CPU_THREADS"):
            pinned_threads()
