"""From serial lines to signed readings in the outbox.

Two stages, composed by :meth:`ReadingPipeline.process`:

* :meth:`ReadingPipeline.check` (stage A) parses, validates and scores a batch of lines;
* :meth:`ReadingPipeline.store` (stage B) reserves sequence numbers, signs and commits.

Running the stages on two threads with a queue between them was measured (bench/README.md):
1.6x faster with the frames already in memory, but slower through the pty on a 2-core machine
(ratio 0.22-0.24 against 0.26-0.27), where the firmware's writer takes the second core. The
agent therefore runs both stages on its serial thread.

For each batch of lines read from the port (one line per frame):

1. parses and validates every frame (checksum, syntax, kind, channels, ranges), then checks
   the firmware frame counter is monotonic (a lower or equal counter is a replay or a duplicate
   and is rejected; 0 marks a firmware boot; a jump forward counts the frames missed);
2. refuses the newest frames if the outbox is full (before scoring, so that the model only
   ever sees values that get signed), then scores the rest, one model call per batch;
3. reserves sequence numbers durably, signs each reading, and commits the batch to the outbox.

A bad frame is counted by reason and logged; it never stops the batch or the agent. Every
reading carries ``scored_since_seq``, the first sequence number this agent process scored: the
model's per-stream state starts empty there, which is where a verifier starts its replay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_agent.outbox import Outbox
from edge_agent.stats import AgentStats
from senken_core.errors import FrameError
from senken_core.frame import Frame, parse_frame, validate_frame
from senken_core.keys import READING_TAG, DeviceKey
from senken_core.reading import ReadingEncoder

__all__ = ["CheckedBatch", "ReadingPipeline", "Scorer"]

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """Scores rows of channel values (in the kind's channel order) in ppm, in feed order."""

    def score(self, rows: Sequence[Sequence[int]]) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class CheckedBatch:
    """Frames that passed every check, their scores (ppm), and when they were read."""

    frames: list[Frame]
    scores: list[int]
    now_ms: int


class ReadingPipeline:
    """Turns frames into durable signed readings. Not thread-safe: one reader thread."""

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

    def check(self, lines: Sequence[bytes]) -> CheckedBatch | None:
        """Stage A: the frames of ``lines`` that pass every check, scored; None if none."""
        now_ms = int(self.clock() * 1000)
        accepted: list[Frame] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                frame = parse_frame(raw)
                validate_frame(frame)
            except FrameError as exc:
                self._reject(exc.reason, str(exc), raw)
                continue
            if self.expected_kind is not None and frame.kind != self.expected_kind:
                self._reject("wrong_kind", f"expected {self.expected_kind}, got {frame.kind}", raw)
                continue
            if not self._accept_counter(frame, raw):
                continue
            self._check_clock(frame, now_ms)
            accepted.append(frame)
        if not accepted:
            return None
        self.stats.frames_ok += len(accepted)
        # Refuse before scoring: the model's per-stream state must only ever see the values of
        # readings that get signed, or a verifier replaying them could not reproduce the scores.
        free = self.outbox.free_slots()
        if len(accepted) > free:
            refused = len(accepted) - free
            self.stats.readings_refused_full += refused
            self.stats.error(f"outbox full ({self.outbox.max_readings} readings): "
                             f"{refused} newest readings refused; check the broker link")
            log.error("outbox full: refusing %d readings", refused)
            accepted = accepted[:free]
            if not accepted:
                return None
        return CheckedBatch(accepted, self._score(accepted), now_ms)

    def _score(self, frames: list[Frame]) -> list[int]:
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
            scores += scorer.score([[v for _, v in f.values] for f in frames[start:end]])
            start = end
        return scores

    def store(self, batch: CheckedBatch) -> int:
        """Stage B: sign and durably store a checked batch; returns readings stored."""
        frames, scores = batch.frames, batch.scores
        first_seq = self.outbox.reserve(len(frames))
        if self._scored_since is None:
            self._scored_since = first_seq
        rows = []
        sign = self.key.sign
        for i, (frame, score) in enumerate(zip(frames, scores, strict=True)):
            encoder = self._encoders.get(frame.kind)
            if encoder is None:
                encoder = self._encoders[frame.kind] = ReadingEncoder(
                    self.device_id, frame.kind, [n for n, _ in frame.values], self.model_sha256,
                    self._scored_since,
                )
            body = encoder.encode(first_seq + i, batch.now_ms, frame.counter, frame.device_ms,
                                  [v for _, v in frame.values], score)
            rows.append((first_seq + i, body, sign(READING_TAG, body)))
        self.outbox.append(rows, batch.frames[-1].counter)
        self.stats.readings_signed += len(rows)
        self.stats.last_reading_ms = batch.now_ms
        return len(rows)
