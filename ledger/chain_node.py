"""The ledger's Ethereum adapter: one node through web3.py, in process or over JSON-RPC.

Two kinds of node, one interface (:class:`ChainNode`)::

    [chain] url = "eth-tester"          py-evm in this process (eth-tester): the embedded default,
                                        a fresh chain per process, for a demo or a test
    [chain] url = "http://host:8545"    any JSON-RPC node (anvil in the tests, geth, a provider)

:meth:`ChainNode.connect` builds either; ``w3=`` hands it a ``Web3`` that exists already, so a
process that deployed the contracts into its in-process chain (the demo) runs the ledger on the
same chain. Every web3 and transport error is mapped here, and only here, to the tree below;
a revert is decoded to the custom error's name and arguments (``TooFewSignatures(2, 3)``) from
the ABIs of all of Senken's contracts (:func:`senken_core.credit_contracts.error_signatures`).

py-evm is not thread-safe: with eth-tester every call holds one lock, so the minter and the
event mirror (each on a worker thread) can share the chain.

Errors::

    SenkenError
    └── ChainError               the chain or its node failed (.node: the URL, secrets hidden)
        ├── ChainUnavailable     unreachable, timed out, or an answer we cannot use: retry later
        ├── TransactionRejected  the node refused a transaction (.reason: nonce_too_low,
        │                        nonce_too_high, already_known, underpriced, insufficient_funds,
        │                        other)
        └── ContractReverted     a call or a transaction reverted (.error: custom error name,
                                 .args, .data)
"""

from __future__ import annotations

import ast
import contextlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.exceptions import (
    ContractLogicError,
    ProviderConnectionError,
    RequestTimedOut,
    TimeExhausted,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)

from senken_core.credit_contracts import error_signatures
from senken_core.errors import SenkenError

__all__ = [
    "ETH_TESTER",
    "ChainError",
    "ChainNode",
    "ChainUnavailable",
    "ContractReverted",
    "RawLog",
    "Receipt",
    "TransactionRejected",
    "decode_revert",
    "redact_url",
    "revert_data",
]

ETH_TESTER = "eth-tester"
T = TypeVar("T")

_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string), a require message
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256), an assert or an overflow
_DEFAULT_TIP_WEI = 10**9  # 1 gwei, where the node has no eth_maxPriorityFeePerGas
_ETH_TESTER_NONCE = re.compile(r"Invalid transaction nonce: Expected (\d+), but got (\d+)")


class ChainError(SenkenError):
    """The chain or its node failed; ``node`` is the node's address with secrets hidden."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"chain node {node}: {message}")
        self.node = node


class ChainUnavailable(ChainError):
    """The node did not answer (down, unreachable, timed out) or answered nonsense. Nothing
    is known to have happened: look again later."""


class TransactionRejected(ChainError):
    """The node refused a transaction; ``reason`` is a stable code (module docstring)."""

    def __init__(self, node: str, reason: str, message: str) -> None:
        super().__init__(node, f"transaction refused ({reason}): {message}")
        self.reason = reason


class ContractReverted(ChainError):
    """A call or transaction reverted. ``error`` is the custom error's name
    (``AlreadyMinted``, ``TooFewSignatures``, ...; ``Error`` for a require message, ``Panic``,
    ``unknown`` when the data names no error of ours, ``""`` when there was no data)."""

    def __init__(self, node: str, error: str, args: tuple[Any, ...], data: bytes) -> None:
        self.error = error
        self.args_ = args
        self.data = data
        super().__init__(node, f"reverted with {self.signature}")

    @property
    def signature(self) -> str:
        """``Name(arg, ...)``, as a person reads it."""
        shown = ", ".join(_show(a) for a in self.args_)
        return f"{self.error or 'no reason'}({shown})" if self.error else "no reason"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True, slots=True)
class RawLog:
    """One event log as the node returned it (topics and data as bytes)."""

    address: str  # checksummed
    topics: tuple[bytes, ...]
    data: bytes
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined transaction: ``status`` 1 succeeded, 0 reverted."""

    tx_hash: bytes
    status: int
    block_number: int
    block_hash: bytes
    gas_used: int
    contract_address: str | None
    logs: tuple[RawLog, ...]


def redact_url(url: str) -> str:
    """``scheme://host:port`` of a node URL: user, password, path and query (where providers
    put API keys) never reach a log or an error message."""
    if url == ETH_TESTER:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    hidden = "/..." if (parts.path not in ("", "/") or parts.query or parts.username) else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


def revert_data(exc: BaseException) -> bytes | None:
    """The revert data carried by a web3 or eth-tester exception (or one it was raised from).

    JSON-RPC nodes: web3 keeps the hex in ``ContractLogicError.data``. eth-tester raises
    ``TransactionFailed`` from py-evm's ``Revert``, whose first argument is the raw bytes.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        data = getattr(current, "data", None)
        if isinstance(data, dict):
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x"):
            try:
                return bytes.fromhex(data[2:])
            except ValueError:
                pass
        for arg in current.args[:1]:
            if isinstance(arg, bytes | bytearray):
                return bytes(arg)
            if isinstance(arg, BaseException) and arg.args and isinstance(arg.args[0], bytes):
                return arg.args[0]
            if isinstance(arg, str) and arg.startswith(("execution reverted: b'",
                                                        'execution reverted: b"')):
                # eth-tester's eth_call keeps only repr(data) in its message
                with contextlib.suppress(ValueError, SyntaxError):
                    value = ast.literal_eval(arg.removeprefix("execution reverted: "))
                    if isinstance(value, bytes):
                        return value
        current = current.__cause__ or current.__context__
    return None


_ERRORS: dict[bytes, str] | None = None


def decode_revert(data: bytes | None) -> tuple[str, tuple[Any, ...]]:
    """``(error name, arguments)`` of revert data; ``("", ())`` for none, ``("unknown", (data,))``
    for a selector of no Senken contract (nor ``Error(string)`` / ``Panic(uint256)``)."""
    global _ERRORS
    if not data:
        return "", ()
    if _ERRORS is None:
        _ERRORS = {_ERROR_STRING: "Error(string)", _PANIC: "Panic(uint256)",
                   **error_signatures()}
    signature = _ERRORS.get(data[:4])
    if signature is None:
        return "unknown", (data,)
    name, _, rest = signature.partition("(")
    types = _split_types(rest[:-1])
    try:
        values = abi_decode(types, data[4:]) if types else ()
    except DecodingError:
        return name, (data[4:],)
    return name, tuple(to_checksum_address(v) if t == "address" else v
                       for t, v in zip(types, values, strict=True))


def _split_types(spec: str) -> list[str]:
    """``"uint256,(string,bool),address"`` -> its three top-level types."""
    out, depth, current = [], 0, ""
    for ch in spec:
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
            continue
        depth += (ch == "(") - (ch == ")")
        current += ch
    if current:
        out.append(current)
    return out


def _bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value.removeprefix("0x"))
    return bytes(value)


def _int(value: Any) -> int:
    """A JSON-RPC quantity (``"0x1a"``) or an integer web3 formatted already."""
    return int(value, 16) if isinstance(value, str) else int(value)


def _raw_log(entry: Any) -> RawLog:
    return RawLog(to_checksum_address(entry["address"]),
                  tuple(_bytes(t) for t in entry["topics"]), _bytes(entry["data"]),
                  _int(entry["blockNumber"]), _bytes(entry["blockHash"]),
                  _bytes(entry["transactionHash"]), _int(entry["logIndex"]))


def _receipt(found: Any) -> Receipt | None:
    if found is None or found.get("blockNumber") is None:
        return None
    address = found.get("contractAddress")
    return Receipt(_bytes(found["transactionHash"]), _int(found["status"]),
                   _int(found["blockNumber"]), _bytes(found["blockHash"]),
                   _int(found["gasUsed"]), to_checksum_address(address) if address else None,
                   tuple(_raw_log(e) for e in found["logs"]))


def _json_tx(tx: dict[str, Any]) -> dict[str, Any]:
    """A call or estimate request as JSON-RPC takes it (quantities and data as hex)."""
    out: dict[str, Any] = {}
    for key, value in tx.items():
        if isinstance(value, bytes):
            out[key] = "0x" + value.hex()
        elif isinstance(value, int) and not isinstance(value, bool):
            out[key] = hex(value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class _RpcFailure:
    message: str
    data: Any


class ChainNode:
    """One node. Every method may raise :class:`ChainUnavailable`; see each for the rest."""

    def __init__(self, w3: Web3, label: str, url: str | None = None,
                 timeout_s: float = 10.0) -> None:
        self.w3 = w3
        self.label = label  # the URL with secrets hidden (redact_url)
        self.in_process = _is_eth_tester(w3)
        self._lock: threading.RLock | None = threading.RLock() if self.in_process else None
        # batches go straight to the URL as one JSON-RPC array (web3's request path costs
        # ~1-5 ms a call; a batch ~0.1-0.3 ms a call on anvil): only for an http(s) node
        self._url = url
        self._timeout_s = timeout_s
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()

    @classmethod
    def connect(cls, url: str, *, w3: Web3 | None = None,
                timeout_s: float = 10.0) -> ChainNode:
        """The node at ``url`` (``"eth-tester"``: a new in-process chain), or ``w3`` as it is
        (``url`` then only labels it). Sends nothing: a node that is down is found on the
        first call."""
        if w3 is not None:
            endpoint = getattr(w3.provider, "endpoint_uri", None)
            return cls(w3, redact_url(url), str(endpoint) if endpoint else None, timeout_s)
        if url == ETH_TESTER:
            try:
                from web3 import EthereumTesterProvider
                return cls(Web3(EthereumTesterProvider()), ETH_TESTER)
            except ImportError as exc:  # eth-tester and py-evm come with the chain extra
                raise ChainError(ETH_TESTER, "eth-tester is not installed; install "
                                 "senken[chain] or set [chain] url to a JSON-RPC node") from exc
        if not url.startswith(("http://", "https://")):
            raise ChainError(redact_url(url), "only http(s):// JSON-RPC URLs and "
                             "\"eth-tester\" are supported")
        # our own retries only: a transaction is never re-sent behind our back
        provider = Web3.HTTPProvider(url, request_kwargs={"timeout": timeout_s},
                                     exception_retry_configuration=None)
        return cls(Web3(provider), redact_url(url), url, timeout_s)

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        if self._lock is None:
            yield
            return
        with self._lock:
            yield

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with transport and node errors mapped; reverts are left to the caller."""
        try:
            with self._guard():
                return fn()
        except ContractLogicError:
            raise
        except (requests.RequestException, ProviderConnectionError, RequestTimedOut,
                TimeExhausted, OSError) as exc:
            raise ChainUnavailable(self.label, f"{what}: {type(exc).__name__}: "
                                   f"{_first_line(exc)}") from exc
        except Web3RPCError as exc:
            raise ChainUnavailable(self.label, f"{what}: {_first_line(exc)}") from exc

    def _revertible(self, what: str, fn: Callable[[], T]) -> T:
        """``_run`` for calls that execute contract code: a revert becomes
        :class:`ContractReverted` with its decoded custom error."""
        try:
            return self._run(what, fn)
        except ContractLogicError as exc:
            raise self._reverted(exc) from exc
        except ChainUnavailable:
            raise
        except Exception as exc:
            if _is_tester_revert(exc):
                raise self._reverted(exc) from exc
            raise

    def _reverted(self, exc: BaseException) -> ContractReverted:
        data = revert_data(exc) or b""
        name, args = decode_revert(data)
        return ContractReverted(self.label, name, args, data)

    # -- reading -------------------------------------------------------------------------

    def chain_id(self) -> int:
        return int(self._run("eth_chainId", lambda: self.w3.eth.chain_id))

    def block_number(self) -> int:
        return int(self._run("eth_blockNumber", lambda: self.w3.eth.block_number))

    def base_fee(self) -> int | None:
        """The latest block's base fee (EIP-1559), or None where the chain has none."""
        block = self._run("eth_getBlockByNumber", lambda: self.w3.eth.get_block("latest"))
        fee = block.get("baseFeePerGas")
        return None if fee is None else int(fee)

    def max_priority_fee(self) -> int:
        """The node's suggested tip; 1 gwei where it has no ``eth_maxPriorityFeePerGas``."""
        try:
            return int(self._run("eth_maxPriorityFeePerGas",
                                 lambda: self.w3.eth.max_priority_fee))
        except ChainUnavailable as exc:
            if isinstance(exc.__cause__, Web3RPCError):  # the method is not there
                return _DEFAULT_TIP_WEI
            raise

    def gas_price(self) -> int:
        return int(self._run("eth_gasPrice", lambda: self.w3.eth.gas_price))

    def nonce(self, address: str, block: str = "pending") -> int:
        """Transactions sent from ``address``: mined (``latest``) or also pooled
        (``pending``)."""
        return int(self._run("eth_getTransactionCount", lambda: self.w3.eth.get_transaction_count(
            to_checksum_address(address), block)))  # type: ignore[arg-type]

    def balance(self, address: str) -> int:
        return int(self._run("eth_getBalance",
                             lambda: self.w3.eth.get_balance(to_checksum_address(address))))

    def code(self, address: str) -> bytes:
        return bytes(self._run("eth_getCode",
                               lambda: self.w3.eth.get_code(to_checksum_address(address))))

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        """The receipt, or None while the transaction is not mined (or unknown)."""
        def get() -> Any:
            try:
                return self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                return None

        return _receipt(self._run("eth_getTransactionReceipt", get))

    def is_pending(self, tx_hash: bytes) -> bool:
        """True if the node holds the transaction unmined (in its pool)."""
        def get() -> Any:
            try:
                return self.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                return None

        found = self._run("eth_getTransactionByHash", get)
        return found is not None and found.get("blockNumber") is None

    def logs(self, addresses: Sequence[str], from_block: int, to_block: int,
             topics: Sequence[bytes | None] | None = None) -> list[RawLog]:
        """Logs of ``addresses`` in blocks ``from_block .. to_block`` (inclusive), in order."""
        query: dict[str, Any] = {"address": [to_checksum_address(a) for a in addresses],
                                 "fromBlock": from_block, "toBlock": to_block}
        if topics:
            query["topics"] = [None if t is None else "0x" + t.hex() for t in topics]
        found = self._run("eth_getLogs", lambda: self.w3.eth.get_logs(query))  # type: ignore[arg-type]
        return sorted((_raw_log(e) for e in found), key=lambda g: (g.block_number, g.log_index))

    # -- executing -----------------------------------------------------------------------

    def call(self, tx: dict[str, Any], block: int | str = "latest") -> bytes:
        """``eth_call``; raises :class:`ContractReverted`."""
        return bytes(self._revertible("eth_call", lambda: self.w3.eth.call(
            tx, block_identifier=block)))  # type: ignore[arg-type]

    def estimate_gas(self, tx: dict[str, Any]) -> int:
        """``eth_estimateGas``; raises :class:`ContractReverted` (the transaction would
        revert: the custom error says why)."""
        return int(self._revertible("eth_estimateGas",
                                    lambda: self.w3.eth.estimate_gas(tx)))  # type: ignore[arg-type]

    def send_raw(self, raw: bytes) -> bytes:
        """Broadcast a signed transaction; its hash. Raises :class:`TransactionRejected`
        (``already_known`` too: the caller decides whether that is fine)."""
        try:
            with self._guard():
                return bytes(self.w3.eth.send_raw_transaction(raw))
        except Web3RPCError as exc:
            raise self._rejected(_first_line(exc)) from exc
        except (requests.RequestException, ProviderConnectionError, RequestTimedOut,
                OSError) as exc:
            raise ChainUnavailable(self.label, f"eth_sendRawTransaction: "
                                   f"{type(exc).__name__}: {_first_line(exc)}") from exc
        except Web3Exception as exc:
            raise self._rejected(_first_line(exc)) from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("eth_tester", "eth_utils", "eth.")):
                raise self._rejected(_first_line(exc)) from exc  # eth-tester's validation
            raise

    # -- batches (one JSON-RPC array per call over HTTP; one call at a time in process) ----

    def _batch(self, method: str, params: Sequence[list[Any]]) -> list[Any]:
        """Results of ``method`` for each params list, a :class:`_RpcFailure` where the node
        answered an error. Raises ChainUnavailable for the whole batch."""
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = requests.Session()
        body = [{"jsonrpc": "2.0", "id": i, "method": method, "params": p}
                for i, p in enumerate(params)]
        assert self._url is not None
        try:
            payload: Any = body
            reply = self._session.post(self._url, json=payload, timeout=self._timeout_s)
            reply.raise_for_status()
            answers = reply.json()
        except (requests.RequestException, ValueError, OSError) as exc:
            raise ChainUnavailable(self.label, f"{method} batch: {type(exc).__name__}: "
                                   f"{_first_line(exc)}") from exc
        if not isinstance(answers, list):
            raise ChainUnavailable(self.label, f"{method} batch: not a batch answer")
        by_id: dict[int, Any] = {}
        for answer in answers:
            if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
                continue
            error = answer.get("error")
            if error is not None:
                by_id[answer["id"]] = _RpcFailure(str(error.get("message", error))
                                                  if isinstance(error, dict) else str(error),
                                                  error.get("data")
                                                  if isinstance(error, dict) else None)
            else:
                by_id[answer["id"]] = answer.get("result")
        if len(by_id) != len(params):
            raise ChainUnavailable(self.label, f"{method} batch: {len(by_id)} answers to "
                                   f"{len(params)} requests")
        return [by_id[i] for i in range(len(params))]

    def _chunks(self, method: str, params: Sequence[list[Any]],
                size: int = 500) -> list[Any]:
        out: list[Any] = []
        for start in range(0, len(params), size):
            out += self._batch(method, params[start:start + size])
        return out

    def _reverted_answer(self, method: str, result: _RpcFailure) -> ContractReverted:
        data = result.data if isinstance(result.data, str) else None
        raw = _bytes(data) if data and data.startswith("0x") else b""
        if not raw and "revert" not in result.message.lower():
            raise ChainUnavailable(self.label, f"{method}: {result.message}")
        name, args = decode_revert(raw)
        return ContractReverted(self.label, name, args, raw)

    def call_many(self, txs: Sequence[dict[str, Any]]) -> list[bytes | ContractReverted]:
        """:meth:`call` of each on the latest block (a revert in its place, not raised)."""
        return self._many("eth_call", txs, self.call, lambda tx: [_json_tx(tx), "latest"],
                          _bytes)

    def estimate_gas_many(self, txs: Sequence[dict[str, Any]]) -> list[int | ContractReverted]:
        """:meth:`estimate_gas` of each (a revert is returned in its place, not raised)."""
        return self._many("eth_estimateGas", txs, self.estimate_gas,
                          lambda tx: [_json_tx(tx)], _int)

    def _many(self, method: str, txs: Sequence[dict[str, Any]],
              one: Callable[[dict[str, Any]], T], params: Callable[[dict[str, Any]], list[Any]],
              convert: Callable[[Any], T]) -> list[T | ContractReverted]:
        """``method`` for each of ``txs``: one JSON-RPC batch (in chunks) on a node, one call
        at a time (``one``) in process; a revert in its place, not raised."""
        if self._url is None:
            out: list[T | ContractReverted] = []
            for tx in txs:
                try:
                    out.append(one(tx))
                except ContractReverted as exc:
                    out.append(exc)
            return out
        results = self._chunks(method, [params(tx) for tx in txs])
        return [self._reverted_answer(method, r) if isinstance(r, _RpcFailure) else convert(r)
                for r in results]

    def send_raw_many(self, raws: Sequence[bytes]) -> list[TransactionRejected | None]:
        """:meth:`send_raw` of each, in order; None where the node took it. Raises
        ChainUnavailable (then any of them may or may not have arrived)."""
        if self._url is None:
            out: list[TransactionRejected | None] = []
            for raw in raws:
                try:
                    self.send_raw(raw)
                    out.append(None)
                except TransactionRejected as exc:
                    out.append(exc)
            return out
        results = self._chunks("eth_sendRawTransaction", [["0x" + r.hex()] for r in raws])
        return [self._rejected(r.message) if isinstance(r, _RpcFailure) else None
                for r in results]

    def receipts(self, tx_hashes: Sequence[bytes]) -> list[Receipt | None]:
        """:meth:`receipt` of each."""
        if self._url is None:
            return [self.receipt(h) for h in tx_hashes]
        results = self._chunks("eth_getTransactionReceipt",
                               [["0x" + h.hex()] for h in tx_hashes])
        out: list[Receipt | None] = []
        for r in results:
            if isinstance(r, _RpcFailure):
                raise ChainUnavailable(self.label, f"eth_getTransactionReceipt: {r.message}")
            out.append(_receipt(r))
        return out

    def _rejected(self, message: str) -> TransactionRejected:
        text = message.lower()
        tester = _ETH_TESTER_NONCE.search(message)
        if tester is not None:
            expected, got = int(tester.group(1)), int(tester.group(2))
            reason = "nonce_too_low" if got < expected else "nonce_too_high"
        elif "nonce too low" in text or "nonce is too low" in text:
            reason = "nonce_too_low"
        elif "nonce too high" in text:
            reason = "nonce_too_high"
        elif "already known" in text or "already imported" in text or "known transaction" in text:
            reason = "already_known"
        elif "underpriced" in text or "fee too low" in text or "max fee per gas less" in text:
            reason = "underpriced"
        elif "insufficient funds" in text:
            reason = "insufficient_funds"
        else:
            reason = "other"
        return TransactionRejected(self.label, reason, message)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_eth_tester(w3: Web3) -> bool:
    return type(w3.provider).__name__ == "EthereumTesterProvider"


def _is_tester_revert(exc: BaseException) -> bool:
    """eth-tester's TransactionFailed (py-evm's Revert inside), without importing eth-tester
    (it is there only with the chain extra)."""
    return type(exc).__name__ == "TransactionFailed" and type(exc).__module__.startswith(
        "eth_tester")
