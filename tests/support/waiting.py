"""Wait on a condition with a deadline: the only way tests synchronise (never a bare sleep)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               poll_s: float = 0.05) -> None:
    """Return as soon as ``predicate()`` holds; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        pause.wait(poll_s)
