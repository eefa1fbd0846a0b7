"""The ledger's credit tables: the mint table (its own record of minting) and the chain's
events mirrored (mints, transfers, retirements, batches, governance), in the ledger database.

Shares the :class:`~ledger.store.LedgerStore`'s engine, so SQLite and PostgreSQL behave as for
the log. Every method is one transaction. The tables are in :mod:`ledger.tables`.

The mint table is filled from the log (:meth:`CreditStore.enqueue_logged`): every log entry at
or after the next index not yet in the table (``max(log_index) + 1``) gets a ``queued`` row, so
appending never waits for the chain and a ledger that starts minting later mints its history.
The mirror's rows for blocks ``>= from_block`` are replaced as a whole with the cursor
(:meth:`CreditStore.replace_events`), so reading the last blocks again after a re-org leaves
exactly what the chain now says.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, delete, func, insert, or_, select, update

from ledger.store import LedgerStore
from ledger.tables import (
    chain_cursor_table,
    chain_event_table,
    credit_batch_table,
    credit_mint_table,
    credit_retirement_table,
    credit_transfer_table,
    log_table,
    mint_table,
)

__all__ = ["MIRROR_TABLES", "CreditStore", "MintRecord"]

QUEUED, SENT, MINTED, FAILED = "queued", "sent", "minted", "failed"
STATES = (QUEUED, SENT, MINTED, FAILED)

MIRROR_TABLES: dict[str, Table] = {
    "mint": credit_mint_table, "transfer": credit_transfer_table,
    "retirement": credit_retirement_table, "batch": credit_batch_table,
    "event": chain_event_table,
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class MintRecord:
    """One row of the mint table (see :class:`ledger.tables.MintRow`)."""

    attestation_id: bytes
    log_index: int
    state: str
    tx_hash: bytes | None
    nonce: int | None
    gas: int | None
    fee_cap_wei: int | None
    fee_level: int
    attempts: int
    gas_bumps: int
    token_id: str | None
    units: str | None
    block_number: int | None
    error: str | None
    detail: str | None
    created_at_ms: int
    updated_at_ms: int
    sent_at_ms: int | None
    next_attempt_ms: int

    @classmethod
    def of(cls, row: Any) -> MintRecord:
        m = row._mapping
        values: dict[str, Any] = {
            k: (bytes(m[k]) if k in ("attestation_id", "tx_hash") and m[k] is not None
                else m[k]) for k in cls.__slots__}
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {
            "attestation_id": self.attestation_id.hex(), "log_index": self.log_index,
            "state": self.state, "tx_hash": self.tx_hash.hex() if self.tx_hash else None,
            "nonce": self.nonce, "attempts": self.attempts, "token_id": self.token_id,
            "units": self.units, "block_number": self.block_number, "error": self.error,
            "detail": self.detail, "updated_at_ms": self.updated_at_ms,
        }


class CreditStore:
    """The credit tables over ``store``'s database. Thread-safe."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store

    # -- the mint table ------------------------------------------------------------------

    def enqueue_logged(self, limit: int = 1000, now_ms: int | None = None) -> int:
        """Queue the next (up to ``limit``) logged attestations that have no mint row; how
        many were queued. Idempotent."""
        stamp = _now_ms() if now_ms is None else now_ms
        with self.store.transaction() as conn:
            top = conn.execute(select(func.max(mint_table.c.log_index))).scalar()
            start = 0 if top is None else int(top) + 1
            entries = conn.execute(select(log_table.c["index"], log_table.c.attestation_id)
                                   .where(log_table.c["index"] >= start)
                                   .order_by(log_table.c["index"]).limit(limit)).all()
            if entries:
                conn.execute(insert(mint_table), [
                    {"attestation_id": bytes(e[1]), "log_index": int(e[0]),
                     "state": QUEUED, "created_at_ms": stamp, "updated_at_ms": stamp,
                     "fee_level": 0, "attempts": 0, "gas_bumps": 0, "next_attempt_ms": 0}
                    for e in entries])
        return len(entries)

    def mint_rows(self, state: str, *, limit: int | None = None,
                  due_ms: int | None = None) -> list[MintRecord]:
        """Rows in ``state``, in log order; with ``due_ms`` only those whose next attempt is
        due by then."""
        query = select(mint_table).where(mint_table.c.state == state)
        if due_ms is not None:
            query = query.where(mint_table.c.next_attempt_ms <= due_ms)
        query = query.order_by(mint_table.c.log_index)
        if limit is not None:
            query = query.limit(limit)
        with self.store.connection() as conn:
            return [MintRecord.of(r) for r in conn.execute(query).all()]

    def mint_row(self, attestation_id: bytes) -> MintRecord | None:
        with self.store.connection() as conn:
            row = conn.execute(select(mint_table).where(
                mint_table.c.attestation_id == attestation_id)).first()
        return None if row is None else MintRecord.of(row)

    def update_mints(self, changes: Sequence[tuple[bytes, Mapping[str, Any]]],
                     now_ms: int | None = None) -> None:
        """Apply ``(attestation id, column values)`` changes in one transaction."""
        if not changes:
            return
        stamp = _now_ms() if now_ms is None else now_ms
        with self.store.transaction() as conn:
            for attestation_id, values in changes:
                conn.execute(update(mint_table)
                             .where(mint_table.c.attestation_id == attestation_id)
                             .values(updated_at_ms=stamp, **values))

    def mint_counts(self) -> dict[str, int]:
        """Rows per state (every state present, 0 if none)."""
        with self.store.connection() as conn:
            found: dict[str, int] = dict(conn.execute(select(mint_table.c.state, func.count())
                                      .group_by(mint_table.c.state)).all())
        return {s: int(found.get(s, 0)) for s in STATES}

    def mint_queue(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The mint table for the API, newest log entries first."""
        query = select(mint_table)
        if state is not None:
            query = query.where(mint_table.c.state == state)
        with self.store.connection() as conn:
            rows = conn.execute(query.order_by(mint_table.c.log_index.desc()).limit(limit)).all()
        return [MintRecord.of(r).to_json() for r in rows]

    def evidences(self, attestation_ids: Sequence[bytes]) -> dict[bytes, bytes]:
        """The logged evidence (``CertifiedWindow.to_wire()``) of each id that is logged."""
        out: dict[bytes, bytes] = {}
        with self.store.connection() as conn:
            for start in range(0, len(attestation_ids), 500):
                chunk = list(attestation_ids[start:start + 500])
                for att, evidence in conn.execute(
                        select(log_table.c.attestation_id, log_table.c.evidence)
                        .where(log_table.c.attestation_id.in_(chunk))).all():
                    out[bytes(att)] = bytes(evidence)
        return out

    # -- the mirror ----------------------------------------------------------------------

    def chain_cursor(self) -> int | None:
        """The next block the mirror reads, or None before its first pass."""
        with self.store.connection() as conn:
            value = conn.execute(select(chain_cursor_table.c.next_block)
                                 .where(chain_cursor_table.c.id == 1)).scalar()
        return None if value is None else int(value)

    def replace_events(self, from_block: int, next_block: int,
                       rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        """Replace every mirrored row of blocks ``>= from_block`` with ``rows`` (by
        :data:`MIRROR_TABLES` name) and move the cursor to ``next_block``; one transaction."""
        with self.store.transaction() as conn:
            for name, table in MIRROR_TABLES.items():
                conn.execute(delete(table).where(table.c.block_number >= from_block))
                if rows.get(name):
                    conn.execute(insert(table), list(rows[name]))
            if not conn.execute(update(chain_cursor_table).where(chain_cursor_table.c.id == 1)
                                .values(next_block=next_block)).rowcount:
                conn.execute(insert(chain_cursor_table).values(id=1, next_block=next_block))

    def _events(self, table: Table, limit: int, hex_fields: tuple[str, ...] = (),
                **equal: object) -> list[dict[str, Any]]:
        """Rows of a mirrored event table, oldest first, where each column named in ``equal``
        has its value (None: any)."""
        query = select(table)
        for column, value in equal.items():
            if value is not None:
                query = query.where(table.c[column] == value)
        with self.store.connection() as conn:
            rows = conn.execute(query.order_by(table.c.block_number, table.c.log_index)
                                .limit(limit)).all()
        return [_event_json(r, hex_fields) for r in rows]

    def mints(self, *, owner: str | None = None, project: str | None = None,
              attestation_id: bytes | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Mirrored ``AttestationMinted`` events, oldest first."""
        return self._events(credit_mint_table, limit, ("attestation_id",), owner=owner,
                            project=project, attestation_id=attestation_id)

    def retirements(self, *, holder: str | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
        """Mirrored ``Retired`` events, oldest first."""
        return self._events(credit_retirement_table, limit, holder=holder)

    def batches(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Mirrored ``BatchCreated`` events, oldest first."""
        return self._events(credit_batch_table, limit)

    def balances(self, address: str) -> dict[str, int]:
        """Token id -> units ``address`` holds, from the mirrored transfers (ids with a zero
        balance left out). Summed here: amounts are uint256, beyond SQL integers."""
        t = credit_transfer_table
        totals: dict[str, int] = {}
        with self.store.connection() as conn:
            rows = conn.execute(select(t.c.from_address, t.c.to_address, t.c.token_id,
                                       t.c.amount)
                                .where(or_(t.c.from_address == address,
                                           t.c.to_address == address))).all()
        for sender, receiver, token_id, amount in rows:
            value = int(amount)
            if receiver == address:
                totals[token_id] = totals.get(token_id, 0) + value
            if sender == address:
                totals[token_id] = totals.get(token_id, 0) - value
        return {k: v for k, v in sorted(totals.items()) if v}

    def chain_events(self, *, contract: str | None = None, event: str | None = None,
                     limit: int = 100) -> list[dict[str, Any]]:
        """Mirrored governance and other events, oldest first."""
        out = self._events(chain_event_table, limit, contract=contract, event=event)
        for item in out:
            item["args"] = json.loads(item["args"])
        return out


def _event_json(row: Any, hex_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row._mapping.items():
        if key == "id":
            continue
        if key == "tx_hash" or key in hex_fields:
            value = bytes(value).hex()
        out[key] = value
    return out
