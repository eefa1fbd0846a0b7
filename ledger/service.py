"""The ledger's core: registry records and certified windows in, log entries out.

Fed raw MQTT payloads by the ingest (``ledger/mqtt.py``) or by a test; no broker, no event
loop. Each certified window is checked end to end before it is appended::

    payload ─ decode ─┬─ logged already, same attestation ─────────────────▶ duplicate
                      ├─ project (window grid, model, methodology) ────────▶ refused:<reason>
                      ├─ window ends > 1 h from now (clock, chain time) ──▶ refused:future_window
                      ├─ window's schedule not final yet (chain only) ─────▶ pending:schedule
                      │                                                      (kept in the DB,
                      │                                                      retried once the
                      │                                                      chain is read far
                      │                                                      enough)
                      ├─ window's methodology term (none, version) ────────▶ refused:no_term,
                      │                                                      wrong_methodology
                      ├─ quorum certificate (k of the window's set) ───────▶ refused:certificate:*
                      ├─ device's registry record not here yet ────────────▶ pending (kept in the
                      │                                                      DB, retried when the
                      │                                                      registry changes)
                      ├─ readings, root, count, quantity (evidence check) ─▶ refused:<reason>
                      ├─ logged already, another attestation ──────────────▶ conflicting (warning)
                      └─ append (a reading counted before: refused) ───────▶ appended

**Which set and term.** A window's validator set and methodology term come from a
:class:`~senken_core.membership.Schedule`. Without a chain it is the network file's one set and
one term per project, for every window, and every window's schedule is final. With a chain
(``[chain]``: ``ledger.chain_app`` reads the schedule as the validators do and hands it over
with :meth:`Ledger.on_schedule`) a window starting at ``W`` is judged only once the ledger has
read the chain at a block whose timestamp is later than ``W``: a set change that applies to
``W`` was mined at ``T <= W - activation_delay_s`` and a term that applies to it was added at
``T <= effectiveFrom <= W`` (the registry refuses a term that starts before its block), and
block timestamps never decrease, so nothing mined after that block can change ``W``'s set or
term (docs/protocol.md, section 8). Until then the certificate waits in the database, as one
waiting for its device's record does.

Every outcome is counted (:attr:`Ledger.certificates`, :attr:`Ledger.registry_outcomes`);
a malformed payload is counted and logged, never raised. Only :class:`StoreError` (the
database is down) propagates, so the ingest can leave the message unacknowledged and retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from ledger.offline import project_problem, term_problem, window_methodology
from ledger.store import AppendRefused, LedgerStore, StoreError
from senken_core.errors import SenkenError
from senken_core.evidence import CertifiedWindow, EvidenceError, check_certified_window
from senken_core.membership import MethodologyTerm, Schedule
from senken_core.methodology import Methodology
from senken_core.network import NetworkConfig
from senken_core.quorum import CertificateError, ValidatorSet, verify_certificate
from senken_core.reading import Reading
from senken_core.registry import (
    DeviceRecord,
    DeviceRegistry,
    RegistryError,
    SignedDeviceRecord,
)
from senken_core.topics import parse_validator_topic

__all__ = ["MAX_WINDOW_AHEAD_S", "Ledger", "Outcome"]

# A certificate for a window that ends further ahead than this (of the ledger's clock, or of
# the chain's time read last where that is later) is refused as ``future_window``: validators
# attest a window only after it has ended, so it is forged or from a validator whose clock is
# wrong; refused, it cannot wait in the database either (the waiting table stays bounded by
# what can be certified within the hour).
MAX_WINDOW_AHEAD_S = 3600

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one certificate payload. ``result``: appended, duplicate, conflicting,
    pending or refused (``reason`` then says why; for pending: ``schedule`` while the
    window's schedule is not final, None while the device's registry record is missing)."""

    result: str
    reason: str | None = None
    attestation_id: bytes | None = None
    index: int | None = None
    detail: str = ""  # what was wrong, for the log

    @property
    def label(self) -> str:
        """The counter name: ``refused:<reason>``, ``pending:schedule`` or the result."""
        return f"{self.result}:{self.reason}" if self.reason is not None else self.result


class Ledger:
    """Checks and logs certified windows for one network. Thread-safe (one lock: messages
    are handled one at a time).

    ``follow_chain``: the set and terms come from the chain (:meth:`on_schedule`); until the
    first schedule arrives every certificate waits. Otherwise they are the network file's."""

    def __init__(self, network: NetworkConfig, store: LedgerStore, *,
                 follow_chain: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.network = network
        self.clock = clock
        self.store = store
        self.domain = network.domain()
        self.registry = DeviceRegistry(network.owners())
        self.certificates: Counter[str] = Counter()
        self.registry_outcomes: Counter[str] = Counter()
        self.follows_chain = follow_chain
        self.schedule = Schedule.from_network(network)  # replaced by on_schedule
        self.chain_block: int | None = None  # the block the schedule was read at (chain only)
        self.chain_time: int | None = None  # ... and its timestamp: windows before it are final
        self._earliest_waiting: int | None = None  # the first window start waiting for it
        self._methodologies: dict[tuple[str, MethodologyTerm], Methodology] = {}
        self._lock = threading.RLock()  # one message at a time
        self._stats_lock = threading.Lock()  # counters, read by /metrics while a check runs
        self._prefix = network.topic_prefix

    @property
    def validators(self) -> ValidatorSet:
        """The set of the latest epoch known (the network file's without a chain)."""
        return self.schedule.latest.validators

    def start(self) -> None:
        """Load the registry records kept in the database and retry every waiting
        certificate (a crash may have come between the two). Raises StoreError."""
        with self._lock:
            for wire in self.store.registry_records():
                try:
                    self.registry.apply(SignedDeviceRecord.from_wire(wire))
                except RegistryError as exc:  # the network file changed (an owner key)
                    log.warning("stored registry record no longer applies: %s", exc)
            self.retry_pending()

    # -- messages ------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> str:
        """Route one MQTT message by topic; returns its outcome label."""
        head = f"{self._prefix}/registry/"
        if topic.startswith(head):
            return self.on_registry(payload, topic[len(head):])
        parsed = parse_validator_topic(topic, self._prefix)
        if parsed is not None and parsed[1] == "certificates":
            return self.on_certificate(payload).label
        with self._stats_lock:
            self.registry_outcomes["ignored_topic"] += 1
        return "ignored_topic"

    def on_registry(self, payload: bytes, topic_device: str | None = None) -> str:
        """Apply an owner-signed registry record, keep it, and retry the certificates that
        waited for it. Returns ``applied``, ``cleared`` (an empty retained message) or
        ``refused:<reason>`` (see :class:`~senken_core.registry.DeviceRegistry`)."""
        with self._lock:
            label = self._registry(payload, topic_device)
            with self._stats_lock:
                self.registry_outcomes[label] += 1
            return label

    def _registry(self, payload: bytes, topic_device: str | None) -> str:
        if not payload:
            return "cleared"  # a retained record removed from the broker: the ledger keeps it
        try:
            signed = SignedDeviceRecord.from_wire(payload)
            record = DeviceRecord.from_canonical(signed.body)
            if topic_device is not None and record.device != topic_device:
                raise RegistryError("topic_mismatch", f"record for {record.device} published "
                                    f"under {topic_device}", record.device)
            self.registry.apply(signed)
        except RegistryError as exc:
            log.warning("registry record refused (%s): %s", exc.reason, exc)
            return f"refused:{exc.reason}"
        except Exception as exc:  # an input boundary: nothing malformed may kill the loop
            log.warning("registry record refused (malformed): %r", exc)
            return "refused:malformed"
        self.store.save_registry(record.device, record.project, signed.to_wire(),
                                 record.version, record.revoked)
        self.retry_pending(record.device)
        return "applied"

    def on_certificate(self, payload: bytes) -> Outcome:
        """Check one certified window (``CertifiedWindow.to_wire()`` bytes) and append it.
        Idempotent. Never raises except :class:`StoreError`."""
        with self._lock:
            outcome = self._certificate(payload, keep_pending=True)
            self._count(outcome)
            return outcome

    def retry_pending(self, device: str | None = None) -> list[Outcome]:
        """Retry the certificates waiting (for ``device``'s record); those no longer pending
        are removed from the waiting table. Returns their outcomes."""
        with self._lock:
            done, outcomes = [], []
            for row_id, payload in self.store.pending(device):
                outcome = self._certificate(payload, keep_pending=False)
                if outcome.result != "pending":
                    self._count(outcome)
                    outcomes.append(outcome)
                    done.append(row_id)
            self.store.remove_pending(done)
            return outcomes

    def on_schedule(self, schedule: Schedule, block: int, block_timestamp: int
                    ) -> list[Outcome]:
        """The schedule as the chain held it at ``block`` (mined at ``block_timestamp``):
        from now on every window starting before ``block_timestamp`` is judged under it, and
        the certificates that waited for that are retried (their outcomes returned). A read
        of an earlier block than the last one (a node that lags behind the one read before)
        is ignored: its schedule may miss what the later read saw. Raises StoreError."""
        with self._lock:
            if self.chain_block is not None and block < self.chain_block:
                log.warning("schedule read at block %d, behind block %d read before: ignored",
                            block, self.chain_block)
                return []
            if schedule != self.schedule:
                log.info("schedule: validator set epoch %d (k = %d of %d), read at block %d",
                         schedule.latest.epoch, schedule.latest.threshold,
                         len(schedule.latest.members), block)
            self.schedule = schedule
            self.chain_block = block
            self.chain_time = block_timestamp
            waiting = self._earliest_waiting
            if waiting is None or not self.final(waiting):
                return []
            self._earliest_waiting = None  # retried below; those still waiting note it again
            return self.retry_pending()

    def final(self, window_start: int) -> bool:
        """Whether nothing the chain may still record can change the set or term of the
        window starting at ``window_start`` (module docstring): always without a chain."""
        if not self.follows_chain:
            return True
        return self.chain_time is not None and self.chain_time > window_start

    def window_epoch(self, window_start: int) -> int | None:
        """The epoch of the validator set the certificate of the window starting at
        ``window_start`` is checked under; None without a chain (or before its first read)."""
        if not self.follows_chain or self.chain_time is None:
            return None
        return self.schedule.change_for(window_start).epoch

    def waiting_for(self) -> int | None:
        """The earliest window start a certificate waits for the chain to be read past
        (None: none waits)."""
        return self._earliest_waiting

    def _count(self, outcome: Outcome) -> None:
        with self._stats_lock:
            self.certificates[outcome.label] += 1
        att = outcome.attestation_id.hex()[:16] if outcome.attestation_id else "?"
        if outcome.result == "appended":
            log.info("appended %s... at index %d", att, outcome.index)
        elif outcome.result == "conflicting":
            log.warning("conflicting certificate for logged window %s... (entry %s): the "
                        "validators certified two different attestations", att, outcome.index)
        elif outcome.result == "refused":
            log.warning("certificate %s... refused (%s): %s", att, outcome.reason,
                        outcome.detail or "see the project's terms")

    def _certificate(self, payload: bytes, *, keep_pending: bool) -> Outcome:
        try:
            window = CertifiedWindow.from_wire(payload)
        except Exception as exc:  # an input boundary: PayloadError, or anything unforeseen
            return Outcome("refused", "malformed", detail=str(exc))
        att = window.attestation
        logged = self.store.logged(att.id)
        if logged is not None and logged.attestation_sha256 == sha256(att.to_wire()).digest():
            return Outcome("duplicate", None, att.id, logged.index)
        refusal = project_problem(self.network, att)
        if refusal is not None:
            return Outcome("refused", refusal, att.id)
        # now: the ledger's clock, or the chain's block time read last where that is ahead
        # (a chain's time is what decides whether a window has ended, on chain too)
        now = max(self.clock(), self.chain_time or 0)
        ahead_s = att.window_start + att.window_seconds - now
        if ahead_s > MAX_WINDOW_AHEAD_S:  # validators attest a window once it has ended
            return Outcome("refused", "future_window", att.id,
                           detail=f"the window ends {ahead_s:.0f} s from now")
        if not self.final(att.window_start):
            self._note_waiting(att.window_start)
            if keep_pending and self.store.add_pending(att.device, payload):
                log.info("certificate %s... waits until the chain has been read past %d",
                         att.id.hex()[:16], att.window_start)
            return Outcome("pending", "schedule", att.id)
        term = self.schedule.term_for(att.project, att.window_start)
        refusal = term_problem(att, term)
        if refusal is not None:
            detail = (f"no methodology term of {att.project} for the window at "
                      f"{att.window_start}" if term is None else
                      f"methodology version {att.methodology_version}, the window's term "
                      f"says {term.methodology_version}")
            return Outcome("refused", refusal, att.id, detail=detail)
        assert term is not None
        validators = self.schedule.validators_for(att.window_start)
        try:
            verify_certificate(window.certificate, validators, self.domain)
        except CertificateError as exc:
            return Outcome("refused", f"certificate:{exc.reason}", att.id, detail=str(exc))
        record = self.registry.lookup(att.device)
        if record is None:
            if keep_pending and self.store.add_pending(att.device, payload):
                log.info("certificate %s... waits for %s's registry record", att.id.hex()[:16],
                         att.device)
            return Outcome("pending", None, att.id)
        if record.project != att.project:
            return Outcome("refused", "wrong_project", att.id)
        key = record.public_key
        try:
            signers = check_certified_window(
                window, validators, self.domain,
                lambda device: key if device == att.device else None,
                self._methodology(att.project, term))
        except EvidenceError as exc:
            return Outcome("refused", exc.reason, att.id, detail=str(exc))
        if logged is not None:
            return Outcome("conflicting", None, att.id, logged.index)
        readings = [Reading.from_canonical(r.body) for r in window.readings]  # checked above
        try:
            result = self.store.append(window, signers, readings)
        except AppendRefused as exc:
            return Outcome("refused", exc.reason, att.id, detail=str(exc))
        if result.appended:
            return Outcome("appended", None, att.id, result.index)
        return Outcome("conflicting" if result.conflicting else "duplicate", None, att.id,
                       result.index)

    def _note_waiting(self, window_start: int) -> None:
        if self._earliest_waiting is None or window_start < self._earliest_waiting:
            self._earliest_waiting = window_start

    def _methodology(self, project_id: str, term: MethodologyTerm) -> Methodology:
        """The project's methodology under ``term`` (cached: one per project and term)."""
        found = self._methodologies.get((project_id, term))
        if found is None:
            project = self.network.project(project_id)
            assert project is not None  # checked by project_problem
            found = self._methodologies[(project_id, term)] = window_methodology(project, term)
        return found

    # -- status --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and gauges for /metrics and /health."""
        with self._stats_lock:
            certificates = dict(self.certificates)
            registry = dict(self.registry_outcomes)
            devices = len(self.registry)
        try:
            pending: int | None = self.store.pending_count()
        except (StoreError, SenkenError):
            pending = None
        out: dict[str, Any] = {"certificates": certificates, "registry": registry,
                               "registry_devices": devices, "pending_certificates": pending}
        if self.follows_chain:
            latest = self.schedule.latest
            out["schedule"] = {"epoch": latest.epoch, "threshold": latest.threshold,
                               "members": len(latest.members), "read_block": self.chain_block,
                               "read_block_timestamp": self.chain_time,
                               "earliest_waiting_window": self._earliest_waiting}
        return out
