"""The gateway's use cases: register projects, issue tokens, enroll devices, accept the owner's
signed records, revoke, and keep the broker's accounts in step. No HTTP, no SQL, no MQTT here:
the store, the broker and the publisher are passed in (gateway.ports).

Trust: the gateway authenticates callers (admin token, owner API token, enrollment token, poll
secret) but is trusted with nothing that validators rely on. A device enters the registry only
through a record signed by its project's owner key; the gateway checks that signature against
the owner key the project was registered with, and applies the same rules as every validator
(:class:`senken_core.registry.DeviceRegistry`) before storing and publishing it.

Enrollment, step by step (docs/gateway.md)::

    technician  POST /v1/enrollments {token, device, public_key, ...}
                -> token consumed, enrollment pending, poll secret returned
    owner       GET  pending enrollments -> sign DeviceRecord(version 1) for each
                POST signed records
    gateway     verify, store (unpublished), add the device's broker account, rewrite the
                password/ACL files, reload Mosquitto, publish the record retained (QoS 1)
    device      GET  /v1/enrollments/{id} with its poll secret -> its broker credentials
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.broker_files import BrokerAccount, check_username, mosquitto_hash
from gateway.credentials import (
    new_password,
    new_token,
    seal_password,
    token_hash,
    token_matches,
    unseal_password,
)
from gateway.domain import PendingEnrollment, ProjectTerms
from gateway.errors import InvalidInput, NotAuthorised, NotFound, RecordRefused
from gateway.ports import BrokerControl, BrokerSync, RecordPublisher
from gateway.schemas import EnrollmentRequest, ProjectRegistration, TokenRequest
from gateway.store import EnrollmentRow, GatewayStore, ProjectRow, RecordChange, RecordRow
from senken_core.errors import SignatureError
from senken_core.registry import (
    DeviceRecord,
    DeviceRegistry,
    RegistryError,
    SignedDeviceRecord,
)

__all__ = ["BrokerInfo", "GatewayService", "RecordOutcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """What an approved device is told about the broker."""

    host: str
    port: int
    tls: bool
    topic_prefix: str
    ca_pem: str | None = None


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    device: str
    version: int
    revoked: bool
    stored: bool  # False: the very record was stored already (idempotent repost)

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "version": self.version, "revoked": self.revoked,
                "stored": self.stored}


class GatewayService:
    """Thread-safe as far as the store is (the API calls it from a thread pool)."""

    def __init__(self, store: GatewayStore, broker: BrokerControl, publisher: RecordPublisher,
                 broker_info: BrokerInfo, admin_token_sha256: str | None,
                 now_ms: Callable[[], int]) -> None:
        self.store = store
        self.broker = broker
        self.publisher = publisher
        self.broker_info = broker_info
        self.admin_token_sha256 = admin_token_sha256
        self.now_ms = now_ms

    # -- the gateway's operator and project owners -----------------------------------------

    def register_project(self, admin_token: str | None, body: ProjectRegistration) -> str:
        """Store the owner's signed terms; the project's owner API token, shown only now.
        Raises NotAuthorised, InvalidInput (signature), Conflict (project exists)."""
        if self.admin_token_sha256 is None:
            raise NotAuthorised("project registration is disabled on this gateway (no "
                                "api.admin_token_file configured)", "registration_disabled")
        if admin_token is None or not token_matches(admin_token, self.admin_token_sha256):
            raise NotAuthorised("project registration needs the gateway's admin token "
                                "(Authorization: Bearer ...)")
        terms = body.terms()
        signature = bytes.fromhex(body.terms_signature)
        try:
            terms.verify(signature)
        except SignatureError:
            raise InvalidInput("terms_signature does not verify against owner_public_key: "
                               "sign the terms with the owner key", "bad_signature",
                               project=terms.project) from None
        api_token = new_token("owner")
        self.store.add_project(terms, signature, token_hash(api_token))
        log.info("project %s registered (owner key %s)", terms.project,
                 terms.owner_public_key.hex()[:16])
        return api_token

    def authorise_owner(self, project: str, api_token: str | None) -> ProjectRow:
        """The project, if ``api_token`` is its owner API token; NotFound, NotAuthorised."""
        row = self.store.project(project)
        if row is None:
            raise NotFound(f"no project {project!r} on this gateway", "unknown_project",
                           project=project)
        if api_token is None:
            raise NotAuthorised(f"project {project}: send its owner API token "
                                "(Authorization: Bearer ...)", project=project)
        if not token_matches(api_token, row.api_token_sha256):
            raise NotAuthorised(f"not the owner API token of project {project}",
                                project=project)
        return row

    def project_terms(self, project: str, api_token: str | None) -> tuple[ProjectTerms, bytes]:
        row = self.authorise_owner(project, api_token)
        return row.terms(), bytes.fromhex(row.terms_signature)

    def issue_tokens(self, project: str, api_token: str | None,
                     request: TokenRequest) -> tuple[list[str], int]:
        """``count`` one-time enrollment tokens and their expiry (Unix ms)."""
        self.authorise_owner(project, api_token)
        tokens = [new_token("enroll") for _ in range(request.count)]
        expires_at_ms = self.now_ms() + request.ttl_seconds * 1000
        self.store.add_tokens(project, [token_hash(t) for t in tokens], expires_at_ms)
        log.info("project %s: %d enrollment token(s) issued", project, request.count)
        return tokens, expires_at_ms

    def enrollments(self, project: str, api_token: str | None,
                    status: str | None = "pending") -> list[tuple[PendingEnrollment, str]]:
        """The project's enrollments (with their status), oldest first."""
        if status is not None and status not in ("pending", "approved", "rejected", "revoked"):
            raise InvalidInput(f"status {status!r}: one of pending, approved, rejected, "
                               "revoked")
        self.authorise_owner(project, api_token)
        return [(row.pending(), row.status) for row in self.store.enrollments(project, status)]

    def reject(self, project: str, api_token: str | None, enrollment_id: str) -> None:
        self.authorise_owner(project, api_token)
        if not self.store.reject(project, enrollment_id):
            raise NotFound(f"no pending enrollment {enrollment_id} in project {project}",
                           project=project)

    def accept_records(self, project: str, api_token: str | None,
                       wires: Sequence[bytes]) -> tuple[list[RecordOutcome], BrokerSync | None]:
        """Verify and store owner-signed records, all or none; RecordRefused names the first
        bad one. Approves enrollments (version 1), revokes devices (``revoked``), updates
        the broker's accounts and wakes the publisher."""
        row = self.authorise_owner(project, api_token)
        owner = row.terms().owner_public_key
        registry = DeviceRegistry({project: owner})
        loaded: set[str] = set()
        changes: list[RecordChange] = []
        outcomes: list[RecordOutcome] = []
        for i, wire in enumerate(wires):
            try:
                signed = SignedDeviceRecord.from_wire(wire)
                record = signed.verify(owner)
            except RegistryError as exc:
                raise RecordRefused(exc.reason, f"records[{i}]: {exc}", exc.device) from None
            device = record.device
            if record.project != project:
                raise RecordRefused("wrong_project", f"records[{i}]: {device} is a record of "
                                    f"project {record.project}, posted to {project}", device)
            if device not in loaded:
                self._load_held(registry, device, project)
                loaded.add(device)
            previous = registry.lookup(device)
            try:
                changed = registry.apply(signed)
            except RegistryError as exc:
                raise RecordRefused(exc.reason, f"records[{i}]: {exc}", device) from None
            outcomes.append(RecordOutcome(device, record.version, record.revoked, changed))
            if not changed:
                continue
            enrollment = self.store.enrollment_of_device(device)
            if previous is None:
                self._check_enrollment(enrollment, record, i)
                assert enrollment is not None
                account = None if record.revoked else BrokerAccount(
                    device, "device", enrollment.mqtt_password_hash)
                changes.append(RecordChange(record, wire, enrollment.id,
                                            "revoked" if record.revoked else "approved",
                                            add_account=account))
            else:
                changes.append(RecordChange(
                    record, wire, enrollment.id if enrollment else None,
                    "revoked" if record.revoked else None,
                    remove_account=device if record.revoked else None))
        if not changes:
            return outcomes, None
        self.store.apply_records(changes)
        for change in changes:
            log.info("%s: record version %d stored%s", change.record.device,
                     change.record.version, " (revoked)" if change.record.revoked else "")
        self.publisher.wake()
        sync = None
        if any(c.add_account or c.remove_account for c in changes):
            sync = self.sync_broker()
        return outcomes, sync

    def _load_held(self, registry: DeviceRegistry, device: str, project: str) -> None:
        held = self.store.latest_record(device)
        if held is None:
            return
        if held.project != project:
            raise RecordRefused("device_taken", f"{device} is registered under project "
                                f"{held.project}", device)
        registry.apply(held.signed())

    @staticmethod
    def _check_enrollment(enrollment: EnrollmentRow | None, record: DeviceRecord,
                          i: int) -> None:
        if enrollment is None or enrollment.status != "pending" \
                or enrollment.project != record.project:
            raise RecordRefused("not_enrolled", f"records[{i}]: {record.device} has no "
                                f"pending enrollment in project {record.project}",
                                record.device)
        if enrollment.public_key != record.public_key.hex() or enrollment.kind != record.kind:
            raise RecordRefused("enrollment_mismatch", f"records[{i}]: {record.device}'s "
                                "record does not match its enrollment (public key or sensor "
                                "kind)", record.device)

    # -- devices ---------------------------------------------------------------------------

    def enroll(self, request: EnrollmentRequest) -> tuple[EnrollmentRow, str]:
        """Consume the token and create a pending enrollment; ``(enrollment, poll secret)``.
        Raises NotAuthorised / Conflict / TokenExpired (store.enroll)."""
        poll_secret = new_token("poll")
        password = new_password()
        row = EnrollmentRow(
            id=uuid.uuid4().hex, device=request.device, public_key=request.public_key,
            kind=request.kind, location=request.location,
            calibration_date=request.calibration_date, technician=request.technician,
            enrolled_at_ms=self.now_ms(), status="pending",
            poll_secret_sha256=token_hash(poll_secret),
            mqtt_password_hash=mosquitto_hash(password),
            mqtt_password_sealed=seal_password(password, poll_secret))
        row = self.store.enroll(token_hash(request.token), row)
        log.info("%s: enrollment %s pending in project %s", row.device, row.id, row.project)
        return row, poll_secret

    def enrollment_status(self, enrollment_id: str, poll_secret: str | None) -> dict[str, Any]:
        """What the enrolling device may know: the status and, once approved, its broker
        credentials (idempotent). NotFound, NotAuthorised."""
        row = self.store.enrollment(enrollment_id)
        if row is None:
            raise NotFound(f"no enrollment {enrollment_id!r}")
        if poll_secret is None or not token_matches(poll_secret, row.poll_secret_sha256):
            raise NotAuthorised("not this enrollment's poll secret", device=row.device)
        out: dict[str, Any] = {"enrollment_id": row.id, "device": row.device,
                               "project": row.project, "status": row.status}
        if row.status == "approved":
            info = self.broker_info
            out["mqtt"] = {"username": row.device,
                           "password": unseal_password(row.mqtt_password_sealed, poll_secret),
                           "host": info.host, "port": info.port, "tls": info.tls,
                           "topic_prefix": info.topic_prefix, "ca_pem": info.ca_pem}
        return out

    def device_record(self, device: str) -> RecordRow:
        """The device's latest signed record (public: it is on the broker too)."""
        row = self.store.latest_record(device)
        if row is None:
            raise NotFound(f"no registry record for device {device!r}", device=device)
        return row

    # -- the operator, on the gateway's host -----------------------------------------------

    def add_service_account(self, name: str, role: str, password: str) -> tuple[bool,
                                                                             BrokerSync]:
        """Add (or re-key) a validator, ledger or gateway broker account; InvalidInput for a
        bad name, Conflict for a name taken by a device or another role."""
        if role == "device":
            raise InvalidInput("device accounts are made by approving enrollments")
        try:
            check_username(name, role)
            account = BrokerAccount(name, role, mosquitto_hash(password))  # type: ignore[arg-type]
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        created = self.store.put_service_account(account)
        return created, self.sync_broker()

    def remove_service_account(self, name: str) -> BrokerSync:
        if not self.store.remove_service_account(name):
            raise NotFound(f"no service account {name!r}")
        return self.sync_broker()

    def sync_broker(self) -> BrokerSync:
        """Rewrite the broker's files from the store and reload it."""
        result = self.broker.sync(self.store.accounts())
        if not result.reloaded:
            log.warning("broker files written, broker not reloaded: %s", result.message)
        return result
