"""The plumbing of `doctor` that both backends share: run a check, report instead of raising."""

from __future__ import annotations

from collections.abc import Callable

CheckResult = tuple[str, bool, str]


def check(name: str, fn: Callable[[], str]) -> CheckResult:
    """(name, passed, detail): a doctor reports every failure, it never stops at the first."""
    try:
        return name, True, fn()
    except Exception as e:
        return name, False, f"{type(e).__name__}: {e}"
