"""One validator as a pure state machine: MQTT messages and a clock in, messages out.

The runner (validator/app.py) owns the broker connection and the timer; this class owns every
decision. Nothing here does I/O or reads the wall clock, so a test drives several nodes through
a simulated network and clock (tests/unit/test_validator_agreement.py).

    runner ──(topic, payload, now)──▶ on_message ──┐
    runner ──(now)──────────────────▶ tick ────────┼──▶ [Outbound(topic, payload, qos, retain)]
    runner ──(schedule, now)────────▶ on_schedule ─┤
                                                   │
    runner ◀── next_deadline() (when to tick next)─┘     stats: NodeStats (metrics)

:class:`ValidatorNode` is the public surface and the wiring: it sets the clock, routes each
input to the part that owns it, and gathers what they send, in the order they send it. The
parts share the node's clock, stats and outbox (validator/shared.py):

    readings, registry, fetches ──▶ Intake (intake.py) ──a reading's leaf──▶ its Window
    haves, proposals ─────────────▶ Rounds (rounds.py) ──own signature──▶ Settlement
    signatures, certificates ─────▶ Settlement (settle.py) ──end(window)──▶ Rounds
    schedules ────────────────────▶ Views (views.py), then Settlement and Rounds (on_schedule)

Membership (docs/protocol.md, section 8): every decision about a window that depends on the
validator set or the methodology uses the set and term the :class:`Schedule` gives for that
window's start (a window's *view*, validator/views.py: its attestation id, terms, set and
sorted members): the leader, the k haves a proposal needs and whose haves count, whose
signatures count and how many make its certificate, and the term its attestation is computed
under. A node that is not a member of a window's set does not take part in it (it still
verifies and serves readings). A new schedule (``on_schedule``, from the runner's chain
watcher) moves each window being agreed on whose view changed to its next round under the new
view, and looks again at the signatures and certificates that were waiting for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from senken_core import canonical
from senken_core.attestation import Attestation
from senken_core.errors import PayloadError
from senken_core.evidence import CertifiedWindow
from senken_core.membership import Schedule
from senken_core.network import NetworkConfig
from senken_core.quorum import ValidatorSet
from senken_core.reading import SignedReading
from senken_core.registry import DeviceRegistry
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
    Certified,
    Fetch,
    OpenedHaves,
    Proposal,
    ReadingsReply,
    Sign,
    SignedHave,
    WindowKey,
    decode_message,
)
from validator.intake import Intake, RegistryView
from validator.rounds import Agreement, Rounds, Window
from validator.settle import Settled, Settlement
from validator.shared import Clock, NodeStats, Outbound
from validator.verify import ReadingVerifier, Scorer
from validator.views import Views, WindowView

__all__ = ["NodeStats", "Outbound", "ValidatorNode"]


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
        self.domain = network.domain()
        self.grace_s = grace_s
        self.round_timeout_s = round_timeout_s
        self.collect_s = round_timeout_s / 4 if collect_s is None else collect_s
        self.repair_delay_s = repair_delay_s
        self.history = history
        self.registry = DeviceRegistry(network.owners())
        projects = {p.id: p for p in network.projects}
        self._views = Views(Schedule.from_network(network) if schedule is None else schedule,
                            projects)
        clock = self._clock = Clock()
        self.verifier = ReadingVerifier(RegistryView(self.registry, projects),
                                        scorer_for=scorer_for, clock=lambda: clock.now,
                                        max_age_s=max_age_s, max_skew_s=max_skew_s,
                                        history=history)
        self.stats = NodeStats(schedule_epoch=self.schedule.latest.epoch)
        self._opened = OpenedHaves()  # have envelopes already opened, by their bytes
        agreement_topic = validator_topic(self.address, "agreement", self.prefix)
        # the parts (module docstring), then the two links back: a kept reading's leaf goes
        # into Rounds' window (and readings wake its proposals); Settlement ends its windows
        self._intake = Intake(self.registry, self.verifier, self._views, self.stats, clock,
                              history=history, repair_delay_s=repair_delay_s,
                              agreement_topic=agreement_topic)
        self._settle = Settlement(
            self._views, self.stats, clock, address=self.address, domain=self.domain,
            round_timeout_s=round_timeout_s, agreement_topic=agreement_topic,
            certificate_topic=validator_topic(self.address, "certificates", self.prefix))
        self._rounds = Rounds(key, self._views, self._intake, self._settle, self.stats, clock,
                              self._opened, sign=self._sign, domain=self.domain,
                              grace_s=grace_s, round_timeout_s=round_timeout_s,
                              collect_s=self.collect_s, agreement_topic=agreement_topic)
        self._intake.connect(self._rounds)
        self._settle.connect(self._rounds)
        self.tally = self._settle.tally

    @property
    def schedule(self) -> Schedule:
        """The schedule this node uses (the last one given to ``on_schedule``)."""
        return self._views.schedule

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
        self._clock.now = now
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
            if address not in self._views.known:
                self.stats.count_dropped("not_a_member")
                return out
            self.stats.peers_last_seen[address] = now
            if leaf == "agreement":
                self._on_agreement(address, payload, out)
            elif leaf == "certificates":
                self._settle.on_certificate(payload)
            return out
        if topic.startswith(f"{self.prefix}/registry/"):
            self._intake.on_registry(payload)
        return out

    def tick(self, now: float) -> list[Outbound]:
        self._clock.now = now
        out: list[Outbound] = []
        self._rounds.tick(now, out)  # windows due, rounds timed out, leaders proposing
        self._intake.tick(now, out)  # repairs of pending readings
        self._settle.tick(now, out)  # backups due
        self.stats.windows_open = self._rounds.open_count()
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
        self._clock.now = now
        out: list[Outbound] = []
        if schedule == self.schedule:
            return out
        old = self.schedule
        self._views.use(schedule)
        self.stats.schedule_epoch = schedule.latest.epoch
        self.stats.schedules_applied += 1
        horizon = schedule.first_difference(old)  # windows before it: nothing changed
        if horizon is None:
            return out
        reopened = self._settle.unsettle(horizon)
        restarted = self._rounds.restart_from(horizon)
        # first what is certified already (no new round for those), then the new rounds
        self._settle.retry(out)
        self._rounds.resume(restarted, out)
        for key, rejected in reopened:
            if key not in self._settle.done and key not in self._rounds.agreements:
                self._rounds.reopen(key, rejected, out)
        return out

    def next_deadline(self) -> float | None:
        times: list[float] = []
        self._rounds.add_deadlines(times)
        self._intake.add_deadlines(times)
        self._settle.add_deadlines(times)
        return min(times) if times else None

    # --- routing ------------------------------------------------------------------------

    def _on_batch(self, device: str, payload: bytes, out: list[Outbound]) -> None:
        """A batch of readings on a device's topic (the hot path: Intake.on_batch)."""
        self._intake.on_batch(device, payload, out)

    def _on_agreement(self, sender: bytes, payload: bytes, out: list[Outbound]) -> None:
        try:
            message, signer = decode_message(payload, self._opened)
        except PayloadError:
            self.stats.count_dropped("malformed")
            return
        if signer is not None and signer != sender:
            self.stats.count_dropped("spoofed")  # sealed by another key than the topic's
            return
        if isinstance(message, SignedHave):
            key = message.have.key
            if key in self._settle.done:
                self._settle.answer_settled(key, sender, out)
            else:
                self._rounds.on_have(sender, message, out)
        elif isinstance(message, Proposal):
            self._rounds.on_proposal(sender, message, out)
        elif isinstance(message, Certified):
            self._settle.on_certified(message)
        elif isinstance(message, Sign):
            self._settle.on_sign(message.attestation, message.signature, out)
        elif isinstance(message, Fetch):
            if message.target in (None, self.address):
                self._intake.answer_fetch(message, out)
        elif isinstance(message, ReadingsReply):
            self._intake.on_readings_reply(message, out)

    def _sign(self, att: Attestation) -> tuple[Attestation, bytes]:
        """The attestation this node signs and its signature (a seam for fault-injection
        tests: a faulty validator signs something else)."""
        return att, self.key.sign_digest(att.digest(self.domain))

    # --- the parts, as tests and benches look at them ------------------------------------

    def _ingest(self, topic_device: str, signed: SignedReading) -> str:
        """Verify one reading; returns its verdict status."""
        return self._intake.ingest(topic_device, signed)

    def _after_readings(self, device: str, out: list[Outbound]) -> None:
        self._intake.after_readings(device, out)

    def _reject_count(self, reason: str) -> None:
        self.stats.count_rejected(reason)

    def _drop(self, reason: str) -> None:
        self.stats.count_dropped(reason)

    def _agreement(self, key: WindowKey) -> Agreement | None:
        return self._rounds.agreement(key)

    def _view(self, key: WindowKey) -> WindowView | None:
        return self._views.view(key)

    @property
    def _windows(self) -> dict[WindowKey, Window]:
        return self._rounds.windows

    @property
    def _agreements(self) -> dict[WindowKey, Agreement]:
        return self._rounds.agreements

    @property
    def _done(self) -> OrderedDict[WindowKey, Settled]:
        return self._settle.done

    @property
    def _backups(self) -> dict[bytes, tuple[float, CertifiedWindow]]:
        return self._settle.backups
