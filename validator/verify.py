"""Verify one signed reading, on this validator's own: every rejection has a reason code.

Pure logic: a registry lookup, the clock and (optionally) the anomaly model are passed in; the
runner around it does the MQTT I/O and the counting. The checks, in order (the first that
fails is the reason)::

    malformed        the batch entry or body does not decode (canonical CBOR, reading fields)
    wrong_topic      the body's device is not the device of the topic it came on
    unknown_device   not in the registry (never enrolled, or the registry entry is not signed)
    revoked_device   enrolled, then revoked (lost, tampered)
    bad_signature    the Ed25519 signature does not verify against the registered key
    wrong_kind       the sensor kind differs from the registered one
    wrong_model      signed with a model other than the project's (its sha256 differs)
    seq_reused       the device signed another body under a sequence number already seen
    replayed         a sequence number too old to check against this validator's history
    stale / future   the agent's timestamp is older than max_age_s or ahead by max_skew_s
    out_of_range     a value outside its channel's range (a device signs what its frames say)
    register_decreased  a cumulative register (energy) went down between readings
    score_mismatch   re-running the model over the device's readings gives another score

A reading seen before with the same body is a ``duplicate`` (QoS 1 delivers duplicates): it is
dropped and counted, not an error. Sequence numbers that jump forward are recorded as gaps.

Anomaly scores: every reading carries ``scored_since_seq``, where its agent's model state
started. The verifier keeps a scorer per device and replays each reading in sequence order; a
reading whose predecessors it has not all seen since ``scored_since_seq`` cannot be re-scored
yet and is returned ``pending`` (the runner fetches the missing ones, then verifies again).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from senken_core.errors import EncodingError, SignatureError
from senken_core.keys import READING_TAG, verify_signature
from senken_core.reading import Reading
from senken_core.sensors import SENSOR_KINDS

__all__ = ["ReadingVerifier", "Reason", "RegisteredDevice", "Registry", "Scorer", "Verdict"]


class Reason(StrEnum):
    MALFORMED = "malformed"
    WRONG_TOPIC = "wrong_topic"
    UNKNOWN_DEVICE = "unknown_device"
    REVOKED_DEVICE = "revoked_device"
    BAD_SIGNATURE = "bad_signature"
    WRONG_KIND = "wrong_kind"
    WRONG_MODEL = "wrong_model"
    SEQ_REUSED = "seq_reused"
    REPLAYED = "replayed"
    STALE = "stale"
    FUTURE = "future"
    OUT_OF_RANGE = "out_of_range"
    REGISTER_DECREASED = "register_decreased"
    SCORE_MISMATCH = "score_mismatch"


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    """What the (project-owner-signed) registry says of a device."""

    device: str
    project: str
    public_key: bytes  # Ed25519, 32 bytes
    kind: str
    model_sha256: bytes  # the anomaly model the project requires
    revoked: bool = False


class Registry(Protocol):
    def lookup(self, device: str) -> RegisteredDevice | None: ...


class Scorer(Protocol):
    """Scores rows of channel values in order, in ppm (senken_core.anomaly.ReadingScorer)."""

    def score(self, rows: list[list[int]]) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """``status`` is accepted, rejected (with ``reason``), duplicate or pending."""

    status: str
    reading: Reading | None = None
    reason: Reason | None = None
    detail: str = ""
    gap: int = 0  # sequence numbers skipped just before this accepted reading

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


@dataclass
class _DeviceState:
    highest_seq: int = -1
    seen: OrderedDict[int, bytes] = field(default_factory=OrderedDict)  # seq -> body digest
    register: dict[str, tuple[int, int]] = field(default_factory=dict)  # channel -> (seq, v)
    scored_since: int | None = None
    next_to_score: int = 0
    scorer: Scorer | None = None


class ReadingVerifier:
    """Verifies readings as they arrive; keeps per-device history (not thread-safe)."""

    def __init__(
        self,
        registry: Registry,
        *,
        scorer_for: Callable[[str], Scorer] | None = None,
        clock: Callable[[], float] = time.time,
        max_age_s: float = 30 * 86400,
        max_skew_s: float = 300,
        history: int = 100_000,
    ) -> None:
        """``scorer_for(kind)`` makes a fresh scorer (None: scores are not re-run);
        ``max_age_s`` bounds how old a reading may arrive (an agent's outbox may hold days);
        ``history`` is how many sequence numbers per device are remembered for duplicates."""
        self.registry = registry
        self.scorer_for = scorer_for
        self.clock = clock
        self.max_age_ms = int(max_age_s * 1000)
        self.max_skew_ms = int(max_skew_s * 1000)
        self.history = history
        self._devices: dict[str, _DeviceState] = {}

    def verify(self, topic_device: str, body: bytes, signature: bytes) -> Verdict:
        """Check one signed reading received on ``topic_device``'s topic. Never raises for
        bad input: the verdict says what is wrong."""
        try:
            reading = Reading.from_canonical(body)
        except (EncodingError, ValueError, TypeError) as exc:
            return Verdict("rejected", None, Reason.MALFORMED, str(exc))
        if reading.device != topic_device:
            return self._reject(reading, Reason.WRONG_TOPIC,
                                f"body is {reading.device}'s, topic is {topic_device}'s")
        entry = self.registry.lookup(reading.device)
        if entry is None:
            return self._reject(reading, Reason.UNKNOWN_DEVICE, "not in the registry")
        if entry.revoked:
            return self._reject(reading, Reason.REVOKED_DEVICE, "revoked in the registry")
        try:
            verify_signature(entry.public_key, READING_TAG, body, signature)
        except SignatureError as exc:
            return self._reject(reading, Reason.BAD_SIGNATURE, str(exc))
        if reading.kind != entry.kind:
            return self._reject(reading, Reason.WRONG_KIND,
                                f"registered {entry.kind}, reading says {reading.kind}")
        if reading.model_sha256 != entry.model_sha256:
            return self._reject(reading, Reason.WRONG_MODEL,
                                f"model {reading.model_sha256.hex()[:16]}... is not the "
                                "project's")
        state = self._devices.setdefault(reading.device, _DeviceState())
        digest = hashlib.sha256(body).digest()
        seen = state.seen.get(reading.seq)
        if seen is not None:
            if seen == digest:
                return Verdict("duplicate", reading)
            return self._reject(reading, Reason.SEQ_REUSED,
                                f"seq {reading.seq} was signed before with another body")
        if reading.seq <= state.highest_seq - self.history:
            return self._reject(reading, Reason.REPLAYED,
                                f"seq {reading.seq} is older than the last {self.history}")
        # The model state follows every reading the device signed, in order, whatever else
        # is wrong with it: replay the score before the remaining checks.
        scored = self._check_score(reading, state) if self.scorer_for is not None else None
        if scored is not None and scored.status == "pending":
            return scored
        self._remember(state, reading.seq, digest)
        if scored is not None:  # the model gives another score
            return scored
        now_ms = int(self.clock() * 1000)
        if reading.ts_ms < now_ms - self.max_age_ms:
            return self._reject(reading, Reason.STALE, f"read {now_ms - reading.ts_ms} ms ago")
        if reading.ts_ms > now_ms + self.max_skew_ms:
            return self._reject(reading, Reason.FUTURE,
                                f"{reading.ts_ms - now_ms} ms ahead of this validator")
        problem = self._plausibility(reading, state)
        if problem is not None:
            return self._reject(reading, *problem)
        return self._accept(reading, state)

    def replay_needs(self, reading: Reading) -> int:
        """For a ``pending`` reading: the first sequence number this verifier must see before
        it can re-score ``reading`` (fetch ``[replay_needs(r), r.seq)`` from a peer)."""
        state = self._devices.get(reading.device)
        if state is None or state.scored_since != reading.scored_since_seq:
            return reading.scored_since_seq
        return state.next_to_score

    def _remember(self, state: _DeviceState, seq: int, digest: bytes) -> None:
        state.seen[seq] = digest
        while len(state.seen) > self.history:
            state.seen.popitem(last=False)

    def _reject(self, reading: Reading, reason: Reason, detail: str) -> Verdict:
        return Verdict("rejected", reading, reason, detail)

    def _plausibility(self, reading: Reading, state: _DeviceState) -> tuple[Reason, str] | None:
        kind = SENSOR_KINDS[reading.kind]
        for channel, (_, value) in zip(kind.channels, reading.values, strict=True):
            if not channel.minimum <= value <= channel.maximum:
                return Reason.OUT_OF_RANGE, (f"{channel.name}={value} outside "
                                             f"[{channel.minimum}, {channel.maximum}]")
            if channel.cumulative:
                before = state.register.get(channel.name)
                if before is not None and before[0] < reading.seq and value < before[1]:
                    return Reason.REGISTER_DECREASED, (f"{channel.name} {before[1]} at seq "
                                                       f"{before[0]}, then {value}")
        return None

    def _check_score(self, reading: Reading, state: _DeviceState) -> Verdict | None:
        assert self.scorer_for is not None
        if reading.scored_since_seq != state.scored_since:
            if reading.seq != reading.scored_since_seq:
                return Verdict("pending", reading, None,
                               f"needs seq {reading.scored_since_seq}.. to re-run the model")
            state.scored_since = reading.scored_since_seq
            state.next_to_score = reading.seq
            state.scorer = self.scorer_for(reading.kind)
        if reading.seq != state.next_to_score or state.scorer is None:
            return Verdict("pending", reading, None,
                           f"needs seq {state.next_to_score}.. to re-run the model")
        ppm = state.scorer.score([[v for _, v in reading.values]])[0]
        state.next_to_score = reading.seq + 1
        if ppm != reading.anomaly_ppm:
            return self._reject(reading, Reason.SCORE_MISMATCH,
                                f"signed {reading.anomaly_ppm} ppm, the model gives {ppm}")
        return None

    def _accept(self, reading: Reading, state: _DeviceState) -> Verdict:
        gap = max(0, reading.seq - state.highest_seq - 1) if state.highest_seq >= 0 else 0
        state.highest_seq = max(state.highest_seq, reading.seq)
        kind = SENSOR_KINDS[reading.kind]
        for channel, (_, value) in zip(kind.channels, reading.values, strict=True):
            before = state.register.get(channel.name)
            if channel.cumulative and (before is None or before[0] < reading.seq):
                state.register[channel.name] = (reading.seq, value)
        return Verdict("accepted", reading, gap=gap)
