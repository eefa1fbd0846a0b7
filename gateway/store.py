"""The gateway's database (SQLModel): projects, tokens, enrollments, signed records, broker
accounts. SQLite embedded by default; PostgreSQL in production and in the tests.

Each public method is one transaction. What must be atomic is: consuming a one-time token
together with creating the enrollment (:meth:`GatewayStore.enroll`: ``UPDATE ... WHERE used =
false`` guarded by its row count, then the insert, so two requests with one token never both
pass, and a refused enrollment leaves the token unused); and storing signed records together
with the enrollment and broker-account changes they imply (:meth:`GatewayStore.apply_records`).
Unique constraints catch the races the checks cannot (two enrollments of one device id).

Secrets are stored only as SHA-256 (tokens, poll secrets) or as Mosquitto PBKDF2 hashes (broker
passwords), plus the password sealed under the device's poll secret (gateway.credentials).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

from sqlalchemy import BigInteger, Column, LargeBinary, UniqueConstraint, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from gateway.broker_files import BrokerAccount
from gateway.domain import EnrollmentStatus, PendingEnrollment, ProjectTerms
from gateway.errors import Conflict, NotAuthorised, TokenExpired, Unavailable
from senken_core.registry import DeviceRecord, SignedDeviceRecord

__all__ = [
    "AccountRow",
    "EnrollmentRow",
    "GatewayStore",
    "ProjectRow",
    "RecordChange",
    "RecordRow",
    "TokenRow",
    "make_engine",
]


def _ms() -> Any:
    return Field(sa_column=Column(BigInteger, nullable=False))


class ProjectRow(SQLModel, table=True):
    __tablename__: ClassVar[str] = "gw_project"

    project: str = Field(primary_key=True, max_length=63)
    terms_json: str
    terms_signature: str = Field(max_length=128)
    api_token_sha256: str = Field(max_length=64)
    created_at_ms: int = _ms()

    def terms(self) -> ProjectTerms:
        return ProjectTerms.from_json(json.loads(self.terms_json))


class TokenRow(SQLModel, table=True):
    __tablename__: ClassVar[str] = "gw_enrollment_token"

    token_sha256: str = Field(primary_key=True, max_length=64)
    project: str = Field(index=True, max_length=63)
    created_at_ms: int = _ms()
    expires_at_ms: int = _ms()
    used: bool = False
    used_at_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    enrollment_id: str | None = None


class EnrollmentRow(SQLModel, table=True):
    __tablename__: ClassVar[str] = "gw_enrollment"

    id: str = Field(primary_key=True, max_length=32)
    project: str = Field(default="", index=True, max_length=63)
    device: str = Field(index=True, max_length=63)
    # the device id while the enrollment holds it (pending, approved, revoked); NULL once
    # rejected. Unique: one device id, one enrollment, even under concurrent requests.
    active_device: str | None = Field(default=None, unique=True, max_length=63)
    public_key: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    location: str = ""
    calibration_date: str = ""
    technician: str = ""
    enrolled_at_ms: int = _ms()
    status: str = Field(default="pending", index=True, max_length=16)
    poll_secret_sha256: str = Field(max_length=64)
    mqtt_password_hash: str
    mqtt_password_sealed: str

    def pending(self) -> PendingEnrollment:
        return PendingEnrollment(id=self.id, project=self.project, device=self.device,
                                 public_key=bytes.fromhex(self.public_key), kind=self.kind,
                                 enrolled_at_ms=self.enrolled_at_ms, location=self.location,
                                 calibration_date=self.calibration_date,
                                 technician=self.technician)


class RecordRow(SQLModel, table=True):
    __tablename__: ClassVar[str] = "gw_device_record"
    __table_args__ = (UniqueConstraint("device", "version", name="gw_record_device_version"),)

    id: int | None = Field(default=None, primary_key=True)
    device: str = Field(index=True, max_length=63)
    project: str = Field(max_length=63)
    version: int = _ms()
    revoked: bool = False
    wire: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # False until the broker acknowledged the retained publish (the publisher retries)
    published: bool = Field(default=False, index=True)
    stored_at_ms: int = _ms()

    def signed(self) -> SignedDeviceRecord:
        return SignedDeviceRecord.from_wire(self.wire)


class AccountRow(SQLModel, table=True):
    __tablename__: ClassVar[str] = "gw_broker_account"

    username: str = Field(primary_key=True, max_length=63)
    role: str = Field(max_length=16)
    password_hash: str
    created_at_ms: int = _ms()

    def account(self) -> BrokerAccount:
        return BrokerAccount(self.username, self.role, self.password_hash)  # type: ignore[arg-type]


_TABLES = [ProjectRow, TokenRow, EnrollmentRow, RecordRow, AccountRow]


@dataclass(frozen=True, slots=True)
class RecordChange:
    """One accepted signed record and what it changes beside itself."""

    record: DeviceRecord
    wire: bytes
    enrollment_id: str | None  # the enrollment it approves or revokes
    enrollment_status: EnrollmentStatus | None
    add_account: BrokerAccount | None = None
    remove_account: str | None = None


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path``, ``sqlite://`` in memory,
    ``postgresql+psycopg://...``). Creates no tables."""
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            return create_engine(url, connect_args={"check_same_thread": False},
                                 poolclass=StaticPool)
        return create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    return create_engine(url, pool_pre_ping=True)


class GatewayStore:
    """The repository; thread-safe (one session per call)."""

    def __init__(self, engine: Engine, now_ms: Callable[[], int]) -> None:
        self.engine = engine
        self.now_ms = now_ms

    def create_tables(self) -> None:
        """Create the gateway's tables where missing (idempotent)."""
        SQLModel.metadata.create_all(self.engine,
                                     tables=[t.__table__ for t in _TABLES])  # type: ignore[attr-defined]

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                yield session
        except OperationalError as exc:
            raise Unavailable(f"database unavailable: {exc.orig}", "database") from exc

    # -- projects and tokens ---------------------------------------------------------------

    def add_project(self, terms: ProjectTerms, signature: bytes, api_token_sha256: str) -> None:
        """Raises Conflict if the project exists."""
        row = ProjectRow(project=terms.project, terms_json=json.dumps(terms.to_json()),
                         terms_signature=signature.hex(), api_token_sha256=api_token_sha256,
                         created_at_ms=self.now_ms())
        with self._session() as s:
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                raise Conflict(f"project {terms.project} is registered already",
                               "project_exists", project=terms.project) from None

    def project(self, project: str) -> ProjectRow | None:
        with self._session() as s:
            return s.get(ProjectRow, project)

    def add_tokens(self, project: str, hashes: Iterable[str], expires_at_ms: int) -> None:
        now = self.now_ms()
        with self._session() as s:
            s.add_all(TokenRow(token_sha256=h, project=project, created_at_ms=now,
                               expires_at_ms=expires_at_ms) for h in hashes)
            s.commit()

    # -- enrollments -----------------------------------------------------------------------

    def enroll(self, token_sha256: str, row: EnrollmentRow) -> EnrollmentRow:
        """Consume the token and store ``row`` (its project set from the token), atomically.

        Raises NotAuthorised (unknown token), Conflict (token used; device id taken),
        TokenExpired; in every case the token is left as it was."""
        now = self.now_ms()
        with self._session() as s:
            token = s.get(TokenRow, token_sha256)
            if token is None or token.used or token.expires_at_ms <= now:
                self._token_refusal(s, token_sha256, now)
            self._check_device_free(s, row.device)
            consumed = s.exec(
                update(TokenRow)
                .where(col(TokenRow.token_sha256) == token_sha256,
                       col(TokenRow.used).is_(False), col(TokenRow.expires_at_ms) > now)
                .values(used=True, used_at_ms=now, enrollment_id=row.id)
            )
            if consumed.rowcount != 1:  # another request consumed it since we read it
                s.rollback()
                self._token_refusal(s, token_sha256, now)
            assert token is not None
            row.project = token.project
            row.active_device = row.device
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                raise Conflict(f"device id {row.device} is taken (another enrollment holds it);"
                               " the token was not used", "device_taken",
                               device=row.device) from None
            s.refresh(row)
            return row

    @staticmethod
    def _check_device_free(s: Session, device: str) -> None:
        if s.exec(select(EnrollmentRow.id).where(
                col(EnrollmentRow.active_device) == device)).first() is not None:
            raise Conflict(f"device id {device} is enrolled already (a revoked id is never "
                           "reused: choose a new one); the token was not used",
                           "device_taken", device=device)
        if s.get(AccountRow, device) is not None or s.exec(
                select(RecordRow.id).where(col(RecordRow.device) == device)).first():
            raise Conflict(f"device id {device} is taken; the token was not used",
                           "device_taken", device=device)

    @staticmethod
    def _token_refusal(s: Session, token_sha256: str, now: int) -> NoReturn:
        token = s.get(TokenRow, token_sha256)
        if token is None:
            raise NotAuthorised("enrollment token not recognised; ask the project owner for "
                                "a new one (`senken gateway tokens`)", "token_unknown")
        if token.used:
            raise Conflict("enrollment token already used (each token enrolls one device "
                           "once); ask the project owner for a new one", "token_used")
        raise TokenExpired("enrollment token expired; ask the project owner for a new one",
                           project=token.project)

    def enrollment(self, enrollment_id: str) -> EnrollmentRow | None:
        with self._session() as s:
            return s.get(EnrollmentRow, enrollment_id)

    def enrollment_of_device(self, device: str) -> EnrollmentRow | None:
        """The enrollment holding ``device`` (pending, approved or revoked), if any."""
        with self._session() as s:
            return s.exec(select(EnrollmentRow)
                          .where(col(EnrollmentRow.active_device) == device)).first()

    def enrollments(self, project: str, status: str | None = None) -> list[EnrollmentRow]:
        with self._session() as s:
            query = select(EnrollmentRow).where(col(EnrollmentRow.project) == project)
            if status is not None:
                query = query.where(col(EnrollmentRow.status) == status)
            return list(s.exec(query.order_by(col(EnrollmentRow.enrolled_at_ms),
                                              col(EnrollmentRow.id))))

    def reject(self, project: str, enrollment_id: str) -> bool:
        """Reject a pending enrollment (its device id is free again); False if there is no
        pending enrollment with that id in the project."""
        with self._session() as s:
            done = s.exec(update(EnrollmentRow)
                          .where(col(EnrollmentRow.id) == enrollment_id,
                                 col(EnrollmentRow.project) == project,
                                 col(EnrollmentRow.status) == "pending")
                          .values(status="rejected", active_device=None))
            s.commit()
            return bool(done.rowcount == 1)

    # -- signed records --------------------------------------------------------------------

    def latest_record(self, device: str) -> RecordRow | None:
        with self._session() as s:
            return s.exec(select(RecordRow).where(col(RecordRow.device) == device)
                          .order_by(col(RecordRow.version).desc())).first()

    def apply_records(self, changes: Iterable[RecordChange]) -> None:
        """Store the records and apply their enrollment and account changes, all or nothing.
        Raises Conflict if a concurrent request stored the same version first."""
        now = self.now_ms()
        with self._session() as s:
            for change in changes:
                r = change.record
                s.add(RecordRow(device=r.device, project=r.project, version=r.version,
                                revoked=r.revoked, wire=change.wire, stored_at_ms=now))
                if change.enrollment_id is not None and change.enrollment_status is not None:
                    s.exec(update(EnrollmentRow)
                           .where(col(EnrollmentRow.id) == change.enrollment_id)
                           .values(status=change.enrollment_status))
                if change.add_account is not None:
                    a = change.add_account
                    s.add(AccountRow(username=a.username, role=a.role,
                                     password_hash=a.password_hash, created_at_ms=now))
                if change.remove_account is not None:
                    held = s.get(AccountRow, change.remove_account)
                    if held is not None and held.role == "device":
                        s.delete(held)
                s.flush()
            try:
                s.commit()
            except IntegrityError:
                raise Conflict("a record of that version (or a broker account of that name) "
                               "was stored meanwhile; fetch the device again",
                               "stale_version") from None

    def unpublished(self) -> list[RecordRow]:
        """For each device with an unpublished record, its latest record (oldest change
        first): only the latest version matters on a retained topic."""
        with self._session() as s:
            rows = s.exec(select(RecordRow).where(col(RecordRow.published).is_(False))
                          .order_by(col(RecordRow.id))).all()
            latest: dict[str, RecordRow] = {}
            for row in rows:
                held = latest.get(row.device)
                if held is None or row.version > held.version:
                    latest[row.device] = row
            newest = {device: s.exec(select(RecordRow).where(col(RecordRow.device) == device)
                                     .order_by(col(RecordRow.version).desc())).first()
                      for device in latest}
            return sorted((r for r in newest.values() if r is not None),
                          key=lambda r: r.id or 0)

    def mark_published(self, device: str, version: int) -> None:
        """Mark ``device``'s records up to ``version`` published (idempotent)."""
        with self._session() as s:
            s.exec(update(RecordRow).where(col(RecordRow.device) == device,
                                           col(RecordRow.version) <= version)
                   .values(published=True))
            s.commit()

    # -- broker accounts -------------------------------------------------------------------

    def accounts(self) -> list[BrokerAccount]:
        with self._session() as s:
            return [row.account() for row in s.exec(select(AccountRow)
                                                    .order_by(col(AccountRow.username)))]

    def put_service_account(self, account: BrokerAccount) -> bool:
        """Add a service account or replace its password; True if it was new. Raises Conflict
        when the name belongs to a device or to an account of another role."""
        if account.role == "device":
            raise ValueError("device accounts come from approved enrollments")
        with self._session() as s:
            held = s.get(AccountRow, account.username)
            if held is not None and held.role != account.role:
                raise Conflict(f"broker user {account.username} exists with role {held.role}",
                               "account_taken")
            if held is None and s.exec(select(EnrollmentRow.id).where(
                    col(EnrollmentRow.active_device) == account.username)).first():
                raise Conflict(f"{account.username} is an enrolled device's id",
                               "account_taken")
            if held is None:
                s.add(AccountRow(username=account.username, role=account.role,
                                 password_hash=account.password_hash,
                                 created_at_ms=self.now_ms()))
            else:
                held.password_hash = account.password_hash
                s.add(held)
            try:
                s.commit()
            except IntegrityError:
                raise Conflict(f"broker user {account.username} was added meanwhile",
                               "account_taken") from None
            return held is None

    def remove_service_account(self, username: str) -> bool:
        with self._session() as s:
            held = s.get(AccountRow, username)
            if held is None or held.role == "device":
                return False
            s.delete(held)
            s.commit()
            return True
