"""Minting logged certificates on chain, exactly once, beside the log and never in its way.

Every attestation appended to the log gets a row in the mint table (``ledger_mint``,
:mod:`ledger.credit_store`); :class:`MintWorker` moves each row along::

    log ──enqueue──▶ queued ──current set──▶ fewer than k of its members signed, and the
                       ▲                      certificate is another set's ──▶ failed
                       │                      (StaleQuorum), nothing sent; else, without
                       │                      non-members' signatures:
                       │    ──eth_call──┬─ reverts ──▶ failed (the custom error:
                       │                │             TooFewSignatures, Co2eMismatch, ...),
                       │                │             never retried blindly; AlreadyMinted
                       │                │             ──▶ minted (by an earlier transaction)
                       │                └─ gas estimate, nonce, sign; row ──▶ sent
                       │                   (COMMITTED), then broadcast
                       │
    sent ──receipt─────┼─ status 1, `confirmations` deep ──▶ minted (token id, units, block)
                       ├─ status 0: replayed to name the error ──▶ failed (or queued with
                       │   twice the gas margin after running out of gas)
                       ├─ none, our nonce used by another tx ──▶ mintedIn? minted : queued
                       └─ none after receipt_timeout_s ──▶ still pending: replaced; dropped:
                                                           re-sent (same nonce, fee bumped)

Calls go to the node in JSON-RPC batches (one per round for the pre-flight ``eth_call``s, the
gas estimates, the broadcasts, the receipts): many mints are in flight at once, each with its
own nonce (``max_in_flight``).

**No double mint.** The row is committed as ``sent`` (tx hash, nonce) *before* the broadcast,
and the contract itself refuses a second mint of an attestation id (``AlreadyMinted``). After a
crash, :meth:`MintWorker.reconcile` asks the chain about every queued or sent row before
anything is sent: ``mintedIn(id)`` (minted: the row is marked so, from the ``AttestationMinted``
log), then the receipt and the pool; only a row the chain says is not minted and whose
transaction is not pending is sent again, with its own nonce while that nonce is still free
(so no hole stalls later transactions) or a new one.

**The current set.** ``SenkenCredits.mint`` checks the signatures against the validator set
the chain holds *now* (``ValidatorSet.checkQuorum``: every signer a current member, at least the
current k), not against the set of the window, which the ledger checked the certificate under
(docs/protocol.md, section 8). So each round reads ``ValidatorSet.validators()`` first and
mints a row with its certificate's signatures by current members only (in the certificate's
order: signer address), leaving out those of removed validators, which would revert the whole
mint with ``UnknownSigner``. If fewer than the current k remain and the certificate was made
under another set (a signature was left out, or the window's set, as the ledger's schedule
says, is of an older epoch), the row fails with ``StaleQuorum`` ("needs re-signing by the
current set") without a transaction: the certificate can only be minted once it is signed
again, which this version does not collect.

**Never in the way.** The worker reads the log, it is not called by the append: an append
commits whatever the chain does. :meth:`MintWorker.run` is an asyncio task beside the ingest
(as :class:`~ledger.timeseries.TimeSeriesExporter` is), doing its blocking work on a thread;
the node being down is logged and retried with capped backoff, never raised.

One minter per ledger database: two would each send (the contract would still mint once).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address
from web3 import Web3

from ledger.background import run_rounds
from ledger.chain_events import EventCodec, abi_type
from ledger.chain_node import (
    ContractReverted,
    Receipt,
    TransactionRejected,
)
from ledger.chain_tx import SignedTx, TxSender
from ledger.credit_store import FAILED, MINTED, QUEUED, SENT, CreditStore, MintRecord
from ledger.store import StoreError
from senken_core.attestation import Attestation, senken_domain
from senken_core.credit_contracts import load_artifact
from senken_core.eip712 import keccak256
from senken_core.errors import SignatureError
from senken_core.evidence import CertifiedWindow
from senken_core.secp256k1 import recover_address

__all__ = ["STALE_QUORUM", "TRANSIENT_ERRORS", "CurrentSet", "MintHooks", "MintWorker",
           "attestation_args"]

log = logging.getLogger(__name__)

# Reverts that say "not yet" rather than "never": the row stays queued and is tried again after
# retry_delay_s (the chain's clock is behind the window's end).
TRANSIENT_ERRORS = frozenset({"WindowNotEnded"})
# A certificate of a set that has changed since, which the current set does not accept: not a
# contract error (nothing is sent), named like one in the mint table's ``error`` column.
STALE_QUORUM = "StaleQuorum"
_MAX_GAS_BUMPS = 2
_MAX_FEE_LEVEL = 10  # replacements of one transaction; after that it waits as it is
_BACKOFF_BASE_S = 0.5
_CALLDATA_CACHE = 4096
# SenkenCredits.mint(Attestation, bytes[]): the struct in EIP-712 member order
_MINT_TYPES = ["(string,string,uint64,uint32,string,uint32,uint32,uint32,uint64,uint64,"
               "bytes32,bytes32)", "bytes[]"]


def _selector(contract: str, function: str) -> bytes:
    """The 4-byte selector of ``function`` in ``contract``'s ABI (checked against the
    encoding this module uses, so an ABI change fails loudly, not on chain)."""
    for item in load_artifact(contract).abi:
        if item.get("type") == "function" and item["name"] == function:
            types = [abi_type(i) for i in item["inputs"]]
            if function == "mint" and types != _MINT_TYPES:
                raise RuntimeError(f"SenkenCredits.mint takes {types}, not {_MINT_TYPES}")
            return keccak256(f"{function}({','.join(types)})".encode())[:4]
    raise RuntimeError(f"{contract} has no function {function}")


def _signer(digest: bytes, signature: bytes) -> bytes | None:
    try:
        return recover_address(digest, signature)
    except SignatureError:
        return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def attestation_args(a: Attestation) -> tuple[Any, ...]:
    """The Solidity ``Attestation`` struct (EIP-712 member order) as web3 encodes it."""
    return (a.project, a.device, a.window_start, a.window_seconds, a.methodology,
            a.methodology_version, a.readings_accepted, a.readings_rejected, a.quantity,
            a.co2e_mg, a.readings_root, a.model_hash)


@dataclass
class MintHooks:
    """Points in the send path where a test stops the worker as a crash would (raise from
    the hook): just before and just after a transaction is broadcast, its row committed as
    ``sent`` either way."""

    before_broadcast: Callable[[bytes, SignedTx], None] | None = None
    after_broadcast: Callable[[bytes, SignedTx], None] | None = None


@dataclass(frozen=True, slots=True)
class _Minted:
    tx_hash: bytes
    block_number: int
    token_id: int
    units: int


@dataclass(frozen=True, slots=True)
class CurrentSet:
    """``ValidatorSet.validators()`` as last read: 20-byte members, k, epoch."""

    members: frozenset[bytes]
    threshold: int
    epoch: int


@dataclass(frozen=True, slots=True)
class _Signed:
    """A logged certificate's attestation and its signatures with their signers (None where
    a signature recovers no address: the ledger checked it, so never in practice)."""

    attestation: Attestation
    signatures: tuple[tuple[bytes | None, bytes], ...]


Change = tuple[bytes, Mapping[str, Any]]
Call = tuple[bytes, tuple[Any, ...]]  # calldata, gas group


class MintWorker:
    """Mints the log's attestations through ``sender`` to the credit contract at
    ``credits_address`` (module docstring). ``first_block``: where the contract's logs start
    (the deployment's block), for looking up mints this ledger did not record.
    ``validator_set``: the ValidatorSet's address (default: the credit contract's
    ``validatorSet()``, read once). ``window_epoch(window_start)``: the epoch of the set the
    ledger checked a window's certificate under (its schedule), None when unknown."""

    def __init__(self, credits: CreditStore, sender: TxSender, credits_address: str, *,
                 first_block: int = 0, confirmations: int = 1,
                 receipt_timeout_s: float = 120.0, max_in_flight: int = 64,
                 poll_interval_s: float = 1.0, retry_delay_s: float = 30.0,
                 retry_max_s: float = 60.0, hooks: MintHooks | None = None,
                 validator_set: str | None = None,
                 window_epoch: Callable[[int], int | None] | None = None) -> None:
        if confirmations < 1 or max_in_flight < 1:
            raise ValueError("confirmations and max_in_flight must be at least 1")
        self.credits = credits
        self.sender = sender
        self.node = sender.node
        self.address = to_checksum_address(credits_address)
        self.first_block = first_block
        self.confirmations = confirmations
        self.receipt_timeout_ms = int(receipt_timeout_s * 1000)
        self.max_in_flight = max_in_flight
        self.poll_interval_s = poll_interval_s
        self.retry_delay_ms = int(retry_delay_s * 1000)
        self.retry_max_s = retry_max_s
        self.hooks = hooks or MintHooks()
        self.counts: Counter[str] = Counter()
        self.last_error: str | None = None
        self.reconciled = False
        self._contract = Web3().eth.contract(address=self.address,
                                             abi=load_artifact("SenkenCredits").abi)
        self._events = EventCodec({"SenkenCredits": self.address})
        self._minted_topic = self._events.topic("SenkenCredits", "AttestationMinted")
        self._calldata: OrderedDict[tuple[bytes, int], Call] = OrderedDict()  # (id, epoch)
        self._signed: OrderedDict[bytes, _Signed] = OrderedDict()
        self._mint_selector = _selector("SenkenCredits", "mint")
        self._set_of_credits = "0x" + _selector("SenkenCredits", "validatorSet").hex()
        self._validators_call = "0x" + _selector("ValidatorSet", "validators").hex()
        self._set_address = None if validator_set is None else to_checksum_address(
            validator_set)
        self._window_epoch = window_epoch
        self.current: CurrentSet | None = None  # the validator set as last read

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For /health: the table's rows by state, this process's outcomes, the last error."""
        try:
            table: dict[str, int] | None = self.credits.mint_counts()
        except StoreError:
            table = None
        current = self.current
        return {"minter": self.sender.address, "credits": self.address,
                "reconciled": self.reconciled, "rows": table, "outcomes": dict(self.counts),
                "last_error": self.last_error,
                "validator_set": None if current is None else {
                    "epoch": current.epoch, "threshold": current.threshold,
                    "members": len(current.members)}}

    # -- the chain's view ----------------------------------------------------------------

    def minted_in(self, attestation_id: bytes) -> int:
        """The token id the chain minted ``attestation_id`` into, 0 if never."""
        data = bytes.fromhex(self._contract.encode_abi("mintedIn", args=[attestation_id])[2:])
        raw = self.node.call({"to": self.address, "data": "0x" + data.hex()})
        return int(abi_decode(["uint256"], raw)[0])

    def _minted_in_receipt(self, attestation_id: bytes, receipt: Receipt) -> _Minted | None:
        for entry in receipt.logs:
            found = self._minted_from_log(attestation_id, entry)
            if found is not None:
                return found
        return None

    def _minted_from_log(self, attestation_id: bytes, entry: Any) -> _Minted | None:
        if entry.address != self.address or entry.topics[:2] != (self._minted_topic,
                                                                 attestation_id):
            return None
        event = self._events.decode(entry, "SenkenCredits")
        if event is None:
            return None
        return _Minted(entry.tx_hash, entry.block_number, int(event.args["tokenId"]),
                       int(event.args["units"]))

    def _find_mint(self, attestation_id: bytes) -> _Minted | None:
        """The ``AttestationMinted`` log of ``attestation_id`` (whoever sent it), if any."""
        head = self.node.block_number()
        for entry in reversed(self.node.logs([self.address], self.first_block, head,
                                             [self._minted_topic, attestation_id])):
            found = self._minted_from_log(attestation_id, entry)
            if found is not None:
                return found
        return None

    def current_set(self) -> CurrentSet:
        """Read ``ValidatorSet.validators()`` at the latest block (kept in :attr:`current`).
        Raises ChainError."""
        if self._set_address is None:
            raw = self.node.call({"to": self.address, "data": self._set_of_credits})
            self._set_address = to_checksum_address(abi_decode(["address"], raw)[0])
        raw = self.node.call({"to": self._set_address, "data": self._validators_call})
        members, k, epoch = abi_decode(["address[]", "uint256", "uint256"], raw)
        current = CurrentSet(frozenset(bytes.fromhex(m[2:]) for m in members), int(k),
                             int(epoch))
        if self.current is not None and current.epoch != self.current.epoch:
            log.info("validator set epoch %d on chain: %d members, k = %d", current.epoch,
                     len(current.members), current.threshold)
        self.current = current
        return current

    def _signed_of(self, rows: Sequence[MintRecord]) -> list[_Signed]:
        """Each row's certificate, from its logged evidence, with every signature's signer
        (kept in a small cache)."""
        missing = [r.attestation_id for r in rows if r.attestation_id not in self._signed]
        if missing:
            found = self.credits.evidences(missing)
            domain = senken_domain(self.sender.chain_id, bytes.fromhex(self.address[2:]))
            for att in missing:
                evidence = found.get(att)
                if evidence is None:  # the mint table is derived from the log: cannot happen
                    raise StoreError(f"mint row {att.hex()} has no log entry")
                cert = CertifiedWindow.from_wire(evidence).certificate
                digest = cert.attestation.digest(domain)
                self._signed[att] = _Signed(cert.attestation, tuple(
                    (_signer(digest, sig), sig) for sig in cert.signatures))
                while len(self._signed) > _CALLDATA_CACHE:
                    self._signed.popitem(last=False)
        return [self._signed[r.attestation_id] for r in rows]

    def _mint_calls(self, rows: Sequence[MintRecord], current: CurrentSet, *,
                    strict: bool = True) -> list[Call | str]:
        """The ``mint(attestation, signatures)`` calldata of each row under the ``current``
        set (module docstring: the signatures of current members, in the certificate's
        order) and its gas group (see :meth:`_estimate_groups`); kept in a small cache, for
        replacements. Where the current set does not accept the certificate and it was made
        under another set: the ``StaleQuorum`` detail (``strict``), or the calldata with every
        signature of the certificate (not ``strict``: for a transaction that must fill its
        nonce, and which the contract then refuses with its own error)."""
        out: list[Call | str] = []
        for row, signed in zip(rows, self._signed_of(rows), strict=True):
            key = (row.attestation_id, current.epoch)
            found = self._calldata.get(key)
            if found is None:
                problem = self._stale(signed, current)
                if problem is not None and strict:
                    out.append(problem)
                    continue
                sigs = [sig for signer, sig in signed.signatures
                        if problem is not None or signer in current.members]
                found = self._encode(signed.attestation, sigs)
                if problem is None and len(sigs) < len(signed.signatures):
                    log.info("mint of %s...: %d signature(s) of validators no longer in the "
                             "set (epoch %d) left out", row.attestation_id.hex()[:16],
                             len(signed.signatures) - len(sigs), current.epoch)
                if problem is None:
                    self._calldata[key] = found
                    while len(self._calldata) > _CALLDATA_CACHE:
                        self._calldata.popitem(last=False)
            out.append(found)
        return out

    def _stale(self, signed: _Signed, current: CurrentSet) -> str | None:
        """Why the current set does not accept ``signed`` and new signatures are needed, or
        None: it does, or it was made under the current set (then the contract's own check
        names what is wrong, TooFewSignatures, before anything is sent)."""
        kept = sum(signer in current.members for signer, _ in signed.signatures)
        if kept >= current.threshold:
            return None
        dropped = len(signed.signatures) - kept
        epoch = None if self._window_epoch is None else self._window_epoch(
            signed.attestation.window_start)
        if not dropped and (epoch is None or epoch == current.epoch):
            return None
        return (f"needs re-signing by the current set: {kept} of its "
                f"{len(signed.signatures)} signers are members of the set of epoch "
                f"{current.epoch}, which needs k = {current.threshold}"
                + ("" if epoch is None else f" (the window's set is epoch {epoch})"))

    def _encode(self, a: Attestation, signatures: Sequence[bytes]) -> Call:
        data = self._mint_selector + abi_encode(_MINT_TYPES,
                                                [attestation_args(a), list(signatures)])
        year = time.gmtime(a.window_start).tm_year
        return data, (len(data), a.project, a.methodology, year)

    def _mint_data(self, row: MintRecord) -> bytes:
        """The calldata to (re-)send or replay ``row`` with, under the set last read."""
        call = self._mint_calls([row], self.current or self.current_set(), strict=False)[0]
        assert not isinstance(call, str)
        return call[0]

    # -- row changes ---------------------------------------------------------------------

    def _as_minted(self, row: MintRecord, minted: _Minted | None, token_id: int,
                   how: str) -> Change:
        self.counts["minted"] += 1
        att = row.attestation_id.hex()
        if minted is None:
            log.warning("attestation %s... is minted (token %x) but its AttestationMinted log "
                        "was not found (a pruned node?)", att[:16], token_id)
            return (row.attestation_id, {"state": MINTED, "token_id": f"0x{token_id:064x}",
                                         "detail": how})
        log.info("minted %s... in block %d: %d units of token %s...", att[:16],
                 minted.block_number, minted.units, f"{minted.token_id:064x}"[:12])
        return (row.attestation_id, {
            "state": MINTED, "token_id": f"0x{minted.token_id:064x}", "units": str(minted.units),
            "block_number": minted.block_number, "tx_hash": minted.tx_hash, "detail": how,
            "error": None})

    def _minted_elsewhere(self, row: MintRecord, token_id: int, how: str) -> Change:
        found = self._find_mint(row.attestation_id)
        return self._as_minted(row, found, token_id, how)

    def _requeue(self, row: MintRecord, detail: str, delay_ms: int = 0) -> Change:
        self.counts["requeued"] += 1
        return (row.attestation_id, {"state": QUEUED, "tx_hash": None, "nonce": None,
                                     "detail": detail, "next_attempt_ms": _now_ms() + delay_ms})

    def _refused(self, row: MintRecord, exc: ContractReverted) -> Change:
        """What a revert (of the estimate or a replay) means for ``row``."""
        att = row.attestation_id
        if exc.error == "AlreadyMinted":
            token_id = self.minted_in(att)
            return self._minted_elsewhere(row, token_id, "AlreadyMinted: minted before")
        if exc.error in TRANSIENT_ERRORS:
            log.info("mint of %s... not yet: %s", att.hex()[:16], exc.signature)
            return self._requeue(row, exc.signature, self.retry_delay_ms)
        self.counts[f"failed:{exc.error or 'Reverted'}"] += 1
        log.warning("mint of %s... refused by the contract: %s", att.hex()[:16], exc.signature)
        return (att, {"state": FAILED, "error": exc.error or "Reverted",
                      "detail": exc.signature, "tx_hash": row.tx_hash})

    def _stale_quorum(self, row: MintRecord, detail: str) -> Change:
        token_id = self.minted_in(row.attestation_id)  # minted before the set changed?
        if token_id:
            return self._minted_elsewhere(row, token_id, "minted before")
        self.counts[f"failed:{STALE_QUORUM}"] += 1
        log.warning("mint of %s... not sent: %s", row.attestation_id.hex()[:16], detail)
        return (row.attestation_id, {"state": FAILED, "error": STALE_QUORUM, "detail": detail,
                                     "tx_hash": None})

    def _after_revert(self, row: MintRecord, receipt: Receipt) -> Change:
        """A mined transaction reverted: replay it on the state before its block to name
        the error; an out-of-gas goes back to the queue with twice the gas margin."""
        data = self._mint_data(row)
        try:
            self.node.call({"from": self.sender.address, "to": self.address,
                            "data": "0x" + data.hex()}, max(0, receipt.block_number - 1))
        except ContractReverted as exc:
            return self._refused(row, exc)
        if row.gas is not None and receipt.gas_used >= row.gas and \
                row.gas_bumps < _MAX_GAS_BUMPS:
            change = self._requeue(row, f"out of gas at {receipt.gas_used}")
            return (change[0], {**change[1], "gas_bumps": row.gas_bumps + 1})
        self.counts["failed:Reverted"] += 1
        reason = "OutOfGas" if row.gas is not None and receipt.gas_used >= row.gas \
            else "Reverted"
        return (row.attestation_id, {"state": FAILED, "error": reason,
                                     "detail": f"transaction 0x{receipt.tx_hash.hex()} "
                                               "reverted; a replay did not revert"})

    def _settle(self, row: MintRecord, receipt: Receipt) -> Change:
        if receipt.status == 1:
            found = self._minted_in_receipt(row.attestation_id, receipt)
            if found is not None:
                return self._as_minted(row, found, found.token_id, "")
            token_id = self.minted_in(row.attestation_id)
            if token_id:
                return self._minted_elsewhere(row, token_id, "minted by another transaction")
            return self._requeue(row, "mined without minting (a re-org?)")
        return self._after_revert(row, receipt)

    # -- start -----------------------------------------------------------------------------

    def reconcile(self) -> dict[str, int]:
        """Bring the table in line with the chain before sending anything (module docstring);
        then read the nonce. Idempotent. Returns what became of the rows looked at. Raises
        ChainError and StoreError (the caller retries)."""
        outcome: Counter[str] = Counter()
        changes: list[Change] = []
        for row in self.credits.mint_rows(QUEUED):
            token_id = self.minted_in(row.attestation_id)
            if token_id:
                changes.append(self._minted_elsewhere(row, token_id, "found minted at start"))
                outcome["minted"] += 1
        latest = self.node.nonce(self.sender.address, "latest")
        held: list[int] = []
        resend: list[MintRecord] = []
        for row in self.credits.mint_rows(SENT):
            token_id = self.minted_in(row.attestation_id)
            receipt = self.node.receipt(row.tx_hash) if row.tx_hash else None
            if token_id:
                found = None if receipt is None else self._minted_in_receipt(
                    row.attestation_id, receipt)
                changes.append(self._as_minted(row, found, token_id, "found minted at start")
                               if found else self._minted_elsewhere(row, token_id,
                                                                    "found minted at start"))
                outcome["minted"] += 1
            elif receipt is not None and receipt.status == 0:
                changes.append(self._after_revert(row, receipt))
                outcome["reverted"] += 1
            elif row.tx_hash is not None and self.node.is_pending(row.tx_hash):
                held.append(int(row.nonce or 0))
                outcome["pending"] += 1
            elif row.nonce is not None and row.nonce >= latest:
                held.append(row.nonce)
                resend.append(row)
                outcome["resent"] += 1
            else:
                changes.append(self._requeue(row, "not minted, not pending, nonce used: "
                                                  "sent again with a new nonce"))
                outcome["requeued"] += 1
        self.credits.update_mints(changes)
        self.sender.sync_nonce(held)
        for row in resend:
            self._replace(row, "not on chain after a restart")
        self.reconciled = True
        if outcome:
            log.info("mint table reconciled with the chain: %s", dict(outcome))
        return dict(outcome)

    # -- one round ---------------------------------------------------------------------------

    def step(self) -> int:
        """One round: reconcile if not done, queue new log entries, settle sent
        transactions, send queued ones. Returns how many rows moved (0: nothing to do).
        Raises ChainError and StoreError, having committed what it did before."""
        if not self.reconciled:
            self.reconcile()
        moved = self.credits.enqueue_logged()
        in_flight, settled = self._check_sent()
        return moved + settled + self._send_queued(in_flight)

    def _check_sent(self) -> tuple[int, int]:
        rows = self.credits.mint_rows(SENT)
        if not rows:
            return 0, 0
        # the nonce before the receipts: a transaction mined in between shows its receipt
        latest = self.node.nonce(self.sender.address, "latest")
        head = self.node.block_number()
        now = _now_ms()
        changes: list[Change] = []
        receipts = self.node.receipts([row.tx_hash or b"\x00" * 32 for row in rows])
        for row, receipt in zip(rows, receipts, strict=True):
            if receipt is not None:
                if receipt.status == 1 and head - receipt.block_number + 1 < self.confirmations:
                    continue
                changes.append(self._settle(row, receipt))
            elif row.nonce is not None and row.nonce < latest:
                # the nonce went to another transaction: one this row replaced, or not ours
                token_id = self.minted_in(row.attestation_id)
                changes.append(self._minted_elsewhere(row, token_id, "minted by a replaced "
                                                      "transaction") if token_id else
                               self._requeue(row, "its nonce went to another transaction"))
            elif now - (row.sent_at_ms or 0) >= self.receipt_timeout_ms:
                pending = row.tx_hash is not None and self.node.is_pending(row.tx_hash)
                self._replace(row, "still pending" if pending else "dropped by the node")
        self.credits.update_mints(changes)
        return len(rows) - len(changes), len(changes)

    def _replace(self, row: MintRecord, why: str) -> None:
        """Send ``row`` again with its own nonce and the fee bumped one level (a replacement
        while it is pending, a re-send once dropped): committed before the broadcast."""
        assert row.nonce is not None and row.gas is not None
        level = min(row.fee_level + 1, _MAX_FEE_LEVEL)
        if row.fee_level >= _MAX_FEE_LEVEL and why == "still pending":
            return  # bumped enough: wait for the network
        signed = self.sender.sign(self.address, self._mint_data(row), nonce=row.nonce,
                                  gas=row.gas, fees=self.sender.fees(level))
        self.credits.update_mints([(row.attestation_id, {
            "tx_hash": signed.tx_hash, "fee_level": level, "fee_cap_wei": signed.fees.cap,
            "sent_at_ms": _now_ms(), "attempts": row.attempts + 1,
            "detail": f"{why}: re-sent with nonce {row.nonce}, fee level {level}"})])
        log.warning("mint of %s... %s: re-sent as 0x%s (nonce %d, fee level %d)",
                    row.attestation_id.hex()[:16], why, signed.tx_hash.hex(), row.nonce, level)
        self.counts["replaced"] += 1
        try:
            self._broadcast(row.attestation_id, signed)
        except TransactionRejected as exc:
            # underpriced: the next timeout bumps again; nonce too low: the next round sees
            # which transaction took it
            log.warning("re-send of %s... refused: %s", row.attestation_id.hex()[:16], exc)

    def _broadcast(self, attestation_id: bytes, signed: SignedTx) -> None:
        if self.hooks.before_broadcast is not None:
            self.hooks.before_broadcast(attestation_id, signed)
        self.sender.broadcast(signed)
        if self.hooks.after_broadcast is not None:
            self.hooks.after_broadcast(attestation_id, signed)

    def _send_queued(self, in_flight: int) -> int:
        capacity = self.max_in_flight - in_flight
        if capacity <= 0:
            return 0
        rows = self.credits.mint_rows(QUEUED, limit=capacity, due_ms=_now_ms())
        if not rows:
            return 0
        changes: list[Change] = []
        sendable: list[MintRecord] = []
        calls: list[Call] = []
        for row, call in zip(rows, self._mint_calls(rows, self.current_set()), strict=True):
            if isinstance(call, str):
                changes.append(self._stale_quorum(row, call))
            else:
                sendable.append(row)
                calls.append(call)
        checks = self.sender.preflight_many(self.address, [data for data, _ in calls]) \
            if calls else []
        ready: list[tuple[MintRecord, bytes, tuple[Any, ...]]] = []
        for row, (data, group), check in zip(sendable, calls, checks, strict=True):
            if isinstance(check, ContractReverted):
                changes.append(self._refused(row, check))
            else:  # a row retried after running out of gas is estimated on its own
                ready.append((row, data, group if not row.gas_bumps else (row.attestation_id,)))
        gas_of = self._estimate_groups(ready, changes)
        batch: list[tuple[MintRecord, SignedTx]] = []
        fees = self.sender.fees()
        waiting = 0
        for row, data, group in ready:
            estimate = gas_of.get(group)
            if estimate is None:
                waiting += row.attestation_id != group[0]  # not the refused one: next round
                continue
            gas = self.sender.with_margin(estimate, row.gas_bumps)
            batch.append((row, self.sender.sign(self.address, data,
                                                nonce=self.sender.nonces.take(), gas=gas,
                                                fees=fees)))
        self.credits.update_mints(changes)
        if not batch:
            return len(changes) + waiting
        now = _now_ms()
        # durable before anything leaves: a crash after this commit is reconciled at start
        self.credits.update_mints([(row.attestation_id, {
            "state": SENT, "tx_hash": tx.tx_hash, "nonce": tx.nonce, "gas": tx.gas,
            "fee_cap_wei": tx.fees.cap, "fee_level": 0, "sent_at_ms": now,
            "attempts": row.attempts + 1, "error": None, "detail": None})
            for row, tx in batch])
        if self.hooks.before_broadcast is not None:
            for row, tx in batch:
                self.hooks.before_broadcast(row.attestation_id, tx)
        # ChainUnavailable here: every row stays sent, in doubt; the receipt check finds
        # each or, after receipt_timeout_s, sends it again with its nonce
        refusals = self.sender.broadcast_many([tx for _, tx in batch])
        if self.hooks.after_broadcast is not None:
            for row, tx in batch:
                self.hooks.after_broadcast(row.attestation_id, tx)
        self._refusals(batch, refusals)
        return len(changes) + len(batch) + waiting

    def _estimate_groups(self, ready: Sequence[tuple[MintRecord, bytes, tuple[Any, ...]]],
                         changes: list[Change]) -> dict[tuple[Any, ...], int]:
        """One ``eth_estimateGas`` per gas group of the round: mints of one batch (project,
        methodology, vintage) with calldata of one length run the same code on the same
        slots, and the group's first in log order (the batch's first mint, creating it, or
        the first units to the owner) is its costliest; the others use its estimate plus the
        margin. Every row was already checked with ``eth_call`` (one execution, where an
        estimate costs several: 0.6 against 8 ms a mint on anvil). A representative whose
        estimate reverts is refused; the rest of its group waits for the next round."""
        first: dict[tuple[Any, ...], tuple[MintRecord, bytes]] = {}
        for row, data, group in ready:
            first.setdefault(group, (row, data))
        groups = list(first)
        found = self.sender.estimate_many(self.address, [first[g][1] for g in groups])
        out: dict[tuple[Any, ...], int] = {}
        for group, estimate in zip(groups, found, strict=True):
            if isinstance(estimate, ContractReverted):
                changes.append(self._refused(first[group][0], estimate))
            else:
                out[group] = estimate
        return out

    def _refusals(self, batch: Sequence[tuple[MintRecord, SignedTx]],
                  refusals: Sequence[TransactionRejected | None]) -> None:
        """After "nonce too low" (the key was used elsewhere) a row goes back to the queue
        for a new nonce, and the nonce book is read again. Any other refusal (underpriced,
        insufficient funds) leaves the row sent with its nonce, so no later transaction waits
        on a hole: after receipt_timeout_s it is re-sent with a higher fee."""
        requeue: list[Change] = []
        notes: list[Change] = []
        for (row, tx), refused in zip(batch, refusals, strict=True):
            if refused is None:
                self.counts["sent"] += 1
            elif refused.reason == "nonce_too_low":
                requeue.append(self._requeue(row, f"refused by the node: {refused.reason}"))
            else:
                self.counts[f"refused:{refused.reason}"] += 1
                notes.append((row.attestation_id, {"detail": f"refused by the node "
                                                   f"({refused.reason}); re-sent after the "
                                                   "receipt timeout"}))
                log.warning("the node refused mint transaction 0x%s: %s", tx.tx_hash.hex(),
                            refused)
        self.credits.update_mints(requeue + notes)
        if requeue:
            log.warning("nonce too low (the minter key was used elsewhere?): re-reading it")
            self.sender.sync_nonce(r.nonce for r in self.credits.mint_rows(SENT)
                                   if r.nonce is not None)

    # -- running -----------------------------------------------------------------------------

    def run_until_idle(self, max_rounds: int = 1000) -> int:
        """:meth:`step` until a round moves nothing; rows moved in all. For tools and tests
        (with automining, a sent row settles on the next round)."""
        total = 0
        for _ in range(max_rounds):
            moved = self.step()
            total += moved
            if not moved and not self.credits.mint_rows(SENT, limit=1):
                break
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Mint until ``stop`` is set. Never raises for the chain or the database: logs, waits
        a capped exponential backoff with jitter, and carries on."""
        await run_rounds(self.step, stop, what="minting", log=log,
                         next_delay=lambda moved: 0.0 if moved else self.poll_interval_s,
                         backoff=self._backoff_s, set_error=self._set_error)

    def _set_error(self, error: str | None) -> None:
        self.last_error = error

    def _backoff_s(self, failures: int) -> float:
        cap = min(self.retry_max_s, _BACKOFF_BASE_S * 2.0 ** min(failures - 1, 30))
        return cap / 2 + random.uniform(0, cap / 2)
