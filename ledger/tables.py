"""The ledger's tables (SQLModel, in a metadata of their own).

The hash-chained log (``ledger_log``) is the record; every other table is derived from it in
the same transaction (attestations, readings) or is the ledger's working state (registry
records, certificates waiting for their device's record, the time-series export cursor).
``verify_log`` recomputes the chain and checks the derived rows against the evidence.

Integers that can pass 2**31 are BIGINT. The attestation's 64-bit unsigned fields are stored
as signed BIGINT: the ledger refuses a certificate with a value at or above 2**63
(``out_of_range``; 2**63 mg is 9.2 million t CO2e in one window), so no value is ever wrapped.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, Table, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

__all__ = ["AttestationRow", "LedgerBase", "LogEntry", "LogHead", "PendingCertificate",
           "ReadingRow", "RegistryRow", "TsCursor", "attestation_table",
           "cursor_table", "head_table", "log_table", "pending_table", "reading_table",
           "registry_table"]

# BIGINT that is still SQLite's rowid alias (INTEGER PRIMARY KEY) where it autoincrements
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")


class LedgerBase(SQLModel, registry=registry()):
    """Base of the ledger's tables: their own metadata, so no other component's tables (or a
    test's) ever share it."""


class LogEntry(LedgerBase, table=True):
    """One certified window in the append-only log.

    ``entry_hash = sha256(prev_hash || index as 8-byte big-endian || sha256(evidence))``;
    ``evidence`` is ``CertifiedWindow.to_wire()``, the bytes a buyer verifies offline.
    """

    __tablename__ = "ledger_log"

    index: int = Field(sa_type=BigInteger, primary_key=True,
                       sa_column_kwargs={"autoincrement": False})
    attestation_id: bytes = Field(unique=True)
    attestation_sha256: bytes  # sha256 of the attestation's wire bytes: tells a duplicate
    # (same attestation, perhaps other signatures) from a conflicting one in one look-up
    prev_hash: bytes
    entry_hash: bytes
    evidence: bytes
    appended_at_ms: int = Field(sa_type=BigInteger)


class LogHead(LedgerBase, table=True):
    """The one row (id 1) naming the log's size and last hash; appenders lock it (PostgreSQL
    ``SELECT ... FOR UPDATE``, SQLite ``BEGIN IMMEDIATE``) so they never fork the chain."""

    __tablename__ = "ledger_head"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    size: int = Field(sa_type=BigInteger)
    head_hash: bytes


class AttestationRow(LedgerBase, table=True):
    """A logged attestation's fields, for queries (the log entry holds the same, signed)."""

    __tablename__ = "ledger_attestation"
    __table_args__ = (Index("ix_ledger_attestation_project_window", "project", "window_start"),
                      Index("ix_ledger_attestation_device_window", "device", "window_start"))

    id: bytes = Field(primary_key=True)
    project: str
    device: str
    window_start: int = Field(sa_type=BigInteger)
    window_seconds: int = Field(sa_type=BigInteger)
    methodology: str
    methodology_version: int = Field(sa_type=BigInteger)
    readings_accepted: int = Field(sa_type=BigInteger)
    readings_rejected: int = Field(sa_type=BigInteger)
    quantity: int = Field(sa_type=BigInteger)
    co2e_mg: int = Field(sa_type=BigInteger)
    readings_root: bytes
    model_hash: bytes
    signers: str  # JSON list of 0x addresses, sorted
    log_index: int = Field(sa_type=BigInteger, unique=True)
    appended_at_ms: int = Field(sa_type=BigInteger)


class ReadingRow(LedgerBase, table=True):
    """One reading a logged attestation counted; ``(device, seq)`` is unique: no reading is
    counted twice, whichever windows claim it."""

    __tablename__ = "ledger_reading"
    __table_args__ = (UniqueConstraint("device", "seq", name="uq_ledger_reading_device_seq"),
                      Index("ix_ledger_reading_attestation_leaf", "attestation_id",
                            "leaf_index"),
                      Index("ix_ledger_reading_device_ts", "device", "ts_ms"))

    id: int | None = Field(default=None, sa_type=_ROW_ID, primary_key=True)
    attestation_id: bytes
    leaf_index: int = Field(sa_type=BigInteger)
    device: str
    seq: int = Field(sa_type=BigInteger)
    ts_ms: int = Field(sa_type=BigInteger)
    kind: str
    values: str  # JSON object channel -> integer
    anomaly_ppm: int = Field(sa_type=BigInteger)
    body: bytes  # the signed canonical bytes (the Merkle leaf)
    signature: bytes


class RegistryRow(LedgerBase, table=True):
    """The newest owner-signed record the ledger applied for a device."""

    __tablename__ = "ledger_registry"

    device: str = Field(primary_key=True)
    project: str
    record: bytes  # SignedDeviceRecord.to_wire()
    version: int = Field(sa_type=BigInteger)
    revoked: bool


class PendingCertificate(LedgerBase, table=True):
    """A certificate that arrived before its device's registry record; retried whenever the
    registry changes (``payload_sha256`` unique: a redelivery is kept once)."""

    __tablename__ = "ledger_pending"

    id: int | None = Field(default=None, sa_type=_ROW_ID, primary_key=True)
    device: str = Field(index=True)
    payload_sha256: bytes = Field(unique=True)
    payload: bytes
    received_at_ms: int = Field(sa_type=BigInteger)


class TsCursor(LedgerBase, table=True):
    """The time-series exporter's position (row id 1): the next log index to export."""

    __tablename__ = "ledger_ts_cursor"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    cursor: int = Field(sa_type=BigInteger)


def _table(model: type[LedgerBase]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


# The Core tables, for statements (typed columns: ``reading_table.c.seq``; ``c["values"]`` and
# ``c["index"]`` where a column's name is also a method of the column collection).
log_table = _table(LogEntry)
head_table = _table(LogHead)
attestation_table = _table(AttestationRow)
reading_table = _table(ReadingRow)
registry_table = _table(RegistryRow)
pending_table = _table(PendingCertificate)
cursor_table = _table(TsCursor)
