"""Stage B of the reading pipeline (reserve, encode, sign, commit) on a thread of its own.

The serial thread checks and scores a batch (stage A) and hands it to :meth:`Signer.put`; the
signer thread stores the batches one at a time in the order they were put, so sequence numbers
follow the frames' order. The queue is bounded (``max_batches``): when the signer falls behind,
``put`` blocks the serial thread, and the port's buffer, not memory, absorbs the backlog.

Guarantees:

* nothing is lost: :meth:`Signer.close` returns once every batch put before it is stored;
* an exception in the signer is never swallowed: it is logged, recorded in
  :attr:`Signer.failure`, passed to ``on_failure`` (the agent stops, see :mod:`edge_agent.app`),
  and raised again by the next :meth:`Signer.put` and by :meth:`Signer.close`; batches queued
  behind the failed one are dropped (their outbox slots released) and counted in the log.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from edge_agent.pipeline import CheckedBatch

__all__ = ["Signer", "SignerFailed"]

log = logging.getLogger(__name__)


class SignerFailed(RuntimeError):
    """The signer thread stopped on an error (the ``__cause__``); no batch is taken any more."""


class Signer:
    """Runs ``store(batch)`` on a thread for every batch :meth:`put`, in order."""

    def __init__(
        self,
        store: Callable[[CheckedBatch], int],
        *,
        on_stored: Callable[[int], object] = lambda _n: None,
        on_failure: Callable[[BaseException], object] = lambda _exc: None,
        release: Callable[[CheckedBatch], object] = lambda _batch: None,
        max_batches: int = 4,
    ) -> None:
        if max_batches < 1:
            raise ValueError(f"max_batches must be >= 1, not {max_batches}")
        self._store = store
        self._on_stored = on_stored
        self._on_failure = on_failure
        self._release = release
        self.max_batches = max_batches
        self._queue: deque[CheckedBatch] = deque()
        self._cond = threading.Condition()
        self._busy = False  # a batch taken off the queue and not yet stored
        self._closing = False
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="senken-signer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        """Batches put and not yet stored (the one being stored included)."""
        with self._cond:
            return len(self._queue) + self._busy

    def put(self, batch: CheckedBatch) -> None:
        """Queue ``batch`` for storing; blocks while ``max_batches`` are queued.

        Raises :class:`SignerFailed` if the signer has stopped on an error, or RuntimeError
        after :meth:`close`.
        """
        with self._cond:
            self._cond.wait_for(lambda: self.failure is not None or self._closing
                                or len(self._queue) < self.max_batches)
            if self.failure is not None:
                raise SignerFailed("the signer thread stopped on an error") from self.failure
            if self._closing:
                raise RuntimeError("put() after close()")
            self._queue.append(batch)
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> bool:
        """Store every batch already put, then end the thread. Idempotent.

        Returns False if the thread is still storing after ``timeout`` seconds. Raises
        :class:`SignerFailed` if the signer stopped on an error.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.ident is None:  # never started: store on the caller's thread
            self._run()
        else:
            self._thread.join(timeout)
        if self.failure is not None:
            raise SignerFailed("the signer thread stopped on an error") from self.failure
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return  # closing and drained
                batch = self._queue.popleft()
                self._busy = True
                self._cond.notify_all()
            try:
                stored = self._store(batch)
            except BaseException as exc:
                self._fail(exc)
                return
            with self._cond:
                self._busy = False
                self._cond.notify_all()
            self._on_stored(stored)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            self.failure = exc
            self._busy = False
            dropped = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for batch in dropped:
            self._release(batch)
        log.error("signer thread stopped: %s; %d checked readings queued behind it were not "
                  "stored", exc, sum(len(b.frames) for b in dropped), exc_info=exc)
        self._on_failure(exc)
