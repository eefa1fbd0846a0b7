"""Mirroring the contracts' events into the ledger database, for the API, the market and
dashboards (no chain round trip per question).

:class:`ChainMirror` reads the logs of every Senken contract block range by block range and
writes them, decoded (:mod:`ledger.chain_events`), to the ledger's tables
(:mod:`ledger.credit_store`): ``AttestationMinted``, ``TransferSingle`` and ``TransferBatch``
(balances are summed from these), ``Retired``, ``BatchCreated``; every other event of the set
(``ValidatorSetChanged``, ``ProjectRegistered``, ``MethodologyTermAdded``, the governor's
proposals and votes, the timelock's calls, governance hand-overs) goes to one generic table
with its arguments as JSON. The governance token's own events (``Transfer``, delegation) are
not mirrored: they are an ERC-20's bookkeeping, not the network's.

Cursor and re-orgs: the next block to read is kept in the database (``ledger_chain_cursor``), so
a restart goes on where it stopped. Each pass re-reads the last ``reorg_depth`` blocks before
the cursor and replaces everything mirrored from them in the same transaction as the new
rows and the cursor: a re-org no deeper than that leaves the tables as the chain now is;
a deeper one is not repaired (re-read from an older block by lowering the cursor).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

from ledger.background import run_rounds
from ledger.chain_events import ChainEvent, EventCodec, json_value
from ledger.chain_node import ChainNode
from ledger.credit_store import CreditStore
from ledger.deploy import Addresses
from ledger.store import StoreError

__all__ = ["ChainMirror"]

log = logging.getLogger(__name__)

_SKIPPED = {"SenkenToken"}  # see the module docstring
_BACKOFF_MAX_S = 60.0


def _token(value: int) -> str:
    return f"0x{value:064x}"


class ChainMirror:
    """Copies the contracts' events at ``addresses`` into ``credits``' tables."""

    def __init__(self, credits: CreditStore, node: ChainNode, addresses: Addresses, *,
                 reorg_depth: int = 12, max_blocks: int = 2000,
                 poll_interval_s: float = 1.0) -> None:
        if reorg_depth < 0 or max_blocks < 1:
            raise ValueError("reorg_depth must be >= 0 and max_blocks >= 1")
        self.credits = credits
        self.node = node
        self.addresses = addresses
        self.reorg_depth = reorg_depth
        self.max_blocks = max_blocks
        self.poll_interval_s = poll_interval_s
        contracts = {n: a for n, a in addresses.by_contract().items() if n not in _SKIPPED}
        self._codec = EventCodec(contracts)
        self._watched = list(contracts.values())
        self.counts: Counter[str] = Counter()
        self.head: int | None = None
        self.last_error: str | None = None

    def status(self) -> dict[str, Any]:
        try:
            cursor = self.credits.chain_cursor()
        except StoreError:
            cursor = None
        return {"next_block": cursor, "head": self.head, "events": dict(self.counts),
                "last_error": self.last_error}

    def step(self) -> int:
        """Mirror the next range of blocks (up to ``max_blocks``, up to the head); how many
        new blocks it covered (0: up to date). Raises ChainError and StoreError."""
        head = self.node.block_number()
        self.head = head
        cursor = self.credits.chain_cursor()
        start_at = self.addresses.deployed_block if cursor is None else cursor
        first = max(self.addresses.deployed_block, start_at - self.reorg_depth)
        if first > head:
            return 0
        last = min(head, max(start_at, first) + self.max_blocks - 1)
        logs = self.node.logs(self._watched, first, last)
        rows: dict[str, list[dict[str, Any]]] = {}
        for entry in logs:
            event = self._codec.decode(entry)
            if event is None:
                self.counts["undecoded"] += 1
                continue
            for table, row in self._rows(event):
                rows.setdefault(table, []).append(row)
        self.credits.replace_events(first, last + 1, rows)
        new = last + 1 - start_at
        if new > 0:
            for table, items in rows.items():
                self.counts[table] += len(items)
        return max(0, new)

    def _rows(self, e: ChainEvent) -> list[tuple[str, dict[str, Any]]]:
        where = {"block_number": e.block_number, "tx_hash": e.tx_hash, "log_index": e.log_index}
        a = e.args
        if e.contract == "SenkenCredits":
            if e.name == "AttestationMinted":
                att = a["attestation"]
                return [("mint", {
                    **where, "attestation_id": a["attestationId"],
                    "token_id": _token(a["tokenId"]), "owner": a["owner"],
                    "units": str(a["units"]), "remainder_mg": str(a["remainderMg"]),
                    "validator_epoch": str(a["validatorEpoch"]), "project": att[0],
                    "device": att[1], "window_start": int(att[2]), "window_seconds": int(att[3]),
                    "methodology": att[4], "quantity": str(att[8]), "co2e_mg": str(att[9])})]
            if e.name == "TransferSingle":
                return [("transfer", {**where, "item": 0, "operator": a["operator"],
                                      "from_address": a["from"], "to_address": a["to"],
                                      "token_id": _token(a["id"]), "amount": str(a["value"])})]
            if e.name == "TransferBatch":
                return [("transfer", {**where, "item": i, "operator": a["operator"],
                                      "from_address": a["from"], "to_address": a["to"],
                                      "token_id": _token(token), "amount": str(amount)})
                        for i, (token, amount) in enumerate(zip(a["ids"], a["values"],
                                                                strict=True))]
            if e.name == "Retired":
                return [("retirement", {
                    **where, "retirement_id": str(a["retirementId"]), "holder": a["holder"],
                    "token_id": _token(a["tokenId"]), "amount": str(a["amount"]),
                    "beneficiary": a["beneficiary"], "reason": a["reason"],
                    "jurisdiction": a["jurisdiction"], "timestamp": int(a["timestamp"])})]
            if e.name == "BatchCreated":
                return [("batch", {**where, "token_id": _token(a["tokenId"]),
                                   "project": a["project"], "vintage": int(a["vintage"]),
                                   "methodology": a["methodology"]})]
        return [("event", {**where, "contract": e.contract, "address": e.address,
                           "event": e.name, "args": json.dumps(json_value(a),
                                                               sort_keys=True)})]

    def run_until_idle(self, max_rounds: int = 1000) -> int:
        """:meth:`step` until up to date; blocks covered in all."""
        total = 0
        for _ in range(max_rounds):
            moved = self.step()
            total += moved
            if not moved:
                break
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Mirror until ``stop`` is set; the chain or the database failing is logged and
        retried after a pause, never raised."""
        await run_rounds(
            self.step, stop, what="event mirror", log=log,
            next_delay=lambda moved: 0.0 if moved >= self.max_blocks else self.poll_interval_s,
            backoff=lambda failures: min(_BACKOFF_MAX_S, 0.5 * 2.0 ** min(failures, 10)),
            set_error=self._set_error)

    def _set_error(self, error: str | None) -> None:
        self.last_error = error
