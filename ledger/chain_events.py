"""Decoding the event logs of Senken's contracts (pure: no node, no database).

:class:`EventCodec` knows every event of every contract in
:data:`senken_core.credit_contracts.CONTRACT_NAMES` by its topic 0 (keccak of the signature) and
decodes a :class:`~ledger.chain_node.RawLog` into a :class:`ChainEvent`: indexed arguments
from the topics (a string, bytes, array or struct indexed is only its keccak hash there, kept
as 32 bytes), the others from the data, with eth-abi. Which contract emitted a log is decided
by its address, not by the topic: two contracts share ``GovernanceTransferred``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address

from ledger.chain_node import RawLog
from senken_core.credit_contracts import CONTRACT_NAMES, load_artifact

__all__ = ["ChainEvent", "EventCodec", "abi_type", "json_value"]

_DYNAMIC_PREFIXES = ("string", "bytes", "tuple")


def abi_type(item: dict[str, Any]) -> str:
    """The canonical ABI type of an input (tuples spelled out: ``(string,uint64)[]``)."""
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in item["components"]) + ")" + kind[5:]
    return kind


def _hashed_when_indexed(kind: str) -> bool:
    return kind.endswith("]") or kind in ("string", "bytes") or kind.startswith(("(", "tuple"))


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """A decoded log: which contract (by name), which event, its arguments by name."""

    contract: str
    address: str
    name: str
    args: dict[str, Any]
    block_number: int
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    inputs: tuple[tuple[str, str, bool], ...]  # (name, ABI type, indexed)


class EventCodec:
    """Topic 0 -> event, for every contract; decodes logs of known addresses."""

    def __init__(self, addresses: dict[str, str] | None = None) -> None:
        """``addresses``: contract name -> address; logs of other addresses are not ours."""
        self._specs: dict[tuple[str, bytes], _Spec] = {}
        self.topics: dict[tuple[str, str], bytes] = {}
        for contract in CONTRACT_NAMES:
            for item in load_artifact(contract).abi:
                if item.get("type") != "event" or item.get("anonymous"):
                    continue
                topic = bytes(event_abi_to_log_topic(item))  # type: ignore[arg-type]
                inputs = tuple((i["name"], abi_type(i), bool(i.get("indexed")))
                               for i in item["inputs"])
                self._specs[(contract, topic)] = _Spec(item["name"], inputs)
                self.topics[(contract, item["name"])] = topic
        self._by_address: dict[str, str] = {}
        for name, address in (addresses or {}).items():
            self._by_address[to_checksum_address(address)] = name

    def topic(self, contract: str, event: str) -> bytes:
        """Topic 0 of ``contract``'s ``event``; KeyError if it has none."""
        return self.topics[(contract, event)]

    def decode(self, log: RawLog, contract: str | None = None) -> ChainEvent | None:
        """The event, or None for a log of an unknown address or topic, or one that does not
        decode (malformed data never raises)."""
        name = contract or self._by_address.get(log.address)
        if name is None or not log.topics:
            return None
        spec = self._specs.get((name, log.topics[0]))
        if spec is None:
            return None
        indexed = [(n, t) for n, t, ix in spec.inputs if ix]
        plain = [(n, t) for n, t, ix in spec.inputs if not ix]
        if len(log.topics) != 1 + len(indexed):
            return None
        args: dict[str, Any] = {}
        try:
            for (n, t), topic in zip(indexed, log.topics[1:], strict=True):
                args[n] = topic if _hashed_when_indexed(t) else abi_decode([t], topic)[0]
            values = abi_decode([t for _, t in plain], log.data) if plain else ()
        except (DecodingError, ValueError, OverflowError):
            return None
        for (n, _), v in zip(plain, values, strict=True):
            args[n] = v
        for n, t, _ in spec.inputs:
            if t == "address":
                args[n] = to_checksum_address(args[n])
            elif t == "address[]":
                args[n] = [to_checksum_address(a) for a in args[n]]
        return ChainEvent(name, log.address, spec.name, args, log.block_number, log.tx_hash,
                          log.log_index)


def json_value(value: Any) -> Any:
    """``value`` as JSON-safe data: bytes as 0x hex, integers beyond 2**53 (where JavaScript
    loses digits) as decimal strings, tuples as lists."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else str(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)
