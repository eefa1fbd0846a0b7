"""Attestations: what a validator signs for one device and one time window.

An attestation states, for one device of one project and one window of its project's window
grid: how many readings were accepted and rejected, the metered quantity and the emission
reductions (grams CO2e) they yield under the project's methodology, the Merkle root over the
accepted readings (:mod:`senken_core.merkle`), the anomaly model's hash and the methodology
version. Validators sign its EIP-712 digest (:mod:`senken_core.eip712`) with their secp256k1
keys (:mod:`senken_core.secp256k1`); k identical signatures make a quorum certificate, and the
credit contract recomputes the same digest on chain (issue 4).

Its **id** depends only on (project, device, window start, window length, methodology
version): two attestations of the same window, whatever their contents, share an id, so the
ledger and the contract can refuse to count a window twice whatever the signatures. Windows
lie on the project's grid (``window_start`` a multiple of ``window_seconds``); the grid is a
project parameter, so a window cannot be re-cut to be counted again.

Quantities are integers in the smallest unit credited (DESIGN-NOTES): ``quantity`` in the
methodology's metered unit (Wh for electricity export) and ``co2e_mg``, the emission
reductions in milligrams CO2e (Wh x g/kWh is exactly mg, so grid methodologies round nothing),
each below 2**64 (2**64 mg is 18 million t, far above any window), as the canonical encoding's
integers are; floats only for display.

On the wire (validators exchange attestations over MQTT) an attestation is a canonical CBOR map
(:mod:`senken_core.canonical`); :meth:`Attestation.from_wire` checks every field.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

from senken_core import canonical
from senken_core.eip712 import Domain, StructType, typed_data_digest
from senken_core.errors import EncodingError, PayloadError
from senken_core.reading import DEVICE_ID_PATTERN

__all__ = ["ATTESTATION_KEY_TYPE", "ATTESTATION_TYPE", "Attestation", "senken_domain"]

_WIRE_SCHEMA = 1
_U32, _U64 = 2**32, 2**64

ATTESTATION_TYPE = StructType("Attestation", (
    ("project", "string"),
    ("device", "string"),
    ("windowStart", "uint64"),
    ("windowSeconds", "uint32"),
    ("methodology", "string"),
    ("methodologyVersion", "uint32"),
    ("readingsAccepted", "uint32"),
    ("readingsRejected", "uint32"),
    ("quantity", "uint64"),
    ("co2eMg", "uint64"),
    ("readingsRoot", "bytes32"),
    ("modelHash", "bytes32"),
))
# The id is this struct's hashStruct: the contract computes it with the same typehash.
ATTESTATION_KEY_TYPE = StructType("AttestationKey", (
    ("project", "string"),
    ("device", "string"),
    ("windowStart", "uint64"),
    ("windowSeconds", "uint32"),
    ("methodologyVersion", "uint32"),
))


def senken_domain(chain_id: int, credit_contract: bytes) -> Domain:
    """The EIP-712 domain of attestations for the credit contract at ``credit_contract``."""
    return Domain("Senken", "1", chain_id, credit_contract)


@dataclass(frozen=True, slots=True)
class Attestation:
    """One device's window, as validators attest it. Raises ValueError when built invalid."""

    project: str
    device: str
    window_start: int  # Unix seconds, a multiple of window_seconds
    window_seconds: int
    methodology: str  # e.g. "CDM AMS-I.D"
    methodology_version: int
    readings_accepted: int
    readings_rejected: int
    quantity: int  # metered quantity, methodology's smallest unit (e.g. Wh)
    co2e_mg: int
    readings_root: bytes  # Merkle root (RFC 6962, SHA-256) over the accepted readings
    model_hash: bytes  # sha256 of the anomaly model the readings were scored with

    def __post_init__(self) -> None:
        for name in ("project", "device"):
            value = getattr(self, name)
            if not isinstance(value, str) or not DEVICE_ID_PATTERN.match(value):
                raise ValueError(f"{name} must be 3-63 characters of a-z, 0-9 and '-'")
        if not isinstance(self.methodology, str) or not 0 < len(self.methodology) <= 64:
            raise ValueError("methodology must be a name of 1-64 characters")
        for name, bound in (("window_start", _U64), ("window_seconds", _U32),
                            ("methodology_version", _U32), ("readings_accepted", _U32),
                            ("readings_rejected", _U32), ("quantity", _U64),
                            ("co2e_mg", _U64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound:
                raise ValueError(f"{name} must be an integer in 0 .. {bound - 1}")
        if self.window_seconds == 0 or self.window_start % self.window_seconds:
            raise ValueError("window_start must be a multiple of window_seconds (> 0): windows "
                             "lie on the project's grid")
        for name in ("readings_root", "model_hash"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise ValueError(f"{name} must be 32 bytes")

    def _eip712(self) -> dict[str, Any]:
        return {"project": self.project, "device": self.device, "windowStart": self.window_start,
                "windowSeconds": self.window_seconds, "methodology": self.methodology,
                "methodologyVersion": self.methodology_version,
                "readingsAccepted": self.readings_accepted,
                "readingsRejected": self.readings_rejected, "quantity": self.quantity,
                "co2eMg": self.co2e_mg, "readingsRoot": self.readings_root,
                "modelHash": self.model_hash}

    @property
    def id(self) -> bytes:
        """32 bytes, the same for every attestation of this project, device, window and
        methodology version (see the module docstring)."""
        return _id_of(self)

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 digest validators sign and the contract recomputes."""
        return _digest_of(self, domain)

    def to_wire(self) -> bytes:
        """Canonical CBOR bytes (a map of the fields, plus the schema version)."""
        body: dict[str, canonical.Value] = {f.name: getattr(self, f.name) for f in fields(self)}
        body["schema"] = _WIRE_SCHEMA
        return canonical.encode(body)

    @classmethod
    def from_wire(cls, data: bytes) -> Attestation:
        """Decode and check :meth:`to_wire` bytes; raises :class:`PayloadError` saying what is
        wrong (not canonical CBOR, wrong schema, missing, extra or invalid fields)."""
        try:
            value = canonical.decode(data)
        except EncodingError as exc:
            raise PayloadError(f"attestation: not canonical CBOR ({exc})") from None
        if not isinstance(value, dict):
            raise PayloadError("attestation: expected a map")
        schema = value.get("schema")
        if isinstance(schema, bool) or schema != _WIRE_SCHEMA:
            raise PayloadError(f"attestation: unknown schema {value.get('schema')!r}")
        names = {f.name for f in fields(cls)}
        given = set(value) - {"schema"}
        if given != names:
            missing, extra = sorted(names - given), sorted(given - names)
            raise PayloadError(f"attestation: missing fields {missing}, unknown fields {extra}")
        try:
            return cls(**{name: value[name] for name in names})  # type: ignore[arg-type]
        except ValueError as exc:
            raise PayloadError(f"attestation: {exc}") from None


# A validator computes the digest and id of one attestation for every signature and message
# about it (keccak through pycryptodome: ~0.5 ms a digest): equal attestations, equal results.
@functools.lru_cache(maxsize=4096)
def _digest_of(attestation: Attestation, domain: Domain) -> bytes:
    return typed_data_digest(domain, ATTESTATION_TYPE, attestation._eip712())


@functools.lru_cache(maxsize=4096)
def _id_of(attestation: Attestation) -> bytes:
    return ATTESTATION_KEY_TYPE.hash_struct(attestation._eip712())
