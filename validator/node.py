"""One validator as a pure state machine: MQTT messages and a clock in, messages out.

The runner (validator/app.py) owns the broker connection and the timer; this class owns every
decision. Nothing here does I/O or reads the wall clock, so a test drives several nodes through
a simulated network and clock (tests/unit/test_validator_agreement.py).

    runner ──(topic, payload, now)──▶ on_message ──┐
    runner ──(now)──────────────────▶ tick ────────┼──▶ [Outbound(topic, payload, qos, retain)]
    runner ──(schedule, now)────────▶ on_schedule ─┤
                                                   │
    runner ◀── next_deadline() (when to tick next)─┘     stats: NodeStats (metrics)

Membership (docs/protocol.md, section 8): every decision about a window that depends on the
validator set or the methodology uses the set and term the :class:`Schedule` gives for that
window's start (a window's *view*: its attestation id, terms, set and sorted members): the
leader, the k haves a proposal needs and whose haves count, whose signatures count and how
many make its certificate, and the term its attestation is computed under. A node that is not
a member of a window's set does not take part in it (it still verifies and serves readings).
A new schedule (``on_schedule``, from the runner's chain watcher) moves each window being
agreed on whose view changed to its next round under the new view, and looks again at the
signatures and certificates that were waiting for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from senken_core import canonical
from senken_core.attestation import ATTESTATION_KEY_TYPE, Attestation
from senken_core.errors import EncodingError, PayloadError
from senken_core.evidence import CertifiedWindow, window_attestation
from senken_core.membership import MethodologyTerm, Schedule
from senken_core.merkle import leaf_hash
from senken_core.network import NetworkConfig, ProjectConfig
from senken_core.quorum import (
    CertificateError,
    QuorumCertificate,
    ValidatorSet,
    verify_certificate,
)
from senken_core.reading import Reading, SignedReading, decode_batch
from senken_core.registry import DeviceRegistry, RegistryError, SignedDeviceRecord
from senken_core.secp256k1 import ValidatorKey
from senken_core.topics import (
    parse_device_topic,
    parse_validator_topic,
    readings_filter,
    registry_filter,
    validator_filter,
    validator_topic,
)
from validator.agreement import (
    MAX_FETCH,
    Certified,
    Fetch,
    Have,
    OpenedHaves,
    Proposal,
    ReadingsReply,
    Sign,
    SignatureTally,
    SignedHave,
    WindowKey,
    agreed_readings,
    agreed_rejected,
    decode_message,
    leader,
    seal,
)
from validator.verify import ReadingVerifier, RegisteredDevice, Scorer, Verdict

__all__ = ["NodeStats", "Outbound", "ValidatorNode"]


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message the node wants published."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass
class NodeStats:
    """Counters for the metrics endpoint (monotonic unless said otherwise)."""

    readings_verified: int = 0  # readings checked (accepted + rejected; not duplicates)
    readings_accepted: int = 0
    readings_duplicate: int = 0
    readings_pending: int = 0  # gauge: waiting for earlier readings to re-run the model
    rejected: dict[str, int] = field(default_factory=dict)  # reason code -> count
    attestations_signed: int = 0
    certificates: int = 0  # certificates this node assembled (first k signatures it saw)
    quorum_latency_s: list[float] = field(default_factory=list)  # window due -> certificate;
    # drained by the runner into a histogram
    rounds_timed_out: int = 0
    messages_dropped: dict[str, int] = field(default_factory=dict)  # bad peer messages by reason
    peers_last_seen: dict[bytes, float] = field(default_factory=dict)  # address -> node time
    registry_devices: int = 0  # gauge
    registry_refused: dict[str, int] = field(default_factory=dict)
    windows_open: int = 0  # gauge
    certificates_published: int = 0  # certified windows this node published (leader or backup)
    certificates_backup: int = 0  # of which as a backup (the leader's did not appear in time)
    certificates_skipped: int = 0  # peers' certified windows for settled windows, not decoded
    schedule_epoch: int = 0  # gauge: the highest validator-set epoch this node knows
    schedules_applied: int = 0  # schedules (from the chain) that changed something
    agreements_restarted: int = 0  # windows moved to a new round by a new schedule


_DONE_MEMORY = 100_000  # settled windows remembered, so late messages do not reopen them
_SETTLED_MEMORY = 4096  # settled attestations remembered to skip peers' certified windows
_PARKED_MEMORY = 256  # certified windows waiting for a schedule (see _park)
_RECENT_MEMORY = 4096  # certificates of settled windows kept to answer haves for them
_PARKED_BYTES = 32 << 20


@dataclass(slots=True)
class _Held:
    """An accepted reading this node keeps (to attest it, and to serve peers' fetches)."""

    reading: Reading
    signed: SignedReading
    leaf: bytes


@dataclass(slots=True)
class _Window:
    due: float
    start: int = 0
    seconds: int = 0
    leaves: dict[int, bytes] = field(default_factory=dict)
    rejected: int = 0
    open: bool = True  # False once closed (its have sent) or settled


@dataclass(frozen=True, slots=True)
class _Settled:
    """What a settled window's certificate was (to tell whether it still holds under a new
    schedule), and this node's rejected count for it (to agree on it again if not)."""

    version: int
    signers: frozenset[bytes]
    rejected: int


@dataclass(frozen=True, slots=True)
class _View:
    """What the schedule fixes for one window: its attestation id, the project's terms with
    the methodology term in force, the validator set and its members sorted."""

    id: bytes
    terms: ProjectConfig
    validators: ValidatorSet
    members: tuple[bytes, ...]


@dataclass(slots=True)
class _Agreement:
    view: _View
    round: int = 0
    round_started: float = 0.0  # when this node entered the round (the leader's collect_s)
    timer_from: float = 0.0  # the round's timeout runs from here (see _deadline)
    spread: float | None = None  # own have -> k haves held: how late peers' haves come
    timer_round: int = -1  # the round whose proposal restarted the timer (once a round)
    due_at: float | None = None  # when this node's own have went out
    mine: SignedHave | None = None
    haves: dict[bytes, SignedHave] = field(default_factory=dict)
    proposed_round: int = -1
    proposal: Proposal | None = None
    signed_round: int = -1
    fetch_round: int = -1
    evidence: dict[bytes, tuple[tuple[SignedReading, ...], SignedReading | None, int]] = \
        field(default_factory=dict)  # digest -> what this node signed it over, and the round

    @property
    def id(self) -> bytes:
        return self.view.id

    @property
    def terms(self) -> ProjectConfig:
        return self.view.terms

    @property
    def validators(self) -> ValidatorSet:
        return self.view.validators

    @property
    def members(self) -> tuple[bytes, ...]:
        return self.view.members


class _RegistryView:
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


class ValidatorNode:
    """One validator's decisions (module docstring). Not thread-safe; never raises for bad
    input: a bad message is counted in ``stats`` and dropped."""

    def __init__(self, key: ValidatorKey, network: NetworkConfig, *,
                 schedule: Schedule | None = None,
                 scorer_for: Callable[[str], Scorer] | None = None, grace_s: float = 2.0,
                 round_timeout_s: float = 2.0, collect_s: float | None = None,
                 repair_delay_s: float = 0.3, history: int = 100_000,
                 max_age_s: float = 30 * 86400, max_skew_s: float = 300) -> None:
        self.key = key
        self.address = key.address
        self.network = network
        self.prefix = network.topic_prefix
        self.schedule = Schedule.from_network(network) if schedule is None else schedule
        self._known = self.schedule.members_ever()  # whose messages are looked at all
        self._terms_cache: dict[tuple[str, MethodologyTerm], ProjectConfig] = {}
        self._members_cache: dict[ValidatorSet, tuple[bytes, ...]] = {}
        self.domain = network.domain()
        self.grace_s = grace_s
        self.round_timeout_s = round_timeout_s
        self.collect_s = round_timeout_s / 4 if collect_s is None else collect_s
        self.repair_delay_s = repair_delay_s
        self.history = history
        self.registry = DeviceRegistry(network.owners())
        self._projects = {p.id: p for p in network.projects}
        self._now = 0.0
        self.verifier = ReadingVerifier(_RegistryView(self.registry, self._projects),
                                        scorer_for=scorer_for, clock=lambda: self._now,
                                        max_age_s=max_age_s, max_skew_s=max_skew_s,
                                        history=history)
        self.tally = SignatureTally(self.domain)
        self.stats = NodeStats(schedule_epoch=self.schedule.latest.epoch)
        self._store: dict[str, OrderedDict[int, _Held]] = {}
        self._pending: dict[str, dict[int, SignedReading]] = {}
        self._pending_since: dict[str, float] = {}
        self._fetched_at: dict[str, float] = {}
        self._windows: dict[WindowKey, _Window] = {}
        self._agreements: dict[WindowKey, _Agreement] = {}
        # settled windows -> the methodology version and the signers of their certificate
        self._done: OrderedDict[WindowKey, _Settled] = OrderedDict()
        self._signer_sets: dict[frozenset[bytes], frozenset[bytes]] = {}  # interned
        # certified windows that do not hold under this node's schedule yet (another term or
        # set): looked at again when the schedule changes
        self._parked: OrderedDict[WindowKey, bytes] = OrderedDict()
        # settled windows -> (when, attestation wire, signatures), to answer late haves
        self._recent: OrderedDict[WindowKey, tuple[float, bytes, tuple[bytes, ...]]] = \
            OrderedDict()
        self._current: dict[str, _Window] = {}  # device -> its window readings went to last
        self._opened = OpenedHaves()  # have envelopes already opened, by their bytes
        # attestation id -> (when, the certified window): published by this node unless a
        # certified window of that id arrives on a certificates topic before then
        self._backups: dict[bytes, tuple[float, CertifiedWindow]] = {}
        # attestation wire -> id of recently settled windows, to skip peers' copies cheaply
        self._settled: OrderedDict[bytes, bytes] = OrderedDict()
        self._settled_lengths: set[int] = set()
        self._agreement_topic = validator_topic(self.address, "agreement", self.prefix)
        self._certificate_topic = validator_topic(self.address, "certificates", self.prefix)

    @property
    def validators(self) -> ValidatorSet:
        """The chain's current set (the highest epoch known; windows use theirs: _view)."""
        return self.schedule.latest.validators

    @property
    def members(self) -> tuple[bytes, ...]:
        return self.schedule.latest.members

    # --- the runner's interface ---------------------------------------------------------

    def subscriptions(self) -> list[tuple[str, int]]:
        p = self.prefix
        return [(registry_filter(p), 1), (readings_filter(p), 1),
                (validator_filter("agreement", p), 1), (validator_filter("certificates", p), 1),
                (validator_filter("status", p), 1)]

    def status_payload(self, online: bool) -> bytes:
        return canonical.encode({"v": 1, "online": online,
                                 "address": "0x" + self.address.hex()})

    def on_message(self, topic: str, payload: bytes, now: float) -> list[Outbound]:
        self._now = now
        out: list[Outbound] = []
        device_topic = parse_device_topic(topic, self.prefix)
        if device_topic is not None:
            if device_topic[1] == "readings":
                self._on_batch(device_topic[0], payload, out)
            return out
        peer = parse_validator_topic(topic, self.prefix)
        if peer is not None:
            address, leaf = peer
            if address == self.address:
                return out  # our own message, already acted on when it was sent
            if address not in self._known:
                self._drop("not_a_member")
                return out
            self.stats.peers_last_seen[address] = now
            if leaf == "agreement":
                self._on_agreement(address, payload, out)
            elif leaf == "certificates":
                self._on_certificate(payload)
            return out
        if topic.startswith(f"{self.prefix}/registry/"):
            self._on_registry(payload)
        return out

    def tick(self, now: float) -> list[Outbound]:
        self._now = now
        out: list[Outbound] = []
        for key in [k for k, w in self._windows.items() if w.due <= now]:
            self._close(key, out)
        for key, ag in list(self._agreements.items()):
            if ag.mine is None and now >= self._window_end(key) + self.grace_s:
                self._close(key, out)  # peers are attesting a window this node saw nothing of
            if ag.mine is not None and now >= self._deadline(ag):
                self.stats.rounds_timed_out += 1
                ag.round += 1
                ag.round_started = ag.timer_from = now
                out.append(Outbound(self._agreement_topic, ag.mine.envelope))
            self._lead(key, ag, out)
        for device, since in list(self._pending_since.items()):
            if now >= since + self.repair_delay_s and \
                    now >= self._fetched_at.get(device, -1e18) + 4 * self.repair_delay_s:
                self._repair(device, out)
        for wid, (at, window) in list(self._backups.items()):
            if now >= at:  # the leader's certified window did not appear: publish ours
                del self._backups[wid]
                self.stats.certificates_backup += 1
                self._publish_certified(window, out)
        self.stats.windows_open = len(self._windows) + len(self._agreements)
        return out

    def on_schedule(self, schedule: Schedule, now: float) -> list[Outbound]:
        """Use ``schedule`` from now on (idempotent: the same schedule again changes nothing).

        Only windows from ``schedule.first_difference(old)`` on are looked at. Certified
        windows and signatures that waited for a schedule are looked at again first. Each
        window being agreed on whose view changed moves to its next round under the new view,
        keeping its own have and the haves of the new set's members (or is dropped if this
        node is not a member any more). Windows settled by a certificate that does not hold
        under the new schedule (another methodology version, or fewer than k signers of the
        window's new set: this node had not read a change its peers had) are taken up again,
        with a have rebuilt from the readings this node holds."""
        self._now = now
        out: list[Outbound] = []
        if schedule == self.schedule:
            return out
        old, self.schedule = self.schedule, schedule
        self._known = schedule.members_ever()
        self.stats.schedule_epoch = schedule.latest.epoch
        self.stats.schedules_applied += 1
        horizon = schedule.first_difference(old)  # windows before it: nothing changed
        if horizon is None:
            return out
        reopened: list[tuple[WindowKey, _Settled]] = []
        for key, settled in list(self._done.items()):
            if key.window_start >= horizon and not self._still_holds(key, settled):
                del self._done[key]
                reopened.append((key, settled))
        if reopened:  # their attestations may come again with other signatures
            self._settled.clear()
            self._settled_lengths.clear()
        restarted: list[WindowKey] = []
        for key, ag in list(self._agreements.items()):
            if key.window_start < horizon:
                continue
            view = self._view(key)
            if view == ag.view:
                continue
            if view is None or self.address not in view.validators.members:
                del self._agreements[key]  # not this node's window any more
                continue
            self._agreements[key] = self._restarted(ag, view)
            restarted.append(key)
        # first what is certified already (no new round for those), then the new rounds
        parked, self._parked = self._parked, OrderedDict()
        for payload in parked.values():
            self._on_certificate(payload)
        for att in self.tally.waiting():
            key = WindowKey(att.project, att.device, att.window_start)
            if key in self._done:
                self.tally.forget(att.id)
            else:
                self._certify(key, att, out)
        for key in restarted:
            fresh = self._agreements.get(key)
            if fresh is not None:
                self._progress(fresh)
                if fresh.mine is not None:
                    out.append(Outbound(self._agreement_topic, fresh.mine.envelope))
                self._lead(key, fresh, out)
        for key, settled in reopened:
            if key not in self._done and key not in self._agreements:
                self._reopen(key, settled, out)
        return out

    def _still_holds(self, key: WindowKey, settled: _Settled) -> bool:
        """Whether the certificate ``key`` was settled by (its methodology version and
        signers) holds under the current schedule."""
        view = self._view(key)
        if view is None:
            return True  # not this node's to agree on either way
        validators = view.validators
        return settled.version == view.terms.methodology_version and \
            len(settled.signers & validators.members) >= validators.threshold

    def _reopen(self, key: WindowKey, settled: _Settled, out: list[Outbound]) -> None:
        """Agree on ``key`` again (its certificate does not hold under the new schedule):
        its have is rebuilt from the readings this node holds for the window (the have it
        sent is gone with the window's state) and its rejected count. Scans the device's
        stored readings once."""
        seconds = self._window_end(key) - key.window_start
        start_ms, end_ms = key.window_start * 1000, (key.window_start + seconds) * 1000
        window = _Window(self._now, key.window_start, int(seconds),
                         rejected=settled.rejected, open=False)
        for seq, held in self._device_store(key.device).items():
            if start_ms <= held.reading.ts_ms < end_ms:
                window.leaves[seq] = held.leaf
        self._windows[key] = window
        self._close(key, out)  # nothing if this node is not a member of the window's set

    def _restarted(self, ag: _Agreement, view: _View) -> _Agreement:
        """``ag`` moved to its next round under ``view`` (the proposal and signature of its
        current round were made under the old view; one signature per round still holds),
        with this node's have and the haves of ``view``'s members."""
        fresh = _Agreement(view, round=ag.round + 1, round_started=self._now,
                           timer_from=self._now, due_at=ag.due_at, mine=ag.mine,
                           evidence=ag.evidence)
        fresh.haves = {s: h for s, h in ag.haves.items() if s in view.validators.members}
        self.stats.agreements_restarted += 1
        return fresh

    def next_deadline(self) -> float | None:
        times: list[float] = [w.due for w in self._windows.values()]
        for key, ag in self._agreements.items():
            if ag.mine is None:
                times.append(self._window_end(key) + self.grace_s)
                continue
            times.append(self._deadline(ag))
            collect = ag.round_started + self.collect_s
            if ag.proposed_round < ag.round and collect > self._now and self._is_leader(ag):
                times.append(collect)
        for device, since in self._pending_since.items():
            times.append(max(since + self.repair_delay_s,
                             self._fetched_at.get(device, -1e18) + 4 * self.repair_delay_s))
        times.extend(at for at, _window in self._backups.values())
        return min(times) if times else None

    # --- readings -----------------------------------------------------------------------

    def _on_batch(self, device: str, payload: bytes, out: list[Outbound]) -> None:
        try:
            batch = decode_batch(payload)
        except PayloadError:
            self._reject_count("malformed")
            return
        # one call for the batch: the model re-runs once over its readings, in order
        verdicts = self.verifier.verify_batch(device, [(r.body, r.signature) for r in batch])
        stats = self.stats
        keep = self._keep
        accepted = 0
        for signed, verdict in zip(batch, verdicts, strict=True):
            if verdict.status == "accepted":  # the common case, as _handle does it
                accepted += 1
                keep(verdict.reading, signed)  # type: ignore[arg-type]
            else:
                self._handle(device, signed, verdict)
        stats.readings_verified += accepted
        stats.readings_accepted += accepted
        self._after_readings(device, out)

    def _ingest(self, topic_device: str, signed: SignedReading) -> str:
        """Verify one reading; returns its verdict status."""
        verdict = self.verifier.verify(topic_device, signed.body, signed.signature)
        return self._handle(topic_device, signed, verdict)

    def _handle(self, topic_device: str, signed: SignedReading, verdict: Verdict) -> str:
        """Act on one reading's verdict: keep, count, or wait for earlier readings."""
        stats = self.stats
        if verdict.status == "accepted":
            assert verdict.reading is not None
            stats.readings_verified += 1
            stats.readings_accepted += 1
            self._keep(verdict.reading, signed)
        elif verdict.status == "duplicate":
            stats.readings_duplicate += 1
        elif verdict.status == "pending":
            assert verdict.reading is not None
            waiting = self._pending.setdefault(verdict.reading.device, {})
            if len(waiting) < self.history:
                waiting[verdict.reading.seq] = signed
                self._pending_since.setdefault(verdict.reading.device, self._now)
        else:
            stats.readings_verified += 1
            assert verdict.reason is not None
            self._reject_count(verdict.reason.value)
            # counted in the window of the device whose topic it came on, if that device is
            # in good standing (a revoked or unknown device gets no windows at all)
            reading = verdict.reading
            entry = self.registry.lookup(topic_device)
            if reading is not None and entry is not None and not entry.revoked:
                key = self._window_key(entry.project, topic_device, reading.ts_ms)
                if key is not None and not self._closed(key):
                    self._window(key).rejected += 1
        return verdict.status

    def _keep(self, reading: Reading, signed: SignedReading) -> None:
        leaf = leaf_hash(signed.body)
        device = reading.device
        seq = reading.seq
        store = self._store.get(device)
        if store is None:
            store = self._store[device] = OrderedDict()
        store[seq] = _Held(reading, signed, leaf)
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
        if key is None or self._closed(key):
            return  # too late for this node's own have; it may still serve and attest it
        window = self._window(key)
        window.leaves[reading.seq] = leaf
        self._current[device] = window

    def _after_readings(self, device: str, out: list[Outbound]) -> None:
        """Retry readings that waited for earlier ones, then proposals that waited for
        readings."""
        waiting = self._pending.get(device)
        while waiting:
            progressed = False
            for seq in sorted(waiting):
                status = self._ingest(device, waiting.pop(seq))
                if status == "pending":
                    break
                progressed = True
            if not progressed:
                break
        if not waiting:
            self._pending.pop(device, None)
            self._pending_since.pop(device, None)
        self.stats.readings_pending = sum(len(w) for w in self._pending.values())
        for key, ag in list(self._agreements.items()):
            if key.device == device:
                self._try_sign(key, ag, out)
                self._lead(key, ag, out)

    def _repair(self, device: str, out: list[Outbound]) -> None:
        waiting = self._pending.get(device)
        if not waiting:
            self._pending_since.pop(device, None)
            return
        first = min(waiting)
        reading = Reading.from_canonical(waiting[first].body)
        start = self.verifier.replay_needs(reading)
        seqs = tuple(range(start, first))[:MAX_FETCH]
        self._fetched_at[device] = self._now
        if seqs:
            out.append(Outbound(self._agreement_topic, Fetch(device, seqs, None).encode()))

    # --- windows and agreement ----------------------------------------------------------

    def _window_key(self, project: str, device: str, ts_ms: int) -> WindowKey | None:
        terms = self._projects.get(project)
        if terms is None:
            return None
        start = ts_ms // 1000 // terms.window_seconds * terms.window_seconds
        return WindowKey(project, device, start)

    def _closed(self, key: WindowKey) -> bool:
        """Whether this node's own have for ``key`` is sent (or the window settled)."""
        if key in self._done:
            return True
        ag = self._agreements.get(key)
        return ag is not None and ag.mine is not None

    def _window(self, key: WindowKey) -> _Window:
        window = self._windows.get(key)
        if window is None:
            terms = self._projects[key.project]  # a key is made only for a known project
            window = _Window(self._window_end(key) + self.grace_s, key.window_start,
                             terms.window_seconds)
            self._windows[key] = window
        return window

    def _window_end(self, key: WindowKey) -> float:
        terms = self._projects.get(key.project)
        return float(key.window_start + (terms.window_seconds if terms else 0))

    def _timeout(self, round_: int) -> float:
        return self.round_timeout_s * min(1 << min(round_, 3), 8)

    def _deadline(self, ag: _Agreement) -> float:
        """When the current round times out at this node. Until it holds k haves (its own
        among them) no leader can propose: the capped timeout (only to re-broadcast haves).
        From then on the round's timeout plus twice ``spread``, how long after its own have
        the k-th arrived (peers that are that far behind are as late again with the proposal
        and with their signatures), counted from the k-th have and again from the round's
        proposal; never more than the capped timeout."""
        cap = self._timeout(3)
        if ag.spread is None:
            return ag.timer_from + cap
        return ag.timer_from + min(self._timeout(ag.round) + 2 * ag.spread, cap)

    def _progress(self, ag: _Agreement) -> None:
        """Restart the round's timer on progress, a bounded number of times: once when this
        node first holds k haves (its own among them), once per round at its proposal."""
        if ag.spread is None and ag.mine is not None and \
                len(ag.haves) >= ag.validators.threshold:
            ag.spread = 0.0 if ag.due_at is None else max(0.0, self._now - ag.due_at)
            ag.timer_from = max(ag.timer_from, self._now)
        if ag.proposal is not None and ag.proposal.round == ag.round \
                and ag.timer_round < ag.round:
            ag.timer_round = ag.round
            ag.timer_from = max(ag.timer_from, self._now)

    def _agreement(self, key: WindowKey) -> _Agreement | None:
        """The window's agreement, made when first needed; None for a settled window, an
        unknown project, a window without a methodology term, or a window whose set does not
        have this node as a member (it takes no part in it)."""
        ag = self._agreements.get(key)
        if ag is None and key not in self._done:
            view = self._view(key)
            if view is None or self.address not in view.validators.members:
                return None
            ag = _Agreement(view, round_started=self._now, timer_from=self._now)
            self._agreements[key] = ag
        return ag

    def _view(self, key: WindowKey) -> _View | None:
        """What the schedule fixes for the window ``key`` (None: an unknown project, or a
        window before the project's first methodology term, which the contract would refuse
        to credit)."""
        project = self._projects.get(key.project)
        term = self.schedule.term_for(key.project, key.window_start)
        if project is None or term is None:
            return None
        terms = self._terms_cache.get((project.id, term))
        if terms is None:
            terms = replace(project, methodology_version=term.methodology_version,
                            grid_ef_g_per_kwh=term.grid_ef_g_per_kwh)
            self._terms_cache[(project.id, term)] = terms
        validators = self.schedule.validators_for(key.window_start)
        members = self._members_cache.get(validators)
        if members is None:
            members = self._members_cache[validators] = tuple(sorted(validators.members))
        wid = ATTESTATION_KEY_TYPE.hash_struct({
            "project": key.project, "device": key.device, "windowStart": key.window_start,
            "windowSeconds": terms.window_seconds,
            "methodologyVersion": terms.methodology_version})
        return _View(wid, terms, validators, members)

    def _is_leader(self, ag: _Agreement) -> bool:
        return leader(ag.members, ag.id, ag.round) == self.address

    def _close(self, key: WindowKey, out: list[Outbound]) -> None:
        """This node's view of the window is final: send its have and start agreeing."""
        window = self._windows.pop(key, None) or _Window(0.0)
        window.open = False
        ag = self._agreement(key)
        if ag is None or ag.mine is not None:
            return
        have = Have(key, tuple(sorted(window.leaves.items())), window.rejected)
        ag.mine = SignedHave(have, self.address, seal(self.key, have.encode()))
        self._opened.put(ag.mine)  # it comes back inside proposals
        ag.haves[self.address] = ag.mine
        ag.due_at = self._now
        if not ag.haves.keys() - {self.address} and ag.proposal is None:
            ag.round_started = ag.timer_from = self._now
        self._progress(ag)
        out.append(Outbound(self._agreement_topic, ag.mine.envelope))
        self._lead(key, ag, out)
        self._try_sign(key, ag, out)

    def _device_store(self, device: str) -> OrderedDict[int, _Held]:
        return self._store.get(device) or OrderedDict()

    def _lacking(self, device: str, leaves: Iterable[tuple[int, bytes]]) -> list[int]:
        """The seqs of ``leaves`` this node does not hold with that leaf hash (a have's
        thousands of leaves at once)."""
        get = self._device_store(device).get
        return [s for s, leaf in leaves if (held := get(s)) is None or held.leaf != leaf]

    def _lead(self, key: WindowKey, ag: _Agreement, out: list[Outbound]) -> None:
        if ag.mine is None or ag.proposed_round >= ag.round or not self._is_leader(ag):
            return
        complete: list[tuple[SignedHave, list[int]]] = []
        lacking: list[tuple[SignedHave, list[int]]] = []
        for signer in sorted(ag.haves):
            have = ag.haves[signer]
            missing = self._lacking(key.device, have.have.leaves)
            (lacking if missing else complete).append((have, missing))
        k, n = ag.validators.threshold, len(ag.members)
        if len(complete) < k:
            if lacking and ag.fetch_round < ag.round:
                ag.fetch_round = ag.round
                for have, missing in lacking:
                    for i in range(0, len(missing), MAX_FETCH):
                        out.append(Outbound(self._agreement_topic, Fetch(
                            key.device, tuple(missing[i:i + MAX_FETCH]), have.signer).encode()))
            return
        if len(complete) < n and self._now < ag.round_started + self.collect_s:
            return  # give the other haves a moment: a fuller union censors nothing
        haves = tuple(h for h, _ in complete)
        union = agreed_readings(h.have for h in haves)
        everyone = set.intersection(*(set(h.have.leaves) for h in haves))
        store = self._device_store(key.device)
        extra = tuple(store[s].signed for s, leaf in union.items() if (s, leaf) not in everyone)
        boundary = None
        if union:
            before = self._device_store(key.device).get(next(iter(union)) - 1)
            if before is not None and before.reading.ts_ms < key.window_start * 1000:
                boundary = before.signed
        proposal = Proposal(key, ag.round, haves, extra, boundary)
        ag.proposed_round = ag.round
        out.append(Outbound(self._agreement_topic, seal(self.key, proposal.encode())))
        ag.proposal = proposal
        self._progress(ag)
        self._try_sign(key, ag, out)

    def _on_agreement(self, sender: bytes, payload: bytes, out: list[Outbound]) -> None:
        try:
            message, signer = decode_message(payload, self._opened)
        except PayloadError:
            self._drop("malformed")
            return
        if signer is not None and signer != sender:
            self._drop("spoofed")  # sealed by another key than the topic's validator
            return
        if isinstance(message, SignedHave):
            key = message.have.key
            if key in self._done:
                self._answer_settled(key, sender, out)
                return
            ag = self._agreement(key)
            if ag is not None and sender not in ag.validators.members:
                self._drop("not_a_member")  # a member of another window's set, not this one's
            elif ag is not None:
                ag.haves[sender] = message
                self._progress(ag)
                if ag.mine is None and self._now >= self._window_end(key) + self.grace_s:
                    self._close(key, out)  # a window this node saw nothing of, or is late on
                self._lead(key, ag, out)
        elif isinstance(message, Proposal):
            self._on_proposal(sender, message, out)
        elif isinstance(message, Certified):
            self._on_certified(message)
        elif isinstance(message, Sign):
            self._on_sign(message.attestation, message.signature, out)
        elif isinstance(message, Fetch):
            if message.target in (None, self.address):
                store = self._device_store(message.device)
                found = tuple(store[s].signed for s in message.seqs if s in store)
                if found:
                    out.append(Outbound(self._agreement_topic, ReadingsReply(found).encode()))
        elif isinstance(message, ReadingsReply):
            devices = set()
            for signed in message.readings:
                try:
                    device = Reading.from_canonical(signed.body).device
                except (EncodingError, ValueError):
                    self._drop("malformed")
                    continue
                self._ingest(device, signed)
                devices.add(device)
            for device in devices:
                self._after_readings(device, out)

    def _on_proposal(self, sender: bytes, proposal: Proposal, out: list[Outbound]) -> None:
        key = proposal.key
        ag = self._agreement(key)
        if ag is None:
            return
        if leader(ag.members, ag.id, proposal.round) != sender:
            self._drop("not_leader")
            return
        if proposal.round < ag.round:
            self._drop("old_round")
            return
        signers = [h.signer for h in proposal.haves]
        if (len(set(signers)) != len(signers) or len(signers) < ag.validators.threshold
                or any(s not in ag.validators.members for s in signers)
                or any(h.have.key != key for h in proposal.haves)
                or not self._boundary_decodes(key, proposal)):
            self._drop("bad_proposal")
            return
        if proposal.round > ag.round:
            ag.round, ag.round_started = proposal.round, self._now
            ag.timer_from = self._now
        for have in proposal.haves:
            ag.haves.setdefault(have.signer, have)
        ag.proposal = proposal
        self._progress(ag)
        if ag.mine is None and self._now >= self._window_end(key) + self.grace_s:
            self._close(key, out)
        for signed in (*proposal.readings, *(() if proposal.boundary is None
                                             else (proposal.boundary,))):
            self._ingest(key.device, signed)
        self._after_readings(key.device, out)

    @staticmethod
    def _boundary_decodes(key: WindowKey, proposal: Proposal) -> bool:
        """A proposal's boundary reading, if any, is a reading of the window's device (its
        signature and validity are checked as any reading's, when it is ingested)."""
        if proposal.boundary is None:
            return True
        try:
            return Reading.from_canonical(proposal.boundary.body).device == key.device
        except (EncodingError, ValueError, TypeError):
            return False

    def _try_sign(self, key: WindowKey, ag: _Agreement, out: list[Outbound]) -> None:
        proposal = ag.proposal
        if proposal is None or ag.signed_round >= proposal.round or proposal.round != ag.round:
            return
        haves = [h.have for h in proposal.haves]
        union = agreed_readings(haves)
        wanted = list(union.items())
        if proposal.boundary is not None:
            wanted.append((Reading.from_canonical(proposal.boundary.body).seq,
                           leaf_hash(proposal.boundary.body)))
        missing = self._lacking(key.device, wanted)
        if missing:
            if ag.fetch_round < proposal.round:
                ag.fetch_round = proposal.round
                target = leader(ag.members, ag.id, proposal.round)
                for i in range(0, len(missing), MAX_FETCH):
                    out.append(Outbound(self._agreement_topic, Fetch(
                        key.device, tuple(missing[i:i + MAX_FETCH]), target).encode()))
            return
        store = self._device_store(key.device)
        readings = [store[s] for s in union]
        boundary = None
        if proposal.boundary is not None:
            boundary = store[wanted[-1][0]]
        try:
            att = window_attestation(
                project=key.project, device=key.device, window_start=key.window_start,
                window_seconds=ag.terms.window_seconds,
                methodology=ag.terms.methodology_terms(), model_hash=ag.terms.model_hash,
                readings=[(h.reading, h.signed.body) for h in readings],
                boundary=None if boundary is None else boundary.reading,
                rejected=agreed_rejected(haves))
        except ValueError:
            ag.signed_round = proposal.round  # a reading outside the window: never sign this
            self._drop("bad_proposal")
            return
        att, signature = self._sign(att)
        ag.signed_round = proposal.round
        ag.evidence[att.digest(self.domain)] = (tuple(h.signed for h in readings),
                                                None if boundary is None else boundary.signed,
                                                proposal.round)
        self.stats.attestations_signed += 1
        wire = att.to_wire()
        out.append(Outbound(self._agreement_topic, Sign(wire, signature).encode()))
        self._on_sign(wire, signature, out)

    def _sign(self, att: Attestation) -> tuple[Attestation, bytes]:
        """The attestation this node signs and its signature (a seam for fault-injection
        tests: a faulty validator signs something else)."""
        return att, self.key.sign_digest(att.digest(self.domain))

    def _on_sign(self, wire: bytes, signature: bytes, out: list[Outbound]) -> None:
        try:
            att = Attestation.from_wire(wire)
        except PayloadError:
            self._drop("malformed")
            return
        key = WindowKey(att.project, att.device, att.window_start)
        if key in self._done:
            return
        if self.tally.add(att, signature, self._known) is None:
            self._certify(key, att, out)

    def _certify(self, key: WindowKey, att: Attestation, out: list[Outbound]) -> None:
        """Settle ``key`` if the tally holds a certificate of ``att``'s id by the window's set.
        Signatures over an attestation of another term than the window's (a peer that has
        not seen a term change yet, or this node) wait in the tally for a new schedule."""
        ag = self._agreements.get(key)
        view = ag.view if ag is not None else self._view(key)
        if view is None or not self._same_terms(att, view):
            return
        found = self.tally.certificate(att.id, view.validators)
        if found is None:
            return
        cert, signers = found
        att = cert.attestation
        digest = att.digest(self.domain)
        self.stats.certificates += 1
        evidence = None if ag is None else ag.evidence.get(digest)
        if evidence is not None:
            readings, boundary, round_ = evidence
            window = CertifiedWindow(cert, readings, boundary)
            if leader(view.members, att.id, round_) == self.address:
                self._publish_certified(window, out)  # the leader of the certified round
            else:  # a backup, in case the leader crashed right after signing
                self._backups[att.id] = (self._now + self.round_timeout_s, window)
        self._settle(key, cert, signers)

    @staticmethod
    def _same_terms(att: Attestation, view: _View) -> bool:
        """Whether ``att`` has the window's attestation id (project, device and start are the
        key's; the rest of the id is the grid and the methodology version)."""
        return att.window_seconds == view.terms.window_seconds and \
            att.methodology_version == view.terms.methodology_version

    def _publish_certified(self, window: CertifiedWindow, out: list[Outbound]) -> None:
        self.stats.certificates_published += 1
        out.append(Outbound(self._certificate_topic, window.to_wire()))

    def _settled_id(self, payload: bytes) -> bytes | None:
        """The attestation id if ``payload`` ends with the attestation of a window this node
        settled recently (canonical CBOR sorts "attestation" last in a certified window), else
        None. Cheap: no decoding, a few slices and hash lookups."""
        for n in self._settled_lengths:
            if len(payload) > n + 3:
                wid = self._settled.get(payload[-n:])
                if wid is not None and payload.endswith(canonical.encode_head(2, n)
                                                        + payload[-n:]):
                    return wid
        return None

    def _on_certificate(self, payload: bytes) -> None:
        wid = self._settled_id(payload)
        if wid is not None and wid not in self._backups:
            self.stats.certificates_skipped += 1  # already settled, nothing to do
            return
        try:
            window = CertifiedWindow.from_wire(payload)
        except PayloadError:
            self._drop("bad_certificate")
            return
        self._accept(window.certificate, payload)

    def _on_certified(self, message: Certified) -> None:
        """A peer's answer to this node's have: the certificate of a window it settled."""
        try:
            att = Attestation.from_wire(message.attestation)
        except PayloadError:
            self._drop("malformed")
            return
        self._accept(QuorumCertificate(att, message.signatures), None)

    def _accept(self, cert: QuorumCertificate, payload: bytes | None) -> None:
        """Settle the certificate's window if the certificate holds under this node's
        schedule (k members of the window's set, the window's methodology version); if not,
        keep it for the next schedule when it may hold then (``payload``: the certified
        window's wire, else it is rebuilt without readings)."""
        att = cert.attestation
        key = WindowKey(att.project, att.device, att.window_start)
        view = self._view(key)
        try:
            signers = verify_certificate(cert, self.schedule.validators_for(att.window_start),
                                         self.domain)
            fits = view is not None and self._same_terms(att, view)
        except CertificateError as exc:
            if exc.reason not in ("unknown_signer", "too_few"):
                self._drop("bad_certificate")
                return
            fits = False  # perhaps a set this node has not seen yet
        if not fits:
            wire = payload or CertifiedWindow(cert, (), None).to_wire()
            if not self._park(key, wire):
                self._drop("bad_certificate")
            return
        self._backups.pop(att.id, None)  # someone published it: no backup needed
        if key not in self._done:
            self._settle(key, cert, signers)

    def _answer_settled(self, key: WindowKey, sender: bytes, out: list[Outbound]) -> None:
        """A have for ``key``, which this node settled: if it comes a round timeout or more
        after that from a member of the window's set, its sender is still agreeing (it missed
        the certificate, or took the window up again after a schedule change); send it the
        certificate, at most once per round timeout."""
        recent = self._recent.get(key)
        if recent is None or self._now < recent[0] + self.round_timeout_s:
            return
        view = self._view(key)
        if view is not None and sender in view.validators.members:
            _at, wire, signatures = recent
            self._recent[key] = (self._now, wire, signatures)
            out.append(Outbound(self._agreement_topic, Certified(wire, signatures).encode()))

    def _park(self, key: WindowKey, payload: bytes) -> bool:
        """Keep a certified window that does not hold under this node's schedule (signed by
        a set or under a term it has not seen yet) until the next schedule, at most
        ``_PARKED_MEMORY`` of them and ``_PARKED_BYTES`` in all (one per window, the latest).
        False (not kept) for a window already settled."""
        if key in self._done or len(payload) > _PARKED_BYTES:
            return False
        self._parked.pop(key, None)
        self._parked[key] = payload
        while len(self._parked) > _PARKED_MEMORY or \
                sum(map(len, self._parked.values())) > _PARKED_BYTES:
            self._parked.popitem(last=False)
        self._drop("certificate_parked")
        return True

    def _settle(self, key: WindowKey, cert: QuorumCertificate,
                signers: Iterable[bytes]) -> None:
        """The window is certified: stop agreeing on it and forget its state (but its
        certificate, for a while: _answer_settled)."""
        att = cert.attestation
        ag = self._agreements.pop(key, None)
        window = self._windows.pop(key, None)
        if window is not None:
            window.open = False
        if ag is not None and ag.due_at is not None:
            self.stats.quorum_latency_s.append(self._now - ag.due_at)
        attestation_id, wire = att.id, att.to_wire()
        self.tally.forget(attestation_id)
        self._parked.pop(key, None)
        by = frozenset(signers)
        rejected = 0 if ag is None or ag.mine is None else ag.mine.have.rejected
        self._done[key] = _Settled(att.methodology_version,
                                   self._signer_sets.setdefault(by, by), rejected)
        while len(self._done) > _DONE_MEMORY:
            self._done.popitem(last=False)
        self._recent[key] = (self._now, wire, cert.signatures)
        while len(self._recent) > _RECENT_MEMORY:
            self._recent.popitem(last=False)
        self._settled[wire] = attestation_id
        self._settled_lengths.add(len(wire))
        while len(self._settled) > _SETTLED_MEMORY:
            self._settled.popitem(last=False)

    # --- registry and counting ----------------------------------------------------------

    def _on_registry(self, payload: bytes) -> None:
        self._current.clear()  # a device's project may change with its record
        try:
            self.registry.apply(SignedDeviceRecord.from_wire(payload))
        except RegistryError as exc:
            refused = self.stats.registry_refused
            refused[exc.reason] = refused.get(exc.reason, 0) + 1
        self.stats.registry_devices = len(self.registry)

    def _reject_count(self, reason: str) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1

    def _drop(self, reason: str) -> None:
        self.stats.messages_dropped[reason] = self.stats.messages_dropped.get(reason, 0) + 1

