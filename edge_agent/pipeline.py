"""From serial lines to signed readings in the outbox.

Two stages, composed by :meth:`ReadingPipeline.process`:

* :meth:`ReadingPipeline.check` (stage A) parses, validates and scores a batch of lines,
  reserves its sequence numbers and encodes the readings' canonical bodies;
* :meth:`ReadingPipeline.store` (stage B) signs the bodies and commits them.

The agent runs stage A on its serial thread and, with ``pipeline_threads = 2`` (the default),
stage B on a signer thread fed through a bounded queue (:mod:`edge_agent.signer`), so that two
cores overlap scoring with signing and committing. Stage B is kept almost free of Python work:
one batch signature call (:meth:`DeviceKey.sign_many`, native and GIL-free where built) and one
multi-row INSERT per chunk, so it rarely needs the GIL that stage A's parsing holds
(bench/README.md). With ``pipeline_threads = 1`` the serial thread runs both (``process``).

For each batch of lines read from the port (one line per frame):

1. parses and validates every frame (checksum, syntax, kind, channels, ranges), then checks
   the firmware frame counter is monotonic (a lower or equal counter is a replay or a duplicate
   and is rejected; 0 marks a firmware boot; a jump forward counts the frames missed);
2. refuses the newest frames if the outbox is full (before scoring, so that the model only
   ever sees values that get signed), then scores the rest, one model call per batch. Readings
   checked but not yet stored (queued for stage B) count against the free slots, so a full
   outbox still refuses them here and never after scoring;
3. reserves sequence numbers durably and encodes each reading (stage A), then signs them and
   commits the batch to the outbox (stage B). Numbers reserved for a batch that is never stored
   (the agent failed in between) become gaps, never reuse.

Batches go through stage B in the order stage A produced them, so sequence numbers follow the
frames' order.

A bad frame is counted by reason and logged; it never stops the batch or the agent. Every
reading carries ``scored_since_seq``, the first sequence number this agent process scored: the
model's per-stream state starts empty there, which is where a verifier starts its replay.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_agent.outbox import Outbox
from edge_agent.stats import AgentStats
from senken_core.errors import FrameError
from senken_core.frame import Frame, parse_valid_frames
from senken_core.keys import READING_TAG, DeviceKey
from senken_core.reading import ReadingEncoder

__all__ = ["AcceptedBatch", "CheckedBatch", "ReadingPipeline", "Scorer"]

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """Scores rows of channel values (in the kind's channel order) in ppm, in feed order."""

    def score(self, rows: Sequence[Sequence[int]]) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class AcceptedBatch:
    """Frames that passed every check, with their values in channel order and read time."""

    frames: list[Frame]
    rows: list[list[int]]
    now_ms: int


@dataclass(frozen=True, slots=True)
class CheckedBatch:
    """Readings that passed every check, scored, numbered and encoded, not yet signed.

    ``bodies[i]`` is the canonical body of the reading with sequence number ``first_seq + i``
    (frame ``frames[i]``, anomaly score ``scores[i]`` ppm); ``now_ms`` is when it was read.
    """

    frames: list[Frame]
    scores: list[int]
    now_ms: int
    first_seq: int
    bodies: list[bytes]


class ReadingPipeline:
    """Turns frames into durable signed readings.

    :meth:`check` is called from one thread and :meth:`store` from one thread (the same or
    another); neither is re-entrant. Stage B must store the batches in the order stage A
    returned them.
    """

    def __init__(
        self,
        *,
        device_id: str,
        key: DeviceKey,
        outbox: Outbox,
        scorer_for_kind: Callable[[str], Scorer],
        model_sha256: bytes,
        stats: AgentStats,
        expected_kind: str | None = None,
        max_clock_skew_ms: int = 120_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self.key = key
        self.outbox = outbox
        self.model_sha256 = model_sha256
        self.stats = stats
        self.expected_kind = expected_kind
        self.max_clock_skew_ms = max_clock_skew_ms
        self.clock = clock
        self._scorer_for_kind = scorer_for_kind
        self._scorers: dict[str, Scorer] = {}
        self._encoders: dict[str, ReadingEncoder] = {}
        # The first seq this process scored: the model's stream state starts empty there.
        self._scored_since: int | None = None
        self._last_counter = outbox.last_frame_counter()
        self._skewed = False
        # Readings checked (and scored) but not yet committed: they hold outbox slots.
        self._pending = 0
        self._pending_lock = threading.Lock()

    def _reject(self, reason: str, message: str, raw: bytes) -> None:
        self.stats.frames_rejected[reason] += 1
        self.stats.error(f"bad frame ({reason}): {message}")
        log.warning("rejected frame (%s): %s: %r", reason, message, raw[:80])

    def _accept_counter(self, frame: Frame, raw: bytes) -> bool:
        last = self._last_counter
        if last is not None:
            if frame.counter == 0 and last != 0:
                self.stats.firmware_reboots += 1
                log.info("firmware restarted (frame counter back to 0 after %d)", last)
            elif frame.counter <= last:
                self._reject(
                    "counter_regressed",
                    f"frame counter {frame.counter} not above {last} (duplicate or replay)",
                    raw,
                )
                return False
            elif frame.counter > last + 1:
                self.stats.frames_missed += frame.counter - last - 1
        self._last_counter = frame.counter
        return True

    def _check_clock(self, frame: Frame, now_ms: int) -> None:
        skew = frame.device_ms - now_ms
        if abs(skew) > self.max_clock_skew_ms:
            self.stats.clock_skew_frames += 1
            if not self._skewed:
                self._skewed = True
                self.stats.error(f"device clock off by {skew / 1000:+.1f} s; readings keep "
                                 "the agent's time, device time is recorded as device_ms")
                log.warning("device clock jumped: %+d ms from the agent clock", skew)
        elif self._skewed:
            self._skewed = False
            log.info("device clock back within %d ms of the agent clock", self.max_clock_skew_ms)

    def process(self, lines: Sequence[bytes]) -> int:
        """Check, score, sign and store one batch of raw lines; returns readings stored."""
        batch = self.check(lines)
        return 0 if batch is None else self.store(batch)

    @property
    def pending(self) -> int:
        """Readings checked and scored but not yet stored (queued for stage B)."""
        return self._pending

    def check(self, lines: Sequence[bytes]) -> CheckedBatch | None:
        """Stage A: the frames of ``lines`` that pass every check, scored, numbered and
        encoded; None if none. A returned batch holds outbox slots until :meth:`store` has run
        on it. Equals :meth:`prepare` of :meth:`accept`.
        """
        accepted = self.accept(lines)
        return None if accepted is None else self.prepare(accepted)

    def accept(self, lines: Sequence[bytes]) -> AcceptedBatch | None:
        """Stage A, first half: parse and check ``lines``, and take outbox slots for the frames
        that pass (refusing the newest when the outbox is full); None if none pass. The batch
        holds its slots until it is stored or discarded."""
        now_ms = int(self.clock() * 1000)
        accepted: list[Frame] = []
        expected_kind = self.expected_kind
        for raw, frame in zip(lines, parse_valid_frames(lines), strict=True):
            if isinstance(frame, FrameError):
                if raw.strip():  # blank lines (a lone CR, say) are skipped silently
                    self._reject(frame.reason, str(frame), raw)
                continue
            if expected_kind is not None and frame.kind != expected_kind:
                self._reject("wrong_kind", f"expected {expected_kind}, got {frame.kind}", raw)
                continue
            if not self._accept_counter(frame, raw):
                continue
            self._check_clock(frame, now_ms)
            accepted.append(frame)
        if not accepted:
            return None
        checked = len(accepted)
        self.stats.frames_ok += checked
        # Refuse before scoring: the model's per-stream state must only ever see the values of
        # readings that get signed, or a verifier replaying them could not reproduce the scores.
        with self._pending_lock:
            free = max(0, self.outbox.free_slots() - self._pending)
            if len(accepted) > free:
                accepted = accepted[:free]
            self._pending += len(accepted)
        refused = checked - len(accepted)
        if refused:
            self.stats.readings_refused_full += refused
            self.stats.error(f"outbox full ({self.outbox.max_readings} readings): "
                             f"{refused} newest readings refused; check the broker link")
            log.error("outbox full: refusing %d readings", refused)
            if not accepted:
                return None
        return AcceptedBatch(accepted, [[v for _, v in f.values] for f in accepted], now_ms)

    def prepare(self, batch: AcceptedBatch) -> CheckedBatch:
        """Stage A, second half: score the accepted frames (in order: the model keeps state),
        reserve their sequence numbers and encode their bodies. Called from one thread."""
        accepted, rows, now_ms = batch.frames, batch.rows, batch.now_ms
        try:
            scores = self._score(accepted, rows)
            first_seq = self.outbox.reserve(len(accepted))
        except BaseException:
            self._release(len(accepted))
            raise
        if self._scored_since is None:
            self._scored_since = first_seq
        bodies: list[bytes] = []
        start = 0
        while start < len(accepted):  # one encode_many per run of frames of the same kind
            kind = accepted[start].kind
            end = start + 1
            while end < len(accepted) and accepted[end].kind == kind:
                end += 1
            bodies += self._encoder(accepted[start]).encode_many(
                first_seq + start, now_ms,
                [(f.counter, f.device_ms, rows[i], scores[i])
                 for i, f in enumerate(accepted[start:end], start)])
            start = end
        return CheckedBatch(accepted, scores, now_ms, first_seq, bodies)

    def discard(self, batch: AcceptedBatch | CheckedBatch) -> None:
        """Give back the outbox slots of a checked batch that will never be stored."""
        self._release(len(batch.frames))

    def _release(self, n: int) -> None:
        with self._pending_lock:
            self._pending -= n

    def _score(self, frames: list[Frame], rows: list[list[int]]) -> list[int]:
        scores: list[int] = []
        start = 0
        # One model call per run of frames of the same kind (a port carries one kind).
        while start < len(frames):
            kind = frames[start].kind
            end = start
            while end < len(frames) and frames[end].kind == kind:
                end += 1
            scorer = self._scorers.get(kind)
            if scorer is None:
                scorer = self._scorers[kind] = self._scorer_for_kind(kind)
            scores += scorer.score(rows[start:end] if start or end < len(rows) else rows)
            start = end
        return scores

    def _encoder(self, frame: Frame) -> ReadingEncoder:
        encoder = self._encoders.get(frame.kind)
        if encoder is None:
            assert self._scored_since is not None
            encoder = self._encoders[frame.kind] = ReadingEncoder(
                self.device_id, frame.kind, [n for n, _ in frame.values], self.model_sha256,
                self._scored_since,
            )
        return encoder

    def store(self, batch: CheckedBatch) -> int:
        """Stage B: sign and durably store a checked batch; returns readings stored.

        Releases the batch's outbox slots (stored or not: on an error the batch is lost and
        the error raised; the agent then stops, see :mod:`edge_agent.app`).
        """
        frames, bodies = batch.frames, batch.bodies
        try:
            # one call for the batch: natively it signs without holding the GIL (keys.py)
            signatures = self.key.sign_many(READING_TAG, bodies)
            rows = list(zip(range(batch.first_seq, batch.first_seq + len(bodies)), bodies,
                            signatures, strict=True))
            self.outbox.append(rows, frames[-1].counter)
        finally:
            self._release(len(frames))
        self.stats.readings_signed += len(rows)
        self.stats.last_reading_ms = batch.now_ms
        return len(rows)
