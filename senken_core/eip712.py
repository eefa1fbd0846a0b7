"""EIP-712 typed-data hashing, for the flat structs Senken signs (attestations).

The digest a validator signs is the one the credit contract recomputes on chain (issue 4)::

    digest = keccak256(0x19 0x01 || domainSeparator || hashStruct(message))
    hashStruct(s) = keccak256(typeHash || encodeData(s)),  typeHash = keccak256(encodeType)
    domainSeparator = hashStruct(EIP712Domain{name, version, chainId, verifyingContract})

(https://eips.ethereum.org/EIPS/eip-712). The domain binds a signature to one chain and one
contract: a signature made for a test chain or another deployment never verifies on this one.

Only what Senken's structs use is supported: ``string`` (hashed), ``bytes32``, ``address``,
``bool`` and ``uint8`` .. ``uint256``, in flat structs (no nested or array members). A test
checks every digest against eth-account's independent implementation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from Crypto.Hash import keccak

from senken_core.errors import SenkenError

__all__ = ["Domain", "Eip712Error", "StructType", "keccak256", "typed_data_digest"]

_UINT = re.compile(r"uint(8|16|24|32|40|48|56|64|72|80|88|96|104|112|120|128|136|144|152|160|168"
                   r"|176|184|192|200|208|216|224|232|240|248|256)\Z")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Eip712Error(SenkenError):
    """A value that cannot be encoded as its EIP-712 type (wrong type, out of range)."""


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak-256 (the original Keccak padding, not NIST SHA3-256)."""
    return keccak.new(digest_bits=256, data=data).digest()


@dataclass(frozen=True, slots=True)
class StructType:
    """A flat EIP-712 struct type: its name and ``(member, type)`` pairs in declaration order."""

    name: str
    members: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"bad struct name {self.name!r}")
        for member, kind in self.members:
            if not _NAME.match(member):
                raise ValueError(f"bad member name {member!r}")
            if kind not in ("string", "bytes32", "address", "bool") and not _UINT.match(kind):
                raise ValueError(f"unsupported EIP-712 type {kind!r} for {member}")

    @property
    def encode_type(self) -> str:
        return f"{self.name}(" + ",".join(f"{k} {m}" for m, k in self.members) + ")"

    @property
    def type_hash(self) -> bytes:
        return keccak256(self.encode_type.encode("ascii"))

    def hash_struct(self, values: Mapping[str, Any]) -> bytes:
        """keccak256(typeHash || encodeData); raises :class:`Eip712Error` for a bad value."""
        missing = [m for m, _ in self.members if m not in values]
        if missing:
            raise Eip712Error(f"{self.name}: missing {', '.join(missing)}")
        parts = [self.type_hash]
        parts += [_encode_value(self.name, m, k, values[m]) for m, k in self.members]
        return keccak256(b"".join(parts))


def _encode_value(struct: str, member: str, kind: str, value: Any) -> bytes:
    where = f"{struct}.{member} ({kind})"
    if kind == "string":
        if not isinstance(value, str):
            raise Eip712Error(f"{where}: expected a string, got {type(value).__name__}")
        return keccak256(value.encode("utf-8"))
    if kind == "bytes32":
        if not isinstance(value, bytes | bytearray) or len(value) != 32:
            raise Eip712Error(f"{where}: expected 32 bytes")
        return bytes(value)
    if kind == "address":
        if not isinstance(value, bytes | bytearray) or len(value) != 20:
            raise Eip712Error(f"{where}: expected a 20-byte address")
        return bytes(12) + bytes(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise Eip712Error(f"{where}: expected a bool")
        return int(value).to_bytes(32, "big")
    bits = int(kind[4:])
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise Eip712Error(f"{where}: expected an integer in 0 .. 2**{bits} - 1, got {value!r}")
    return value.to_bytes(32, "big")


DOMAIN_TYPE = StructType("EIP712Domain", (("name", "string"), ("version", "string"),
                                          ("chainId", "uint256"),
                                          ("verifyingContract", "address")))


@dataclass(frozen=True, slots=True)
class Domain:
    """The EIP-712 domain: which application, version, chain and contract a signature is for."""

    name: str
    version: str
    chain_id: int
    verifying_contract: bytes  # 20-byte address

    @property
    def separator(self) -> bytes:
        return DOMAIN_TYPE.hash_struct({"name": self.name, "version": self.version,
                                        "chainId": self.chain_id,
                                        "verifyingContract": self.verifying_contract})


def typed_data_digest(domain: Domain, struct: StructType, values: Mapping[str, Any]) -> bytes:
    """The 32-byte digest to sign: keccak256(0x1901 || domainSeparator || hashStruct)."""
    return keccak256(b"\x19\x01" + domain.separator + struct.hash_struct(values))
