"""Sending transactions from one key: nonces, gas, fees, signing, receipts.

:class:`TxSender` signs locally (eth-account) and broadcasts raw transactions, so the node
never holds the key. Its parts:

* **Nonces** (:class:`NonceBook`): read once from the chain (``pending`` count, or
  :meth:`NonceBook.reset` with the nonces the mint table still holds), then counted locally, so
  many transactions can be in flight at once. A nonce handed out and then not broadcast is
  given back and handed out again first (a hole would stall every later transaction); after
  "nonce too low" (the key was used elsewhere) the book is read again from the chain.
* **Gas**: ``eth_estimateGas`` plus a margin (``gas_margin_percent``). The estimate doubles as
  the pre-flight check: a transaction that would revert is not sent, and the revert's custom
  error comes back as :class:`~ledger.chain_node.ContractReverted`.
* **Fees** (:class:`Fees`): EIP-1559 (``maxFeePerGas = 2 x base fee + tip``) where the latest
  block has a base fee, else a legacy ``gasPrice``. A replacement (same nonce) bumps every fee
  by ``fee_bump_percent`` per level; nodes want at least +10 % (geth's txpool ``PriceBump``).
  The quote is kept for ``fee_ttl_s`` so a burst of transactions costs one look-up.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from ledger.chain_node import (
    ChainNode,
    ChainUnavailable,
    ContractReverted,
    Receipt,
    TransactionRejected,
)

__all__ = ["Fees", "NonceBook", "SignedTx", "TxSender"]


@dataclass(frozen=True, slots=True)
class Fees:
    """EIP-1559 (``max_fee_per_gas`` and ``max_priority_fee_per_gas``) or legacy
    (``gas_price``) fees, in wei."""

    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    gas_price: int | None = None

    @property
    def eip1559(self) -> bool:
        return self.max_fee_per_gas is not None

    @property
    def cap(self) -> int:
        """The most one gas can cost."""
        return int((self.max_fee_per_gas if self.eip1559 else self.gas_price) or 0)

    def bumped(self, percent: int, levels: int = 1) -> Fees:
        """Every fee raised by ``percent`` per level (rounded up, and by 1 wei at least)."""
        def up(fee: int | None) -> int | None:
            if fee is None:
                return None
            v: int = fee
            for _ in range(levels):
                v = max(v + 1, math.ceil(v * (100 + percent) / 100))
            return v

        return Fees(up(self.max_fee_per_gas), up(self.max_priority_fee_per_gas),
                    up(self.gas_price))

    def params(self) -> dict[str, int]:
        if self.eip1559:
            return {"type": 2, "maxFeePerGas": int(self.max_fee_per_gas or 0),
                    "maxPriorityFeePerGas": int(self.max_priority_fee_per_gas or 0)}
        return {"gasPrice": int(self.gas_price or 0)}


@dataclass(frozen=True, slots=True)
class SignedTx:
    tx_hash: bytes
    raw: bytes
    nonce: int
    gas: int
    fees: Fees


class NonceBook:
    """The next nonces of one key. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: int | None = None
        self._free: set[int] = set()

    @property
    def ready(self) -> bool:
        return self._next is not None

    def reset(self, chain_pending: int, held: Iterable[int] = ()) -> None:
        """Start from the chain's ``pending`` count; ``held`` are nonces of our transactions
        the chain may not count (sent, dropped, about to be sent again with the same nonce):
        they are never handed out, and the holes below them are handed out first."""
        held = set(held)
        with self._lock:
            top = max([chain_pending - 1, *held])
            self._next = top + 1
            self._free = {n for n in range(chain_pending, top) if n not in held}

    def take(self) -> int:
        with self._lock:
            if self._next is None:
                raise RuntimeError("NonceBook.reset first")
            if self._free:
                n = min(self._free)
                self._free.discard(n)
                return n
            n = self._next
            self._next += 1
            return n

    def give_back(self, nonce: int) -> None:
        """``nonce`` was taken and not broadcast: hand it out again before any higher one."""
        with self._lock:
            if self._next is not None and nonce < self._next:
                self._free.add(nonce)


class TxSender:
    """Signs and sends transactions from ``key`` (32-byte secp256k1 secret) through ``node``.

    The key stays in this object; nothing here logs it. Thread-safe as far as the nonce book
    goes; one caller at a time otherwise (the minter's worker, or a deployment).
    """

    def __init__(self, node: ChainNode, key: bytes, *, gas_margin_percent: int = 25,
                 fee_bump_percent: int = 20, fee_ttl_s: float = 1.0) -> None:
        self.node = node
        self._account: LocalAccount = Account.from_key(key)
        self.address: str = self._account.address
        self.gas_margin_percent = gas_margin_percent
        self.fee_bump_percent = fee_bump_percent
        self._fee_ttl_s = fee_ttl_s
        self._fees: tuple[float, Fees] | None = None
        self._chain_id: int | None = None
        self.nonces = NonceBook()

    def __repr__(self) -> str:  # never the key
        return f"TxSender({self.address} via {self.node.label})"

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.node.chain_id()
        return self._chain_id

    def sync_nonce(self, held: Iterable[int] = ()) -> None:
        """(Re)read the nonce from the chain's ``pending`` count (see :meth:`NonceBook.reset`)."""
        self.nonces.reset(self.node.nonce(self.address, "pending"), held)

    def fees(self, level: int = 0) -> Fees:
        """The fee quote (cached ``fee_ttl_s``), bumped ``level`` times."""
        now = time.monotonic()
        if self._fees is None or now - self._fees[0] > self._fee_ttl_s:
            base = self.node.base_fee()
            if base is not None:
                tip = self.node.max_priority_fee()
                quote = Fees(max_fee_per_gas=2 * base + tip, max_priority_fee_per_gas=tip)
            else:
                quote = Fees(gas_price=self.node.gas_price())
            self._fees = (now, quote)
        quote = self._fees[1]
        return quote.bumped(self.fee_bump_percent, level) if level else quote

    def estimate(self, to: str | None, data: bytes, value: int = 0, *,
                 margin_levels: int = 0) -> int:
        """Gas for the transaction plus the margin (doubled per ``margin_levels``, after an
        out-of-gas). Raises ContractReverted when it would revert."""
        tx: dict[str, Any] = {"from": self.address, "data": "0x" + data.hex(), "value": value}
        if to is not None:
            tx["to"] = to_checksum_address(to)
        estimate = self.node.estimate_gas(tx)
        return self.with_margin(estimate, margin_levels)

    def estimate_many(self, to: str, datas: Sequence[bytes]) -> list[int | ContractReverted]:
        """Gas estimates (without the margin: :meth:`with_margin`) of calls to ``to``, in one
        batch; a revert in its place."""
        return self.node.estimate_gas_many([{"from": self.address, "to": to_checksum_address(to),
                                             "data": "0x" + d.hex(), "value": 0}
                                            for d in datas])

    def preflight_many(self, to: str, datas: Sequence[bytes]) -> list[bytes | ContractReverted]:
        """``eth_call`` of each call to ``to`` from this key in one batch: the return data,
        or the revert (one execution each, where an estimate costs several)."""
        return self.node.call_many([{"from": self.address, "to": to_checksum_address(to),
                                     "data": "0x" + d.hex()} for d in datas])

    def with_margin(self, estimate: int, margin_levels: int = 0) -> int:
        margin = self.gas_margin_percent << margin_levels  # doubled per level
        return -(-estimate * (100 + margin) // 100)  # rounded up, in integers

    def sign(self, to: str | None, data: bytes, *, nonce: int, gas: int, fees: Fees,
             value: int = 0) -> SignedTx:
        tx: dict[str, Any] = {"nonce": nonce, "gas": gas, "value": value, "data": data,
                              "chainId": self.chain_id, **fees.params()}
        if to is not None:
            tx["to"] = to_checksum_address(to)
        signed = self._account.sign_transaction(tx)
        return SignedTx(bytes(signed.hash), bytes(signed.raw_transaction), nonce, gas, fees)

    def broadcast(self, tx: SignedTx) -> None:
        """Send ``tx``; a node that has it already is fine. Raises TransactionRejected
        (``nonce_too_low`` only when the chain has not mined this very transaction) and
        ChainUnavailable (it may or may not have arrived)."""
        try:
            self.node.send_raw(tx.raw)
        except TransactionRejected as exc:
            if exc.reason == "already_known":
                return
            if exc.reason == "nonce_too_low" and self.node.receipt(tx.tx_hash) is not None:
                return  # this very transaction was mined (a re-send after a restart)
            raise

    def broadcast_many(self, txs: Sequence[SignedTx]) -> list[TransactionRejected | None]:
        """:meth:`broadcast` of each, in one batch, in order: None where it is fine, the
        refusal otherwise. Raises ChainUnavailable (then any may or may not have arrived)."""
        out: list[TransactionRejected | None] = []
        for tx, refused in zip(txs, self.node.send_raw_many([t.raw for t in txs]), strict=True):
            if refused is not None and (refused.reason == "already_known" or (
                    refused.reason == "nonce_too_low"
                    and self.node.receipt(tx.tx_hash) is not None)):
                refused = None
            out.append(refused)
        return out

    def wait(self, tx_hash: bytes, timeout_s: float, poll_s: float = 0.05) -> Receipt:
        """The receipt, polled until ``timeout_s``; raises ChainUnavailable after it."""
        deadline = time.monotonic() + timeout_s
        pause = threading.Event()
        while True:
            receipt = self.node.receipt(tx_hash)
            if receipt is not None:
                return receipt
            if time.monotonic() > deadline:
                raise ChainUnavailable(self.node.label, f"no receipt for 0x{tx_hash.hex()} "
                                       f"after {timeout_s:.0f} s")
            pause.wait(poll_s)

    def transact(self, to: str | None, data: bytes, value: int = 0, *,
                 timeout_s: float = 120.0, gas: int | None = None) -> Receipt:
        """Estimate, sign, send and wait for one transaction (a deployment step). Retries
        once after "nonce too low" (re-reading the nonce). Raises ContractReverted (the
        estimate reverted), TransactionRejected, ChainUnavailable; a mined revert is returned
        (``status`` 0) for the caller to judge."""
        if not self.nonces.ready:
            self.sync_nonce()
        gas = gas or self.estimate(to, data, value)
        for attempt in (1, 2):
            nonce = self.nonces.take()
            signed = self.sign(to, data, nonce=nonce, gas=gas, fees=self.fees(), value=value)
            try:
                self.broadcast(signed)
            except TransactionRejected as exc:
                if exc.reason == "nonce_too_low" and attempt == 1:
                    self.sync_nonce()
                    continue
                self.nonces.give_back(nonce)
                raise
            return self.wait(signed.tx_hash, timeout_s)
        raise AssertionError("unreachable")
