"""Readings in (docs/protocol.md, section 7: "every validator verifies every reading on its own
and keeps the accepted ones"): a node's device readings, from devices' batches, peers'
proposals and peers' answers to fetches.

:class:`Intake` owns

* the verification bookkeeping: each reading goes through the node's
  :class:`~validator.verify.ReadingVerifier` (a device's batch in one ``verify_batch`` call)
  and its verdict is counted in :class:`~validator.shared.NodeStats`;
* the accepted readings, per device in sequence order (at most ``history`` each): what the
  node attests and what it serves to peers' fetches;
* each accepted reading's leaf in the window this node's own have for it is being filled in
  (the window itself belongs to validator/rounds.py: ``Rounds.open_window``), and each
  rejected reading in that window's rejected count;
* pending readings (the model cannot re-score them until earlier ones arrive) and their
  repair: after ``repair_delay_s`` it asks every peer for the missing sequence numbers;
* the device registry (owner-signed records, under each project's terms: :class:`RegistryView`).

The per-reading path (``on_batch`` -> ``verify_batch`` -> the accepted loop -> ``keep``) lives
here in one class, on this class's own attributes: it is the node's hot path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from senken_core.errors import EncodingError, PayloadError
from senken_core.merkle import leaf_hash
from senken_core.network import ProjectConfig
from senken_core.reading import Reading, SignedReading, decode_batch
from senken_core.registry import DeviceRegistry, RegistryError, SignedDeviceRecord
from validator.agreement import MAX_FETCH, Fetch, ReadingsReply, WindowKey
from validator.shared import Clock, NodeStats, Outbound
from validator.verify import ReadingVerifier, RegisteredDevice, Verdict
from validator.views import Views

if TYPE_CHECKING:
    from validator.rounds import Rounds, Window

__all__ = ["Held", "Intake", "RegistryView"]


@dataclass(slots=True)
class Held:
    """An accepted reading this node keeps (to attest it, and to serve peers' fetches)."""

    reading: Reading
    signed: SignedReading
    leaf: bytes


class RegistryView:
    """What the verifier trusts: the owner-signed record, under its project's current terms."""

    def __init__(self, registry: DeviceRegistry, projects: dict[str, ProjectConfig]) -> None:
        self.registry, self.projects = registry, projects
        # device -> (its record, its project, the view of them): rebuilt when either changes
        self._views: dict[str, tuple[object, object, RegisteredDevice]] = {}

    def lookup(self, device: str) -> RegisteredDevice | None:
        record = self.registry.lookup(device)
        if record is None:
            return None
        project = self.projects.get(record.project)
        if project is None:
            return None
        cached = self._views.get(device)
        if cached is not None and cached[0] is record and cached[1] is project:
            return cached[2]
        view = RegisteredDevice(device, record.project, record.public_key, record.kind,
                                project.model_hash, record.revoked)
        self._views[device] = (record, project, view)
        return view


class Intake:
    """A node's readings: verified, kept, sorted into windows, repaired (module docstring).
    Never raises for bad input: a bad reading or message is counted and dropped."""

    # the rounds' side, set by connect(): the window a kept reading's leaf goes into (None
    # once this node's have for it is sent), and who waits for a device's readings
    _open_window: Callable[[WindowKey], Window | None]
    _on_readings: Callable[[str, list[Outbound]], None]

    def __init__(self, registry: DeviceRegistry, verifier: ReadingVerifier, views: Views,
                 stats: NodeStats, clock: Clock, *, history: int, repair_delay_s: float,
                 agreement_topic: str) -> None:
        self.registry = registry
        self.verifier = verifier
        self.stats = stats
        self.history = history
        self.repair_delay_s = repair_delay_s
        self._clock = clock
        self._topic = agreement_topic
        self._window_key = views.window_key
        self._store: dict[str, OrderedDict[int, Held]] = {}
        self._pending: dict[str, dict[int, SignedReading]] = {}
        self._pending_since: dict[str, float] = {}
        self._fetched_at: dict[str, float] = {}
        self._current: dict[str, Window] = {}  # device -> its window readings went to last

    def connect(self, rounds: Rounds) -> None:
        """Send kept readings' leaves into ``rounds``' windows, and tell it when a device's
        readings arrived (proposals may have waited for them)."""
        self._open_window = rounds.open_window
        self._on_readings = rounds.on_readings

    # --- readings in ---------------------------------------------------------------------

    def on_batch(self, device: str, payload: bytes, out: list[Outbound]) -> None:
        """A batch of readings on ``device``'s readings topic."""
        try:
            batch = decode_batch(payload)
        except PayloadError:
            self.stats.count_rejected("malformed")
            return
        # one call for the batch: the model re-runs once over its readings, in order
        verdicts = self.verifier.verify_batch(device, [(r.body, r.signature) for r in batch])
        stats = self.stats
        keep = self.keep
        accepted = 0
        for signed, verdict in zip(batch, verdicts, strict=True):
            if verdict.status == "accepted":  # the common case, as handle does it
                accepted += 1
                keep(verdict.reading, signed)  # type: ignore[arg-type]
            else:
                self.handle(device, signed, verdict)
        stats.readings_verified += accepted
        stats.readings_accepted += accepted
        self.after_readings(device, out)

    def ingest(self, topic_device: str, signed: SignedReading) -> str:
        """Verify one reading; returns its verdict status."""
        verdict = self.verifier.verify(topic_device, signed.body, signed.signature)
        return self.handle(topic_device, signed, verdict)

    def handle(self, topic_device: str, signed: SignedReading, verdict: Verdict) -> str:
        """Act on one reading's verdict: keep, count, or wait for earlier readings."""
        stats = self.stats
        if verdict.status == "accepted":
            assert verdict.reading is not None
            stats.readings_verified += 1
            stats.readings_accepted += 1
            self.keep(verdict.reading, signed)
        elif verdict.status == "duplicate":
            stats.readings_duplicate += 1
        elif verdict.status == "pending":
            assert verdict.reading is not None
            waiting = self._pending.setdefault(verdict.reading.device, {})
            if len(waiting) < self.history:
                waiting[verdict.reading.seq] = signed
                self._pending_since.setdefault(verdict.reading.device, self._clock.now)
        else:
            stats.readings_verified += 1
            assert verdict.reason is not None
            stats.count_rejected(verdict.reason.value)
            # counted in the window of the device whose topic it came on, if that device is
            # in good standing (a revoked or unknown device gets no windows at all)
            reading = verdict.reading
            entry = self.registry.lookup(topic_device)
            if reading is not None and entry is not None and not entry.revoked:
                key = self._window_key(entry.project, topic_device, reading.ts_ms)
                window = None if key is None else self._open_window(key)
                if window is not None:
                    window.rejected += 1
        return verdict.status

    def keep(self, reading: Reading, signed: SignedReading) -> None:
        """Keep an accepted reading, and put its leaf in its window unless this node's have
        for that window is sent (it may still serve and attest it)."""
        leaf = leaf_hash(signed.body)
        device = reading.device
        seq = reading.seq
        store = self._store.get(device)
        if store is None:
            store = self._store[device] = OrderedDict()
        store[seq] = Held(reading, signed, leaf)
        if len(store) > self.history:
            store.popitem(last=False)
        window = self._current.get(device)  # most readings go where the previous one went
        if window is not None and window.open \
                and reading.ts_ms // 1000 // window.seconds * window.seconds == window.start:
            window.leaves[seq] = leaf
            return
        entry = self.registry.lookup(device)
        if entry is None:
            return
        key = self._window_key(entry.project, device, reading.ts_ms)
        if key is None:
            return
        window = self._open_window(key)
        if window is None:
            return  # too late for this node's own have; it may still serve and attest it
        window.leaves[reading.seq] = leaf
        self._current[device] = window

    def after_readings(self, device: str, out: list[Outbound]) -> None:
        """Retry readings that waited for earlier ones, then proposals that waited for
        readings."""
        waiting = self._pending.get(device)
        while waiting:
            progressed = False
            for seq in sorted(waiting):
                status = self.ingest(device, waiting.pop(seq))
                if status == "pending":
                    break
                progressed = True
            if not progressed:
                break
        if not waiting:
            self._pending.pop(device, None)
            self._pending_since.pop(device, None)
        self.stats.readings_pending = sum(len(w) for w in self._pending.values())
        self._on_readings(device, out)

    def on_readings_reply(self, message: ReadingsReply, out: list[Outbound]) -> None:
        """A peer's answer to a fetch: each reading verified as if its device had sent it."""
        devices = set()
        for signed in message.readings:
            try:
                device = Reading.from_canonical(signed.body).device
            except (EncodingError, ValueError):
                self.stats.count_dropped("malformed")
                continue
            self.ingest(device, signed)
            devices.add(device)
        for device in devices:
            self.after_readings(device, out)

    def on_registry(self, payload: bytes) -> None:
        """A device record on the registry topic (refused ones counted by reason)."""
        self._current.clear()  # a device's project may change with its record
        try:
            self.registry.apply(SignedDeviceRecord.from_wire(payload))
        except RegistryError as exc:
            refused = self.stats.registry_refused
            refused[exc.reason] = refused.get(exc.reason, 0) + 1
        self.stats.registry_devices = len(self.registry)

    # --- repair of pending readings ---------------------------------------------------------

    def tick(self, now: float, out: list[Outbound]) -> None:
        """Ask peers for what pending readings wait for, ``repair_delay_s`` after the first
        of them came (and again at most every 4 x ``repair_delay_s``)."""
        for device, since in list(self._pending_since.items()):
            if now >= since + self.repair_delay_s and \
                    now >= self._fetched_at.get(device, -1e18) + 4 * self.repair_delay_s:
                self._repair(device, out)

    def add_deadlines(self, times: list[float]) -> None:
        """Append to ``times`` when :meth:`tick` has repairs to make."""
        for device, since in self._pending_since.items():
            times.append(max(since + self.repair_delay_s,
                             self._fetched_at.get(device, -1e18) + 4 * self.repair_delay_s))

    def _repair(self, device: str, out: list[Outbound]) -> None:
        waiting = self._pending.get(device)
        if not waiting:
            self._pending_since.pop(device, None)
            return
        first = min(waiting)
        reading = Reading.from_canonical(waiting[first].body)
        start = self.verifier.replay_needs(reading)
        seqs = tuple(range(start, first))[:MAX_FETCH]
        self._fetched_at[device] = self._clock.now
        if seqs:
            out.append(Outbound(self._topic, Fetch(device, seqs, None).encode()))

    # --- the readings kept ------------------------------------------------------------------

    def device_store(self, device: str) -> OrderedDict[int, Held]:
        """``device``'s accepted readings by seq (empty if none; not to be written)."""
        return self._store.get(device) or OrderedDict()

    def lacking(self, device: str, leaves: Iterable[tuple[int, bytes]]) -> list[int]:
        """The seqs of ``leaves`` this node does not hold with that leaf hash (a have's
        thousands of leaves at once)."""
        get = self.device_store(device).get
        return [s for s, leaf in leaves if (held := get(s)) is None or held.leaf != leaf]

    def answer_fetch(self, message: Fetch, out: list[Outbound]) -> None:
        """Send the readings of a fetch this node holds (none: no answer)."""
        store = self.device_store(message.device)
        found = tuple(store[s].signed for s in message.seqs if s in store)
        if found:
            out.append(Outbound(self._topic, ReadingsReply(found).encode()))
