"""The ledger's background workers' loop: a blocking round on a thread, again and again, until
stopped; the chain or the database failing pauses it (logged, backed off), never ends it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ledger.chain_node import ChainError
from ledger.store import StoreError

__all__ = ["run_rounds", "wait_or_stop"]


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` unless ``stop`` is set first (0: just yield to the loop)."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_rounds(step: Callable[[], int], stop: asyncio.Event, *, what: str,
                     log: logging.Logger, next_delay: Callable[[int], float],
                     backoff: Callable[[int], float],
                     set_error: Callable[[str | None], None]) -> None:
    """Run ``step`` (blocking: on a thread) until ``stop`` is set. After a round that moved
    ``n`` items, wait ``next_delay(n)``; after the ``f``-th failure in a row, ``backoff(f)``.
    ``set_error`` is told the last error (None once a round succeeds)."""
    failures = 0
    while not stop.is_set():
        try:
            moved = await asyncio.to_thread(step)
        except (ChainError, StoreError) as exc:
            failures += 1
            set_error(str(exc))
            (log.warning if failures == 1 else log.debug)("%s paused: %s", what, exc)
            delay = backoff(failures)
        except Exception as exc:  # one bad row or moment never ends the loop
            failures += 1
            set_error(f"{type(exc).__name__}: {exc}")
            log.exception("%s round failed", what)
            delay = backoff(failures)
        else:
            if failures:
                log.info("%s resumed", what)
            failures = 0
            set_error(None)
            delay = next_delay(moved)
        await wait_or_stop(stop, delay)
