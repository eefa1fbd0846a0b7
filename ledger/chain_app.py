"""Wiring the chain side of the ledger from its ``[chain]`` config: node, minter key,
addresses, the schedule follower, minting worker, event mirror (used by ``ledger.app``;
nothing runs at import).

::

    [chain] url ──▶ ChainNode ──▶ TxSender (minter key) ──▶ MintWorker ◀── the log (mint table)
                             ├──▶ ScheduleFollower ──▶ Ledger.on_schedule (sets and terms)
                             └──────────────────────────▶ ChainMirror ──▶ credit tables ──▶ API

The follower reads the validator sets and methodology terms exactly as the validators do
(:class:`senken_core.chain_schedule.ChainWatcher`, with the network file's activation delay,
or ``[chain] activation_delay_s`` where the file has none: one value for all) every
``poll_interval_s``, at the block ``confirmations`` deep, and hands the schedule and that
block's timestamp to the ledger: certificates are checked against the set and term of their
window once that is final (``ledger.service``).

Checked when built, without the node: the addresses file is for the network file's chain and
credit contract (else validators sign for a domain the contract does not verify: every mint
would fail ``UnknownSigner``). Checked on the minter's first round, with the node: its chain
id and the code at the credit contract's address (:class:`ChainMismatch`; minting then stays
off, with the reason in /health, and the ledger runs on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from web3 import Web3
from web3.types import Wei

from ledger.background import wait_or_stop
from ledger.chain_mirror import ChainMirror
from ledger.chain_node import ChainError, ChainNode
from ledger.chain_tx import TxSender
from ledger.config import ChainConfig
from ledger.credit_store import CreditStore
from ledger.deploy import Addresses, network_mismatch
from ledger.minting import MintHooks, MintWorker
from ledger.store import LedgerStore, StoreError
from senken_core.chain_schedule import ChainError as ScheduleReadError
from senken_core.chain_schedule import ChainWatcher, ScheduleRead
from senken_core.errors import ConfigError, KeyFileError
from senken_core.keys import check_key_file
from senken_core.membership import Schedule
from senken_core.network import NetworkConfig

__all__ = ["ChainMismatch", "ChainServices", "ScheduleFollower", "ScheduleSink",
           "load_minter_key", "open_chain"]

log = logging.getLogger(__name__)

_KEY_HEADER = "senken-secp256k1-key-v1"  # as senken_core.secp256k1 writes validator keys
_TESTER_FUNDING_WEI = 10**21  # 1000 ether of the in-process chain's play money


class ChainMismatch(ChainError):
    """The node is not the chain the addresses file names (chain id, or no code at the
    credit contract's address)."""


def load_minter_key(path: Path) -> bytes:
    """The 32-byte secp256k1 secret in ``path``: a Senken key file (``senken validator
    init`` format) or one line of 64 hex digits (``0x`` optional), readable by its owner
    only. Raises KeyFileError; the key never appears in a message."""
    check_key_file(path, "senken chain keygen")
    try:
        words = path.read_text("ascii").split()
    except (OSError, UnicodeDecodeError):
        raise KeyFileError(path, "is not readable as a key file") from None
    if len(words) == 2 and words[0] == _KEY_HEADER:
        words = words[1:]
    if len(words) != 1:
        raise KeyFileError(path, "must hold one secp256k1 key: 64 hex digits")
    text = words[0].removeprefix("0x")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(path, "must hold one secp256k1 key: 64 hex digits") from None
    if len(key) != 32 or not 0 < int.from_bytes(key, "big") < 2**256 - 2**32 * 977:
        raise KeyFileError(path, "is not a valid secp256k1 key (32 bytes)")
    return key


class ScheduleSink(Protocol):
    """What the follower feeds: :class:`ledger.service.Ledger`."""

    def on_schedule(self, schedule: Schedule, block: int, block_timestamp: int) -> Any: ...

    def waiting_for(self) -> int | None: ...

    def window_epoch(self, window_start: int) -> int | None: ...


class _Watcher(ChainWatcher):
    log = logging.getLogger(__name__)  # the ledger's logger, not senken_core's


class ScheduleFollower:
    """Reads the schedule from the chain and hands it to the ledger (module docstring)."""

    def __init__(self, watcher: ChainWatcher, node: ChainNode, sink: ScheduleSink, *,
                 poll_interval_s: float = 1.0) -> None:
        self.watcher = watcher
        self.node = node
        self.sink = sink
        self.poll_interval_s = poll_interval_s
        self.last: ScheduleRead | None = None
        self.last_error: str | None = None
        self.reads = 0

    @classmethod
    def of(cls, config: ChainConfig, network: NetworkConfig, node: ChainNode,
           addresses: Addresses, sink: ScheduleSink) -> ScheduleFollower:
        """A follower of the deployment at ``addresses`` (from its deployment block on)."""
        watcher = _Watcher(node.w3, network,
                           activation_delay_s=activation_delay(config, network),
                           validator_set=addresses.validator_set,
                           project_registry=addresses.registry,
                           # [chain] confirmations counts the block itself, as for receipts
                           confirmations=config.confirmations - 1,
                           from_block=addresses.deployed_block, where=node.label)
        return cls(watcher, node, sink, poll_interval_s=config.poll_interval_s)

    def status(self) -> dict[str, Any]:
        last = self.last
        return {"reads": self.reads, "last_error": self.last_error,
                "block": None if last is None else last.block,
                "block_timestamp": None if last is None else last.block_timestamp,
                "epoch": None if last is None else last.schedule.latest.epoch,
                "activation_delay_s": self.watcher.activation_delay_s}

    def _read(self) -> ScheduleRead | None:
        # one read at a time on the node: py-evm (an in-process chain) is not thread-safe,
        # and ChainNode's lock is what the minter and the mirror hold for it
        with self.node._guard():
            return self.watcher.read()

    def step(self) -> bool:
        """Read the chain once and hand the schedule over; False while the chain has no
        block deep enough. Raises ScheduleReadError (the chain) and StoreError (retrying
        the waiting certificates)."""
        read = self._read()
        if read is None:
            return False
        waiting = self.sink.waiting_for()
        if self.node.in_process and waiting is not None \
                and read.block_timestamp <= waiting < time.time():
            # a chain in this process mines only on transactions; a network's chain mines
            # on its own, and this one must too for the waiting certificate to be judged
            with self.node._guard():
                self.node.w3.provider.make_request("evm_mine", [1])  # type: ignore[arg-type]
            read = self._read() or read
        self.last = read
        self.reads += 1
        self.sink.on_schedule(read.schedule, read.block, read.block_timestamp)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until ``stop`` is set; the chain or the database failing is logged and
        retried after a capped backoff, never raised."""
        failures = 0
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.step)
            except (ScheduleReadError, StoreError) as exc:
                failures += 1
                self.last_error = str(exc)
                (log.warning if failures == 1 else log.debug)(
                    "reading the validator set and terms failed (certificates wait): %s", exc)
            except Exception as exc:  # one bad moment never ends the loop
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("schedule round failed")
            else:
                if failures:
                    log.info("reading the validator set and terms again")
                failures = 0
                self.last_error = None
            delay = self.poll_interval_s if not failures else \
                min(60.0, self.poll_interval_s * 2.0 ** min(failures, 10))
            await wait_or_stop(stop, delay)


@dataclass
class ChainServices:
    """The chain side of a running ledger."""

    node: ChainNode
    sender: TxSender
    addresses: Addresses
    credits: CreditStore
    minter: MintWorker
    mirror: ChainMirror | None
    expected_chain_id: int
    disabled: str | None = None  # why minting stopped for good (a ChainMismatch)
    follower: ScheduleFollower | None = None  # the ledger's sets and terms from the chain

    def check_chain(self) -> None:
        """Raise ChainMismatch unless the node is the deployment's chain."""
        chain_id = self.node.chain_id()
        if chain_id != self.expected_chain_id:
            raise ChainMismatch(self.node.label, f"chain id {chain_id}, but the addresses "
                                f"file and the network file name chain {self.expected_chain_id}")
        if not self.node.code(self.addresses.credits):
            raise ChainMismatch(self.node.label, f"no contract at {self.addresses.credits}; "
                                "is this the chain `senken chain deploy` deployed to?")

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node.label, "chain_id": self.expected_chain_id,
                               "credits": self.addresses.credits,
                               "minting": self.minter.status(), "disabled": self.disabled}
        if self.mirror is not None:
            out["mirror"] = self.mirror.status()
        if self.follower is not None:
            out["schedule"] = self.follower.status()
        return out

    async def run_minter(self, stop: asyncio.Event) -> None:
        """The minter, once the node proved to be the right chain (checked again after a
        node failure); a mismatch turns minting off until restart, the ledger runs on."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.check_chain)
                break
            except ChainMismatch as exc:
                self.disabled = str(exc)
                log.error("minting is off: %s", exc)
                await stop.wait()
                return
            except ChainError as exc:
                self.minter.last_error = str(exc)
                log.warning("chain node not reachable yet: %s", exc)
                await _pause(stop, self.minter.poll_interval_s * 5)
        await self.minter.run(stop)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _check_addresses(network: NetworkConfig, addresses: Addresses, config: ChainConfig,
                     source: str) -> None:
    problems = [f"the network file must say {line} (what {source} deployed)"
                for line in network_mismatch(network, addresses)]
    if config.chain_id is not None and config.chain_id != addresses.chain_id:
        problems.append(f"[chain] chain_id is {config.chain_id}, {source} is for chain "
                        f"{addresses.chain_id}")
    if problems:
        raise ConfigError("[chain]", problems)


def activation_delay(config: ChainConfig, network: NetworkConfig) -> int:
    """The activation delay the ledger uses (NetworkConfig.activation_delay); raises
    ConfigError when [chain] and the network file disagree."""
    try:
        return network.activation_delay(config.activation_delay_s,
                                        "[chain] of the ledger's config")
    except ValueError as exc:
        raise ConfigError("[chain]", [str(exc)]) from None


def open_chain(config: ChainConfig, network: NetworkConfig, store: LedgerStore, *,
               w3: Web3 | None = None, addresses: Addresses | None = None,
               hooks: MintHooks | None = None,
               ledger: ScheduleSink | None = None) -> ChainServices:
    """Build the chain side (nothing runs yet). ``w3`` reuses a chain that exists in this
    process (``url = "eth-tester"`` and a demo that deployed into it); ``addresses`` stand for
    ``[chain] addresses_file``; ``ledger``: fed the schedule read from the chain (a
    :class:`ScheduleFollower`; its set epochs also tell the minter which certificates are
    stale). Raises ConfigError, KeyFileError, AddressesError, ChainError (eth-tester not
    installed)."""
    if config.url is None:
        raise ConfigError("[chain]", ["url: not set, so there is no chain to mint on"])
    activation_delay(config, network)  # before connecting: a mismatch is a config error
    node = ChainNode.connect(config.url, w3=w3, timeout_s=config.request_timeout_s)
    if addresses is None:
        if config.addresses_file is None:
            raise ConfigError("[chain]", ["addresses_file: required (the JSON `senken chain "
                                          "deploy --out` wrote)"])
        addresses = Addresses.load(config.addresses_file)
        source = str(config.addresses_file)
    else:
        source = "the deployment"
    _check_addresses(network, addresses, config, source)
    if config.minter_key_file is not None:
        key = load_minter_key(config.minter_key_file)
    elif node.in_process:
        key = _tester_key(node)
    else:
        raise ConfigError("[chain]", ["minter_key_file: required for a JSON-RPC node (the "
                                      "key that pays for minting)"])
    sender = TxSender(node, key, gas_margin_percent=config.gas_margin_percent,
                      fee_bump_percent=config.fee_bump_percent)
    log.info("minting on %s as %s to %s", node.label, sender.address, addresses.credits)
    credits = CreditStore(store)
    minter = MintWorker(credits, sender, addresses.credits,
                        first_block=addresses.deployed_block,
                        confirmations=config.confirmations,
                        receipt_timeout_s=config.receipt_timeout_s,
                        max_in_flight=config.max_in_flight,
                        poll_interval_s=config.poll_interval_s, hooks=hooks,
                        validator_set=addresses.validator_set,
                        window_epoch=None if ledger is None else ledger.window_epoch)
    mirror = ChainMirror(credits, node, addresses, reorg_depth=config.reorg_depth,
                         poll_interval_s=config.poll_interval_s) if config.mirror else None
    follower = None if ledger is None else ScheduleFollower.of(config, network, node,
                                                               addresses, ledger)
    return ChainServices(node, sender, addresses, credits, minter, mirror, addresses.chain_id,
                         follower=follower)


def _tester_key(node: ChainNode) -> bytes:
    """A fresh minter key for the in-process chain, funded from its first (unlocked)
    account: that chain lives as long as this process, and so does the key."""
    key = secrets.token_bytes(32)
    address = TxSender(node, key).address
    w3 = node.w3
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address,
                                  "value": Wei(_TESTER_FUNDING_WEI)})
    w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    return key
