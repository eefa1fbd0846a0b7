"""The ledger's tables (SQLModel, in a metadata of their own).

The hash-chained log (``ledger_log``) is the record; every other table is derived from it in
the same transaction (attestations, readings) or is the ledger's working state (registry
records, certificates waiting for their device's record, the time-series export cursor, the
minting of each logged attestation), or mirrors the chain (credit events, its cursor).
``verify_log`` recomputes the chain and checks the derived rows against the evidence.

Integers that can pass 2**31 are BIGINT. The attestation's 64-bit unsigned fields are stored
as signed BIGINT: the ledger refuses a certificate with a value at or above 2**63
(``out_of_range``; 2**63 mg is 9.2 million t CO2e in one window), so no value is ever wrapped.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, Table, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

__all__ = ["AttestationRow", "ChainCursor", "ChainEventRow", "CreditBatchRow", "CreditMintRow",
           "CreditRetirementRow", "CreditTransferRow", "LedgerBase", "LogEntry", "LogHead",
           "MintRow", "PendingCertificate", "ReadingRow", "RegistryRow", "TsCursor",
           "attestation_table", "chain_cursor_table", "chain_event_table", "credit_batch_table",
           "credit_mint_table", "credit_retirement_table", "credit_transfer_table",
           "cursor_table", "head_table", "log_table", "mint_table", "pending_table",
           "reading_table", "registry_table"]

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


# -- minting (ledger/minting.py) and the chain's events (ledger/chain_mirror.py) -----------
#
# On-chain integers that are uint256 (amounts, units, token ids) do not fit BIGINT: amounts
# are decimal text, token ids 0x + 64 hex digits, addresses checksummed 0x text.


class MintRow(LedgerBase, table=True):
    """The minting of one logged attestation: the ledger's own durable record, written before
    every broadcast, so a restart knows what may be on its way to the chain.

    ``state``: ``queued`` (to send), ``sent`` (``tx_hash`` with ``nonce`` broadcast or about to
    be), ``minted`` (the chain says so: ``token_id``, ``units``, ``block_number``), ``failed``
    (the contract refused it: ``error`` is the custom error's name, ``detail`` its arguments).
    """

    __tablename__ = "ledger_mint"
    __table_args__ = (Index("ix_ledger_mint_state_log", "state", "log_index"),)

    attestation_id: bytes = Field(primary_key=True)
    log_index: int = Field(sa_type=BigInteger, unique=True)
    state: str
    tx_hash: bytes | None = None
    nonce: int | None = Field(default=None, sa_type=BigInteger)
    gas: int | None = Field(default=None, sa_type=BigInteger)
    fee_cap_wei: int | None = Field(default=None, sa_type=BigInteger)  # max fee or gas price
    fee_level: int = 0  # replacements so far (each bumps the fee)
    attempts: int = 0  # broadcasts of this row (first sends, replacements, re-sends)
    gas_bumps: int = 0  # out-of-gas retries so far (each doubles the gas margin)
    token_id: str | None = None
    units: str | None = None
    block_number: int | None = Field(default=None, sa_type=BigInteger)
    error: str | None = None
    detail: str | None = None
    created_at_ms: int = Field(sa_type=BigInteger)
    updated_at_ms: int = Field(sa_type=BigInteger)
    sent_at_ms: int | None = Field(default=None, sa_type=BigInteger)
    next_attempt_ms: int = Field(default=0, sa_type=BigInteger)


class ChainCursor(LedgerBase, table=True):
    """The event mirror's position (row id 1): the next block to read."""

    __tablename__ = "ledger_chain_cursor"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    next_block: int = Field(sa_type=BigInteger)


class CreditMintRow(LedgerBase, table=True):
    """An ``AttestationMinted`` event of the credit contract."""

    __tablename__ = "ledger_credit_mint"
    __table_args__ = (UniqueConstraint("tx_hash", "log_index", name="uq_ledger_credit_mint_log"),)

    id: int | None = Field(default=None, sa_type=_ROW_ID, primary_key=True)
    block_number: int = Field(sa_type=BigInteger, index=True)
    tx_hash: bytes
    log_index: int = Field(sa_type=BigInteger)
    attestation_id: bytes = Field(index=True)
    token_id: str
    owner: str = Field(index=True)
    units: str
    remainder_mg: str
    validator_epoch: str
    project: str = Field(index=True)
    device: str
    window_start: int = Field(sa_type=BigInteger)
    window_seconds: int = Field(sa_type=BigInteger)
    methodology: str
    quantity: str
    co2e_mg: str


class CreditTransferRow(LedgerBase, table=True):
    """One (id, amount) of an ERC-1155 ``TransferSingle`` or ``TransferBatch`` (``item``:
    its position in the batch); a mint comes from, a burn goes to, the zero address."""

    __tablename__ = "ledger_credit_transfer"
    __table_args__ = (UniqueConstraint("tx_hash", "log_index", "item",
                                       name="uq_ledger_credit_transfer_log"),)

    id: int | None = Field(default=None, sa_type=_ROW_ID, primary_key=True)
    block_number: int = Field(sa_type=BigInteger, index=True)
    tx_hash: bytes
    log_index: int = Field(sa_type=BigInteger)
    item: int = 0
    operator: str
    from_address: str = Field(index=True)
    to_address: str = Field(index=True)
    token_id: str
    amount: str


class CreditRetirementRow(LedgerBase, table=True):
    """A ``Retired`` event: credits burned for a beneficiary."""

    __tablename__ = "ledger_credit_retirement"
    __table_args__ = (UniqueConstraint("tx_hash", "log_index",
                                       name="uq_ledger_credit_retirement_log"),)

    id: int | None = Field(default=None, sa_type=_ROW_ID, primary_key=True)
    block_number: int = Field(sa_type=BigInteger, index=True)
    tx_hash: bytes
    log_index: int = Field(sa_type=BigInteger)
    retirement_id: str
    holder: str = Field(index=True)
    token_id: str
    amount: str
    beneficiary: str
    reason: str
    jurisdiction: str
    timestamp: int = Field(sa_type=BigInteger)


class CreditBatchRow(LedgerBase, table=True):
    """A ``BatchCreated`` event: a token id's project, vintage and methodology."""

    __tablename__ = "ledger_credit_batch"
    __table_args__ = (UniqueConstraint("tx_hash", "log_index",
                                       name="uq_ledger_credit_batch_log"),)

    id: int | None = Field(default=None, sa_type=_ROW_ID, primary_key=True)
    block_number: int = Field(sa_type=BigInteger, index=True)
    tx_hash: bytes
    log_index: int = Field(sa_type=BigInteger)
    token_id: str = Field(index=True)
    project: str
    vintage: int
    methodology: str


class ChainEventRow(LedgerBase, table=True):
    """Any other event of Senken's contracts (validator set, project registry, governor,
    timelock, governance hand-overs), its arguments as JSON."""

    __tablename__ = "ledger_chain_event"
    __table_args__ = (UniqueConstraint("tx_hash", "log_index", name="uq_ledger_chain_event_log"),
                      Index("ix_ledger_chain_event_contract_event", "contract", "event"))

    id: int | None = Field(default=None, sa_type=_ROW_ID, primary_key=True)
    block_number: int = Field(sa_type=BigInteger, index=True)
    tx_hash: bytes
    log_index: int = Field(sa_type=BigInteger)
    contract: str
    address: str
    event: str
    args: str  # JSON: bytes as 0x hex, integers above 2**53 as decimal strings


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
mint_table = _table(MintRow)
chain_cursor_table = _table(ChainCursor)
credit_mint_table = _table(CreditMintRow)
credit_transfer_table = _table(CreditTransferRow)
credit_retirement_table = _table(CreditRetirementRow)
credit_batch_table = _table(CreditBatchRow)
chain_event_table = _table(ChainEventRow)
