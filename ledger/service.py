"""The ledger's core: registry records and certified windows in, log entries out.

Fed raw MQTT payloads by the ingest (``ledger/mqtt.py``) or by a test; no broker, no event
loop. Each certified window is checked end to end before it is appended::

    payload ─ decode ─┬─ logged already, same attestation ─────────────────▶ duplicate
                      ├─ project terms (window grid, model, methodology) ──▶ refused:<reason>
                      ├─ quorum certificate (k distinct members) ──────────▶ refused:certificate:*
                      ├─ device's registry record not here yet ────────────▶ pending (kept in the
                      │                                                      DB, retried when the
                      │                                                      registry changes)
                      ├─ readings, root, count, quantity (evidence check) ─▶ refused:<reason>
                      ├─ logged already, another attestation ──────────────▶ conflicting (warning)
                      └─ append (a reading counted before: refused) ───────▶ appended

Every outcome is counted (:attr:`Ledger.certificates`, :attr:`Ledger.registry_outcomes`);
a malformed payload is counted and logged, never raised. Only :class:`StoreError` (the
database is down) propagates, so the ingest can leave the message unacknowledged and retry.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from ledger.offline import terms_problem
from ledger.store import AppendRefused, LedgerStore, StoreError
from senken_core.errors import SenkenError
from senken_core.evidence import CertifiedWindow, EvidenceError, check_certified_window
from senken_core.network import NetworkConfig
from senken_core.quorum import CertificateError, verify_certificate
from senken_core.reading import Reading
from senken_core.registry import (
    DeviceRecord,
    DeviceRegistry,
    RegistryError,
    SignedDeviceRecord,
)
from senken_core.topics import parse_validator_topic

__all__ = ["Ledger", "Outcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one certificate payload. ``result``: appended, duplicate, conflicting,
    pending or refused (``reason`` then says why)."""

    result: str
    reason: str | None = None
    attestation_id: bytes | None = None
    index: int | None = None
    detail: str = ""  # what was wrong, for the log

    @property
    def label(self) -> str:
        """The counter name: ``refused:<reason>`` or the result."""
        return f"{self.result}:{self.reason}" if self.result == "refused" else self.result


class Ledger:
    """Checks and logs certified windows for one network. Thread-safe (one lock: messages
    are handled one at a time)."""

    def __init__(self, network: NetworkConfig, store: LedgerStore) -> None:
        self.network = network
        self.store = store
        self.validators = network.validator_set()
        self.domain = network.domain()
        self.registry = DeviceRegistry(network.owners())
        self.certificates: Counter[str] = Counter()
        self.registry_outcomes: Counter[str] = Counter()
        self._lock = threading.RLock()  # one message at a time
        self._stats_lock = threading.Lock()  # counters, read by /metrics while a check runs
        self._prefix = network.topic_prefix

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
                        outcome.detail or "see the project's terms in the network file")

    def _certificate(self, payload: bytes, *, keep_pending: bool) -> Outcome:
        try:
            window = CertifiedWindow.from_wire(payload)
        except Exception as exc:  # an input boundary: PayloadError, or anything unforeseen
            return Outcome("refused", "malformed", detail=str(exc))
        att = window.attestation
        logged = self.store.logged(att.id)
        if logged is not None and logged.attestation_sha256 == sha256(att.to_wire()).digest():
            return Outcome("duplicate", None, att.id, logged.index)
        refusal = terms_problem(self.network, att)
        if refusal is not None:
            return Outcome("refused", refusal, att.id)
        try:
            verify_certificate(window.certificate, self.validators, self.domain)
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
        project = self.network.project(att.project)
        assert project is not None  # checked by terms_problem
        key = record.public_key
        try:
            signers = check_certified_window(
                window, self.validators, self.domain,
                lambda device: key if device == att.device else None,
                project.methodology_terms())
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
        return {"certificates": certificates, "registry": registry,
                "registry_devices": devices, "pending_certificates": pending}
