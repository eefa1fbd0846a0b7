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
import operator
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from senken_core.errors import EncodingError, SignatureError
from senken_core.keys import (
    READING_TAG,
    native_verify_detached,
    native_verify_many,
    verify_signature,
)
from senken_core.reading import Reading, decode_of_kind
from senken_core.sensors import SENSOR_KINDS, SensorKind

__all__ = ["ReadingVerifier", "Reason", "RegisteredDevice", "Registry", "Scorer", "Verdict"]

_BAD_SIGNATURE = "signature does not verify against the device key"  # verify_signature's


def _native_verify() -> Callable[[bytes, bytes, bytes, bytes], bytes | None] | None:
    """The core's native ``verify_detached`` (keys prepared once), or None where no extension
    is built."""
    return native_verify_detached()


def _native_verify_many() -> Callable[[bytes, bytes, list[bytes], list[bytes]],
                                      list[bytes | None]] | None:
    """The core's native ``verify_many`` (a batch of one key's signatures in one call), or None
    where no extension is built."""
    return native_verify_many() if _native_verify() is not None else None


def _signed_digest(public_key: bytes, body: bytes, signature: bytes) -> bytes:
    """SHA-256 of ``body`` once ``signature`` is ``public_key``'s over it, else
    :class:`SignatureError`: ``verify_signature`` (then hashlib), natively where it can."""
    native = _native_verify()
    if (native is not None and type(public_key) is bytes and len(public_key) == 32
            and type(signature) is bytes and len(signature) == 64 and type(body) is bytes):
        digest = native(READING_TAG, public_key, body, signature)
        if digest is None:
            raise SignatureError(_BAD_SIGNATURE)
        return digest
    verify_signature(public_key, READING_TAG, body, signature)
    return hashlib.sha256(body).digest()


_CHANNELS = {name: kind.channel_names for name, kind in SENSOR_KINDS.items()}
_first = operator.itemgetter(0)

# kind name -> (the kind, (minimum, maximum) per channel in order, (index, name) of its
# cumulative channels): what _plausibility and _accept look at, flattened once per kind
_Checks = tuple[SensorKind, tuple[tuple[int, int], ...], tuple[tuple[int, str], ...]]
_KIND_CHECKS: dict[str, _Checks] = {}


def _checks(kind_name: str) -> _Checks:
    kind = SENSOR_KINDS[kind_name]
    cached = _KIND_CHECKS.get(kind_name)
    if cached is None or cached[0] is not kind:
        cached = (kind, tuple((c.minimum, c.maximum) for c in kind.channels),
                  tuple((i, c.name) for i, c in enumerate(kind.channels) if c.cumulative))
        _KIND_CHECKS[kind_name] = cached
    return cached


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
        admitted = self._admit(topic_device, body, signature)
        if isinstance(admitted, Verdict):
            return admitted
        reading, state, digest = admitted
        if reading.seq <= state.highest_seq - self.history:
            return self._replayed(reading)
        # The model state follows every reading the device signed, in order, whatever else
        # is wrong with it: replay the score before the remaining checks.
        if self.scorer_for is None:
            self._remember(state, reading.seq, digest)
            return self._after_score(reading, state)
        pending = self._ready_to_score(reading, state)
        if pending is not None:
            return pending
        assert state.scorer is not None
        ppm = state.scorer.score([[v for _, v in reading.values]])[0]
        state.next_to_score = reading.seq + 1
        self._remember(state, reading.seq, digest)
        return self._scored(reading, state, ppm)

    def verify_batch(self, topic_device: str, items: Sequence[tuple[bytes, bytes]]
                     ) -> list[Verdict]:
        """``[verify(topic_device, body, signature) for body, signature in items]``: the same
        verdicts, in order, and the same state after, but the model re-scores each run of
        consecutive readings in one call (what makes re-scoring cheap).

        How: a reading next in line to be scored is remembered and its row queued; its checks
        after the score (mismatch, timestamps, plausibility, acceptance) wait until the queue
        is scored. The queue is scored before anything that would see its outcome: the end of
        ``items``, a reading whose replay check depends on the queued ones' acceptance, a new
        ``scored_since_seq`` (a fresh scorer), or a reading the batch path leaves to
        :meth:`verify`'s own order (an unknown kind, a channel count not the kind's). The
        clock is read once per scored run, after the model ran, and that time is each of its
        readings' "now" in the timestamp checks (verify reads it once per reading). What is
        the same for the whole batch (the registry entry of ``topic_device``) is looked up
        once. Exceptions are verify's (e.g. scorer_for
        of an unknown kind), raised with the state verify would leave and the batch's
        verdicts lost; a scorer raising on a queued run (ReadingScorer does not: it only
        refuses rows of another channel count, which are never queued) leaves the queued
        readings remembered but unsettled."""
        if self.scorer_for is None:
            return [self.verify(topic_device, body, signature) for body, signature in items]
        verdicts: list[Verdict | None] = [None] * len(items)
        queue: list[tuple[int, Reading]] = []  # (index in items, reading): scored, in order
        queued_state: _DeviceState | None = None  # one device per topic: one state
        queued_max = -1  # the highest seq queued

        def flush() -> None:
            assert queued_state is not None and queued_state.scorer is not None
            ppms = queued_state.scorer.score([[v for _, v in r.values] for _, r in queue])
            self._settle_run(queue, queued_state, ppms, verdicts)
            queue.clear()

        history = self.history
        admit = self._admit
        # The common case, a batch of readings the device signed as its registry entry says,
        # is admitted with what is the same for the whole batch looked up once: the same
        # checks as _admit, and anything else goes through _admit for its exact verdict.
        entry = self.registry.lookup(topic_device)
        verify_many = _native_verify_many()
        fast: list[Reading | None] | None = None
        if (entry is not None and not entry.revoked and verify_many is not None
                and type(entry.public_key) is bytes and len(entry.public_key) == 32):
            bodies = [body for body, _ in items]
            fast = decode_of_kind(entry.kind, bodies)
            public_key, model = entry.public_key, entry.model_sha256
            # every signature of the batch in one call (None where it does not verify, and
            # for items the fast path below leaves to _admit)
            digests = verify_many(READING_TAG, public_key, bodies,
                                  [signature for _, signature in items])
        devices = self._devices
        for i, (body, signature) in enumerate(items):
            reading = fast[i] if fast is not None else None
            if (reading is not None and reading.device == topic_device
                    and reading.model_sha256 == model and type(signature) is bytes
                    and len(signature) == 64 and type(body) is bytes):
                digest = digests[i]
                if digest is None:
                    verdicts[i] = Verdict("rejected", reading, Reason.BAD_SIGNATURE,
                                          _BAD_SIGNATURE)
                    continue
                state = devices.get(topic_device)
                if state is None:
                    state = devices[topic_device] = _DeviceState()
                before = state.seen.get(reading.seq)
                if before is not None:
                    verdicts[i] = (Verdict("duplicate", reading) if before == digest else
                                   self._reject(reading, Reason.SEQ_REUSED,
                                                f"seq {reading.seq} was signed before with "
                                                "another body"))
                    continue
            else:
                admitted = admit(topic_device, body, signature)
                if isinstance(admitted, Verdict):
                    verdicts[i] = admitted
                    continue
                reading, state, digest = admitted
            seq = reading.seq
            if queue and (state is not queued_state or  # (never: one topic, one device)
                          seq <= queued_max - history or
                          reading.scored_since_seq != state.scored_since):
                flush()  # the verdict below may depend on the queue's outcome: settle it
            if seq <= state.highest_seq - history:
                verdicts[i] = self._replayed(reading)
                continue
            if (seq != state.next_to_score or state.scorer is None
                    or reading.scored_since_seq != state.scored_since):
                pending = self._ready_to_score(reading, state)
                if pending is not None:
                    verdicts[i] = pending
                    continue
            kind = SENSOR_KINDS.get(reading.kind)
            if kind is None or len(kind.channels) != len(reading.values):
                if queue:
                    flush()
                verdicts[i] = self.verify(topic_device, body, signature)  # (it may raise)
                continue
            state.next_to_score = seq + 1
            seen = state.seen
            seen[seq] = digest
            if len(seen) > history:
                self._remember(state, seq, digest)  # (trims)
            queue.append((i, reading))
            queued_state = state
            if seq > queued_max or len(queue) == 1:
                queued_max = seq
        if queue:
            flush()
        done = [v for v in verdicts if v is not None]
        assert len(done) == len(items)
        return done

    def _admit(self, topic_device: str, body: bytes, signature: bytes
               ) -> Verdict | tuple[Reading, _DeviceState, bytes]:
        """The checks up to the sequence number's: a verdict, or the reading, its device's
        state and the body's digest to go on with."""
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
            digest = _signed_digest(entry.public_key, body, signature)
        except SignatureError as exc:
            return self._reject(reading, Reason.BAD_SIGNATURE, str(exc))
        if reading.kind != entry.kind:
            return self._reject(reading, Reason.WRONG_KIND,
                                f"registered {entry.kind}, reading says {reading.kind}")
        channels = _CHANNELS.get(entry.kind, ())
        if tuple(map(_first, reading.values)) != channels:
            # a validly signed body whose channels are not its kind's (a device key holder
            # could send one): refused here, before the model or the range checks see it
            return self._reject(reading, Reason.MALFORMED,
                                f"channels {[n for n, _ in reading.values]} are not "
                                f"{entry.kind}'s {list(channels)}")
        if reading.model_sha256 != entry.model_sha256:
            return self._reject(reading, Reason.WRONG_MODEL,
                                f"model {reading.model_sha256.hex()[:16]}... is not the "
                                "project's")
        state = self._devices.get(reading.device)
        if state is None:
            state = self._devices[reading.device] = _DeviceState()
        seen = state.seen.get(reading.seq)
        if seen is not None:
            if seen == digest:
                return Verdict("duplicate", reading)
            return self._reject(reading, Reason.SEQ_REUSED,
                                f"seq {reading.seq} was signed before with another body")
        return reading, state, digest

    def _settle_run(self, queue: list[tuple[int, Reading]], state: _DeviceState,
                    ppms: list[int], verdicts: list[Verdict | None]) -> None:
        """``verdicts[i] = self._scored(r, state, ppm, now_ms)`` for each queued ``(i, r)`` and
        its ``ppm``, in order, with ``now_ms`` read once: the accepted case inline (scores
        equal, timestamps in bounds, values in range, registers not going down), anything
        else through :meth:`_scored` for its exact verdict."""
        now_ms = int(self.clock() * 1000)  # once for the run (verify: once per reading)
        oldest, newest = now_ms - self.max_age_ms, now_ms + self.max_skew_ms
        register = state.register
        kind_name: str | None = None
        bounds: tuple[tuple[int, int], ...] = ()
        cumulative: tuple[tuple[int, str], ...] = ()
        for (i, r), ppm in zip(queue, ppms, strict=True):
            if r.kind != kind_name:
                kind_name = r.kind
                _, bounds, cumulative = _checks(kind_name)
            values, seq, ts_ms = r.values, r.seq, r.ts_ms
            ok = ppm == r.anomaly_ppm and oldest <= ts_ms <= newest
            if ok:
                for (low, high), (_, value) in zip(bounds, values, strict=True):
                    if not low <= value <= high:
                        ok = False
                        break
            if ok:
                for k, name in cumulative:
                    before = register.get(name)
                    if before is not None and before[0] < seq and values[k][1] < before[1]:
                        ok = False
                        break
            if not ok:
                verdicts[i] = self._scored(r, state, ppm, now_ms)
                continue
            highest = state.highest_seq
            gap = seq - highest - 1 if highest >= 0 and seq > highest + 1 else 0
            if seq > highest:
                state.highest_seq = seq
            for k, name in cumulative:
                before = register.get(name)
                if before is None or before[0] < seq:
                    register[name] = (seq, values[k][1])
            verdicts[i] = Verdict("accepted", r, None, "", gap)

    def _replayed(self, reading: Reading) -> Verdict:
        return self._reject(reading, Reason.REPLAYED,
                            f"seq {reading.seq} is older than the last {self.history}")

    def _scored(self, reading: Reading, state: _DeviceState, ppm: int,
                now_ms: int | None = None) -> Verdict:
        """The checks after re-scoring gave ``ppm`` (the reading is remembered)."""
        if ppm != reading.anomaly_ppm:  # the model gives another score
            return self._reject(reading, Reason.SCORE_MISMATCH,
                                f"signed {reading.anomaly_ppm} ppm, the model gives {ppm}")
        return self._after_score(reading, state, now_ms)

    def _after_score(self, reading: Reading, state: _DeviceState,
                     now_ms: int | None = None) -> Verdict:
        """The checks after the score, at ``now_ms`` (None: the clock, read now)."""
        if now_ms is None:
            now_ms = int(self.clock() * 1000)
        ts_ms = reading.ts_ms
        if ts_ms < now_ms - self.max_age_ms:
            return self._reject(reading, Reason.STALE, f"read {now_ms - ts_ms} ms ago")
        if ts_ms > now_ms + self.max_skew_ms:
            return self._reject(reading, Reason.FUTURE,
                                f"{ts_ms - now_ms} ms ahead of this validator")
        # the common case in one pass over precomputed bounds; any doubt: the full checks
        _, bounds, cumulative = _checks(reading.kind)
        values = reading.values
        seq = reading.seq
        register = state.register
        for (low, high), (_, value) in zip(bounds, values, strict=True):
            if not low <= value <= high:
                return self._reject(reading, *self._plausibility(reading, state))  # type: ignore[misc]
        for i, name in cumulative:
            before = register.get(name)
            value = values[i][1]
            if before is not None and before[0] < seq and value < before[1]:
                return self._reject(reading, *self._plausibility(reading, state))  # type: ignore[misc]
        # accepted: the gap before it, the highest seq, the cumulative registers
        highest = state.highest_seq
        gap = max(0, seq - highest - 1) if highest >= 0 else 0
        if seq > highest:
            state.highest_seq = seq
        for i, name in cumulative:
            before = register.get(name)
            if before is None or before[0] < seq:
                register[name] = (seq, values[i][1])
        return Verdict("accepted", reading, None, "", gap)

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

    def _ready_to_score(self, reading: Reading, state: _DeviceState) -> Verdict | None:
        """None if ``reading`` is the next one to re-score (a new ``scored_since_seq`` starts
        a fresh scorer here), else its ``pending`` verdict."""
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
        return None
