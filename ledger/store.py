"""The ledger's store: a hash-chained, append-only log of certified windows in SQL.

Embedded default: SQLite in WAL mode (``sqlite:///<state_dir>/ledger.db``); production:
PostgreSQL (``postgresql://...``, driver psycopg 3). The tables are in :mod:`ledger.tables`,
the chain rule in :mod:`ledger.chain`.

Appending is **idempotent**: a certified window whose attestation id is logged already is a
no-op returning the existing index, whatever its signatures (a different attestation for a
logged window is a no-op too, reported ``conflicting``). Appends are serialised on the head
row (PostgreSQL ``SELECT ... FOR UPDATE``; SQLite ``BEGIN IMMEDIATE``), and the entry index is
the primary key, so two processes or threads appending at once never fork the chain: the loser
of a race waits for the winner, or fails on a unique constraint and retries.

Everything else an entry implies (its attestation row, one row per reading) is written in the
same transaction; ``UNIQUE(device, seq)`` on the readings means no reading is ever counted
twice, and :meth:`LedgerStore.append` refuses a window with a reading counted before
(:class:`AppendRefused`, reason ``reading_counted``).

Errors::

    SenkenError
    ├── AppendRefused   a window the log will not take (.reason, .attestation_id)
    └── StoreError      the database is unreachable or failing (retry later)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from ledger.chain import GENESIS_HASH, entry_hash
from ledger.tables import (
    LedgerBase,
    attestation_table,
    cursor_table,
    head_table,
    log_table,
    pending_table,
    reading_table,
    registry_table,
)
from senken_core.errors import PayloadError, SenkenError
from senken_core.evidence import CertifiedWindow
from senken_core.reading import Reading

__all__ = ["AppendRefused", "AppendResult", "LedgerStore", "LogReport", "LoggedEntry",
           "StoreError", "sqlite_url"]

log = logging.getLogger(__name__)

_I63 = 2**63
_RETRIES = 8
_SEQ_CHUNK = 500  # (device, seq) look-ups per statement: under SQLite's variable limit
_VERIFY_BATCH = 200


class AppendRefused(SenkenError):
    """A certified window the log refuses; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str, attestation_id: bytes) -> None:
        super().__init__(message)
        self.reason = reason
        self.attestation_id = attestation_id


class StoreError(SenkenError):
    """The database failed (unreachable, locked too long, disk full): nothing was written."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where the window is in the log; ``appended`` False when it was there already, and
    ``conflicting`` when the logged attestation for its id differs from the one given."""

    index: int
    appended: bool
    conflicting: bool = False


@dataclass(frozen=True, slots=True)
class LoggedEntry:
    index: int
    attestation_sha256: bytes


@dataclass(frozen=True, slots=True)
class LogReport:
    """What :meth:`LedgerStore.verify_log` found: ``first_bad_index`` None if all holds."""

    entries: int
    head_hash: bytes
    first_bad_index: int | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad_index is None

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.entries} entries, head {self.head_hash.hex()}"
        return f"FAILED at entry {self.first_bad_index}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "head_hash": self.head_hash.hex(),
                "first_bad_index": self.first_bad_index, "reason": self.reason}


def sqlite_url(path: Path) -> str:
    """The URL of the embedded database at ``path``."""
    return f"sqlite:///{path}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _values_json(reading: Reading) -> str:
    return json.dumps(dict(reading.values), separators=(",", ":"))


def _attestation_fields_ok(row: Any, window: CertifiedWindow) -> bool:
    att = window.attestation
    return (row.project, row.device, row.window_start, row.window_seconds, row.methodology,
            row.methodology_version, row.readings_accepted, row.readings_rejected,
            row.quantity, row.co2e_mg, bytes(row.readings_root), bytes(row.model_hash)) == (
        att.project, att.device, att.window_start, att.window_seconds, att.methodology,
        att.methodology_version, att.readings_accepted, att.readings_rejected, att.quantity,
        att.co2e_mg, att.readings_root, att.model_hash)


class LedgerStore:
    """The log and its derived tables. Thread-safe (one SQLAlchemy engine, a pool of
    connections); every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(ledger_write=True)
        self._lock = threading.Lock()  # one appender per process; other processes: the DB

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, create: bool = True, echo: bool = False) -> LedgerStore:
        """Open the database at ``url`` (``sqlite:///...`` or ``postgresql://...``) and, with
        ``create``, create the tables that are missing. Raises :class:`StoreError`."""
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
        if backend == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                path = Path(parsed.database).expanduser()
                if not create and not path.exists():
                    raise StoreError(f"no ledger database at {path}; `senken ledger run` "
                                     "creates it")
                path.parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        elif backend == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
        elif backend != "postgresql":
            raise StoreError(f"database URL {parsed.render_as_string()}: only sqlite:/// and "
                             "postgresql:// databases are supported")
        engine = create_engine(parsed, **kwargs)
        if backend == "sqlite":
            _sqlite_setup(engine)
        store = cls(engine)
        if create:
            store.create_schema()
        return store

    def create_schema(self) -> None:
        """Create missing tables and the head row (idempotent). Raises StoreError."""
        try:
            LedgerBase.metadata.create_all(self.engine)
            with self._writer.begin() as conn:
                if conn.execute(select(head_table).where(head_table.c.id == 1)).first() is None:
                    conn.execute(insert(head_table).values(id=1, size=0, head_hash=GENESIS_HASH))
        except IntegrityError:
            pass  # another process created the head row first
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the ledger database: {_brief(exc)}") from exc

    def close(self) -> None:
        self.engine.dispose()

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def ping(self) -> bool:
        """True if the database answers."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    # -- the log --------------------------------------------------------------------------

    def head(self) -> tuple[int, bytes]:
        """``(size, head hash)``; the genesis hash (32 zero bytes) for an empty log."""
        with self.connection() as conn:
            row = conn.execute(select(head_table.c.size, head_table.c.head_hash)
                               .where(head_table.c.id == 1)).one()
            return int(row.size), bytes(row.head_hash)

    def logged(self, attestation_id: bytes) -> LoggedEntry | None:
        """The entry logging ``attestation_id``, or None."""
        with self.connection() as conn:
            row = conn.execute(select(log_table.c["index"], log_table.c.attestation_sha256)
                               .where(log_table.c.attestation_id == attestation_id)).first()
        return None if row is None else LoggedEntry(int(row[0]), bytes(row[1]))

    def evidence(self, attestation_id: bytes) -> bytes | None:
        """The logged evidence (``CertifiedWindow.to_wire()``) for ``attestation_id``."""
        with self.connection() as conn:
            value = conn.execute(select(log_table.c.evidence)
                                 .where(log_table.c.attestation_id == attestation_id)).scalar()
        return None if value is None else bytes(value)

    def append(self, window: CertifiedWindow, signers: Sequence[bytes] = (),
               readings: Sequence[Reading] | None = None,
               now_ms: int | None = None) -> AppendResult:
        """Append ``window`` (already checked: see ``Ledger``) to the log; idempotent.

        ``signers``: the certificate's signer addresses; ``readings``: ``window.readings``
        decoded (decoded here when None). Returns the entry's index and whether it was added.
        Raises :class:`AppendRefused` (``reading_counted``: a reading of the window is counted
        under another attestation; ``out_of_range``: a value at or above 2**63) and
        :class:`StoreError`; either way nothing is written.
        """
        att = window.attestation
        for name in ("window_start", "quantity", "co2e_mg"):
            if getattr(att, name) >= _I63:
                raise AppendRefused("out_of_range", f"{name} {getattr(att, name)} is beyond "
                                    "what the ledger stores (2**63 - 1)", att.id)
        if readings is None:
            try:
                readings = [Reading.from_canonical(r.body) for r in window.readings]
            except SenkenError as exc:
                raise AppendRefused("bad_reading", str(exc), att.id) from None
        evidence = window.to_wire()
        att_sha = sha256(att.to_wire()).digest()
        signer_json = json.dumps(["0x" + s.hex() for s in sorted(signers)])
        stamp = _now_ms() if now_ms is None else now_ms
        for attempt in range(_RETRIES):
            try:
                with self._lock, self._writer.begin() as conn:
                    return self._append_once(conn, window, readings, evidence, att_sha,
                                             signer_json, stamp)
            except (IntegrityError, OperationalError) as exc:
                # a concurrent appender won a race (unique index, primary key) or the
                # database was busy: redo the transaction from the new head
                if attempt == _RETRIES - 1:
                    raise StoreError(f"append of {att.id.hex()} failed after {_RETRIES} "
                                     f"attempts: {_brief(exc)}") from exc
                log.debug("append retry %d: %s", attempt + 1, _brief(exc))
                time.sleep(0.01 * 2**attempt)
            except DBAPIError as exc:
                raise StoreError(f"append of {att.id.hex()}: {_brief(exc)}") from exc
        raise AssertionError("unreachable")

    def _append_once(self, conn: Connection, window: CertifiedWindow,
                     readings: Sequence[Reading], evidence: bytes, att_sha: bytes,
                     signer_json: str, stamp: int) -> AppendResult:
        att = window.attestation
        head = conn.execute(select(head_table.c.size, head_table.c.head_hash)
                            .where(head_table.c.id == 1).with_for_update()).one()
        existing = conn.execute(select(log_table.c["index"], log_table.c.attestation_sha256)
                                .where(log_table.c.attestation_id == att.id)).first()
        if existing is not None:
            return AppendResult(int(existing[0]), False,
                                conflicting=bytes(existing.attestation_sha256) != att_sha)
        seqs = [r.seq for r in readings]
        for start in range(0, len(seqs), _SEQ_CHUNK):
            clash = conn.execute(
                select(reading_table.c.seq, reading_table.c.attestation_id)
                .where(reading_table.c.device == att.device,
                       reading_table.c.seq.in_(seqs[start:start + _SEQ_CHUNK])).limit(1)).first()
            if clash is not None:
                raise AppendRefused(
                    "reading_counted", f"reading {att.device}#{clash.seq} is counted already "
                    f"under attestation {bytes(clash.attestation_id).hex()}", att.id)
        index, prev = int(head.size), bytes(head.head_hash)
        digest = entry_hash(prev, index, evidence)
        conn.execute(insert(log_table).values(
            index=index, attestation_id=att.id, attestation_sha256=att_sha, prev_hash=prev,
            entry_hash=digest, evidence=evidence, appended_at_ms=stamp))
        conn.execute(insert(attestation_table).values(
            id=att.id, project=att.project, device=att.device, window_start=att.window_start,
            window_seconds=att.window_seconds, methodology=att.methodology,
            methodology_version=att.methodology_version,
            readings_accepted=att.readings_accepted, readings_rejected=att.readings_rejected,
            quantity=att.quantity, co2e_mg=att.co2e_mg, readings_root=att.readings_root,
            model_hash=att.model_hash, signers=signer_json, log_index=index,
            appended_at_ms=stamp))
        if readings:
            conn.execute(insert(reading_table), [
                {"attestation_id": att.id, "leaf_index": i, "device": r.device, "seq": r.seq,
                 "ts_ms": r.ts_ms, "kind": r.kind, "values": _values_json(r),
                 "anomaly_ppm": r.anomaly_ppm, "body": signed.body,
                 "signature": signed.signature}
                for i, (r, signed) in enumerate(zip(readings, window.readings, strict=True))])
        conn.execute(update(head_table).where(head_table.c.id == 1)
                     .values(size=index + 1, head_hash=digest))
        return AppendResult(index, True)

    def verify_log(self) -> LogReport:
        """Recompute the chain from genesis and check every entry: its index, ``prev_hash`` and
        ``entry_hash``; that its evidence decodes to a certified window of its attestation id;
        that its attestation row and reading rows are the evidence's; that the head row names
        the last entry. Reports the first entry that fails (a missing entry: its index).

        Reads one snapshot (a single read transaction; REPEATABLE READ on PostgreSQL), so
        appends made meanwhile are neither seen nor mistaken for damage."""
        expected_prev, n = GENESIS_HASH, 0
        with self.connection() as conn:
            if self.backend == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            head = conn.execute(select(head_table.c.size, head_table.c.head_hash)
                                .where(head_table.c.id == 1)).one()
            size, head_hash = int(head.size), bytes(head.head_hash)
            while True:
                rows = conn.execute(select(log_table).where(log_table.c["index"] >= n)
                                    .order_by(log_table.c["index"]).limit(_VERIFY_BATCH)).all()
                if not rows:
                    break
                for row in rows:
                    problem = self._entry_problem(conn, row, n, expected_prev)
                    if problem is not None:
                        return LogReport(n, expected_prev, n, problem)
                    expected_prev = bytes(row.entry_hash)
                    n += 1
        if size != n or head_hash != expected_prev:
            return LogReport(n, expected_prev, min(n, size),
                             f"the head row says {size} entries ending in {head_hash.hex()}; "
                             f"the log has {n} ending in {expected_prev.hex()}")
        return LogReport(n, expected_prev, None)

    @staticmethod
    def _entry_problem(conn: Connection, row: Any, n: int, prev: bytes) -> str | None:
        if row.index != n:
            return f"entry {n} is missing (next is {row.index})"
        if bytes(row.prev_hash) != prev:
            return "prev_hash is not the previous entry's hash"
        evidence = bytes(row.evidence)
        if entry_hash(prev, n, evidence) != bytes(row.entry_hash):
            return "entry_hash does not match its evidence"
        try:
            window = CertifiedWindow.from_wire(evidence)
        except PayloadError as exc:
            return f"the evidence does not decode: {exc}"
        att = window.attestation
        if att.id != bytes(row.attestation_id):
            return "the evidence is for another attestation id"
        if sha256(att.to_wire()).digest() != bytes(row.attestation_sha256):
            return "attestation_sha256 does not match the evidence"
        att_row = conn.execute(select(attestation_table)
                               .where(attestation_table.c.id == att.id)).first()
        if att_row is None or att_row.log_index != n or not _attestation_fields_ok(att_row,
                                                                                  window):
            return "the attestation row differs from the evidence"
        stored = conn.execute(select(reading_table.c.body, reading_table.c.signature)
                              .where(reading_table.c.attestation_id == att.id)
                              .order_by(reading_table.c.leaf_index)).all()
        if [(bytes(b), bytes(s)) for b, s in stored] != [(r.body, r.signature)
                                                         for r in window.readings]:
            return "the reading rows differ from the evidence"
        return None

    # -- registry records ------------------------------------------------------------------

    def save_registry(self, device: str, project: str, record_wire: bytes, version: int,
                      revoked: bool) -> None:
        """Keep the newest signed record applied for ``device`` (replaces the one held)."""
        values = {"project": project, "record": record_wire, "version": version,
                  "revoked": revoked}
        with self._writing() as conn:
            done = conn.execute(update(registry_table).where(registry_table.c.device == device)
                                .values(**values)).rowcount
            if not done:
                conn.execute(insert(registry_table).values(device=device, **values))

    def registry_records(self) -> list[bytes]:
        """Every signed record held (wire bytes), one per device."""
        with self.connection() as conn:
            return [bytes(r) for r in conn.execute(select(registry_table.c.record)
                                                   .order_by(registry_table.c.device)).scalars()]

    def registry_record(self, device: str) -> bytes | None:
        with self.connection() as conn:
            value = conn.execute(select(registry_table.c.record)
                                 .where(registry_table.c.device == device)).scalar()
        return None if value is None else bytes(value)

    # -- certificates waiting for their device's record ------------------------------------

    def add_pending(self, device: str, payload: bytes, now_ms: int | None = None) -> bool:
        """Keep ``payload`` until ``device``'s record arrives; False if kept already."""
        try:
            with self._writing() as conn:
                conn.execute(insert(pending_table).values(
                    device=device, payload_sha256=sha256(payload).digest(), payload=payload,
                    received_at_ms=_now_ms() if now_ms is None else now_ms))
            return True
        except IntegrityError:
            return False

    def pending(self, device: str | None = None) -> list[tuple[int, bytes]]:
        """``(id, payload)`` of the waiting certificates (of ``device``), oldest first."""
        query = select(pending_table.c.id, pending_table.c.payload)
        if device is not None:
            query = query.where(pending_table.c.device == device)
        with self.connection() as conn:
            return [(int(i), bytes(p)) for i, p in conn.execute(
                query.order_by(pending_table.c.id)).all()]

    def remove_pending(self, ids: Sequence[int]) -> None:
        if ids:
            with self._writing() as conn:
                conn.execute(delete(pending_table).where(pending_table.c.id.in_(ids)))

    def pending_count(self) -> int:
        with self.connection() as conn:
            return int(conn.execute(select(func.count()).select_from(pending_table))
                       .scalar_one())

    # -- the time-series exporter's cursor -------------------------------------------------

    def load_cursor(self) -> int:
        with self.connection() as conn:
            value = conn.execute(select(cursor_table.c.cursor)
                                 .where(cursor_table.c.id == 1)).scalar()
        return 0 if value is None else int(value)

    def save_cursor(self, cursor: int) -> None:
        with self._writing() as conn:
            if not conn.execute(update(cursor_table).where(cursor_table.c.id == 1)
                                .values(cursor=cursor)).rowcount:
                conn.execute(insert(cursor_table).values(id=1, cursor=cursor))

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(f"ledger database: {_brief(exc)}") from exc

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction (SQLite: ``BEGIN IMMEDIATE``), committed when the block ends,
        for the ledger's other tables (``ledger.credit_store``). Raises StoreError (and
        IntegrityError, for the caller to judge)."""
        with self._writing() as conn:
            yield conn

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        try:
            with self._writer.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(f"ledger database: {_brief(exc)}") from exc


def _brief(exc: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's statement dump."""
    inner = getattr(exc, "orig", None) or exc
    return str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__


def _sqlite_setup(engine: Engine) -> None:
    """WAL, full fsync on commit, and writes that take the lock up front (BEGIN IMMEDIATE), so
    two appenders queue on the busy timeout instead of failing an upgrade from a read."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN (below), not pysqlite
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("ledger_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
