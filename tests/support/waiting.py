"""Waiting on a condition, timed: for tests that also check how long it took."""

from __future__ import annotations

import time
from typing import Any, Callable

from microkit.testing import eventually


def seconds_until(condition: Callable[[], Any], timeout: float, what: str) -> float:
    """`microkit.testing.eventually`, returning the seconds it took `condition` to hold."""
    started = time.monotonic()
    eventually(condition, timeout, what)
    return time.monotonic() - started
