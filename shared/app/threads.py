"""How many threads a CPU training step uses, re-chosen from its own step times as the load on
the machine changes.

Why: every op of a small model is one parallel region whose threads meet at a barrier, so a
step runs only as fast as its slowest thread is scheduled. When anything else wants a core (a
neighbouring job, a test run, a busy hypervisor), a 2-thread step waits a scheduler time slice
at each of its ~1500 barriers: measured on the `toy` step on 2 cores with one busy-looping
process beside it, more than 1.4 s per step (up to 12 s) against 0.50 s with one thread and
0.25 s with two on an idle machine (docs/benchmarks.md). So the trainer keeps timing: every
`every` steps, and as soon as its steps turn much slower, it tries the other thread counts for
`trial` steps each and keeps the fastest.

Pure policy over numbers; the backend applies the count (torch: `torch.set_num_threads`).
`T2S_CPU_THREADS=N` pins N threads and turns the search off.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

ENV_PIN = "T2S_CPU_THREADS"


def pinned_threads() -> int | None:
    """`T2S_CPU_THREADS` as a positive int, or None (unset, empty, 0 or "auto": search)."""
    raw = os.environ.get(ENV_PIN, "").strip().lower()
    if raw in ("", "0", "auto"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_PIN}={raw!r}: use a positive number of threads, or 'auto'"
                         ) from None
    if value < 1:
        raise ValueError(f"{ENV_PIN}={raw!r}: use a positive number of threads, or 'auto'")
    return value


def thread_options(cores: int) -> list[int]:
    """The counts worth trying on `cores` cores: all of them, half, one (most first)."""
    return sorted({max(1, cores), max(1, cores // 2), 1}, reverse=True)


class ThreadTuner:
    """Feed it each step's seconds (`record`); it calls `apply(n)` when the count should change.

    The current count's recent steps are compared with `trial` steps at each other count, run
    every `every` steps (half that below the full count; first after `first` steps)
    and whenever `trial` steps in a row take over `slower` times the current count's median at
    the last check (a trial count whose first step is already that much slower stops there);
    another count is kept only when its median beats the current one by
    `margin` (10%): two counts that tie keep the current one, so an idle machine stays put.
    """

    def __init__(self, options: list[int], apply: Callable[[int], None], every: int = 200,
                 trial: int = 3, first: int = 10, margin: float = 0.1, slower: float = 1.5):
        if not options:
            raise ValueError("ThreadTuner needs at least one thread count")
        self.options, self.apply = options, apply
        self.every, self.trial, self.first, self.margin = every, trial, first, margin
        self.slower = slower
        self.current = options[0]
        self.baseline: float | None = None  # the current count's median at the last check
        self.last_check = 0
        self.recent: list[float] = []
        self.steps = 0
        self.trying: list[int] = []  # counts still to try in this round
        self.results: dict[int, list[float]] = {}
        self.switches: list[tuple[int, int]] = []  # (step, threads) whenever the count changed

    def record(self, seconds: float) -> None:
        self.steps += 1
        if self.results or self.trying:
            self._record_trial(seconds)
            return
        self.recent = (self.recent + [seconds])[-2 * self.trial:]
        # Fewer threads than cores is a fallback: look back sooner.
        every = self.every if self.current == self.options[0] else max(1, self.every // 2)
        due = self.steps == self.first or (self.steps > self.first and
                                           self.steps - self.last_check >= every)
        # The load changed under this count: its last `trial` steps all much slower.
        slowed = self.baseline is not None and len(self.recent) >= self.trial and \
            min(self.recent[-self.trial:]) > self.slower * self.baseline
        if (due or slowed) and len(self.options) > 1 and len(self.recent) >= self.trial:
            self.trying = [n for n in self.options if n != self.current]
            self.results = {self.current: self.recent[-self.trial:]}
            self._set(self.trying[0])

    def _record_trial(self, seconds: float) -> None:
        n = self.trying[0]
        self.results.setdefault(n, []).append(seconds)
        # A count that is already far slower is not worth its other trial steps (a 2-thread
        # step beside a busy core can take 20x a 1-thread one).
        hopeless = seconds > self.slower * statistics.median(self.results[self.current])
        if len(self.results[n]) < self.trial and not hopeless:
            return
        self.trying.pop(0)
        if self.trying:
            self._set(self.trying[0])
            return
        base = statistics.median(self.results[self.current])
        best, best_time = self.current, base
        self.last_check = self.steps
        for count, times in self.results.items():
            t = statistics.median(times)
            if count != self.current and t < (1 - self.margin) * best_time:
                best, best_time = count, t
        self.results = {}
        self.recent = []
        self.baseline = best_time
        if best != self.current:
            self.current = best
            self.switches.append((self.steps, best))
        self._set(self.current)

    def restore(self) -> None:
        """Back to the starting count (the process may do other work after training)."""
        self._set(self.options[0])

    def _set(self, n: int) -> None:
        self.apply(n)
