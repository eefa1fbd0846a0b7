"""The network's shared terms: validator set, EIP-712 domain, and each project's terms.

Every validator and the ledger load the same file; what it holds is what governance changes
(issue 4 moves it on chain). Example (``senken network init`` writes one)::

    topic_prefix = "senken/v1"
    chain_id = 31337
    credit_contract = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
    threshold = 3
    validators = ["0x...", "0x...", "0x...", "0x..."]
    activation_delay_s = 600  # optional: see NetworkConfig.activation_delay

    [[projects]]
    id = "pv-plant-7"
    owner_key = "<64 hex: the project owner's Ed25519 public key>"
    owner_address = "0x..."   # optional: the EVM address its credits are minted to
    window_seconds = 900
    methodology = "CDM AMS-I.D"
    methodology_version = 1
    grid_ef_g_per_kwh = 700
    model_sha256 = "<64 hex>"

Environment: ``SENKEN_NETWORK_THRESHOLD=...`` and so on; ``SENKEN_NETWORK`` names the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from senken_core.attestation import senken_domain
from senken_core.config import build, load_config, setting
from senken_core.eip712 import Domain
from senken_core.methodology import GridExportAmsID, Methodology
from senken_core.quorum import ValidatorSet
from senken_core.reading import DEVICE_ID_PATTERN
from senken_core.topics import DEFAULT_PREFIX

__all__ = ["DEFAULT_ACTIVATION_DELAY_S", "NetworkConfig", "ProjectConfig", "load_network_config",
           "parse_address"]

DEFAULT_ACTIVATION_DELAY_S = 600


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def parse_address(text: str) -> bytes:
    """A ``0x``-prefixed 20-byte hex address; raises ValueError."""
    # (bytes.fromhex alone would skip whitespace: "0x" + 38 digits + 2 spaces is 19 bytes)
    if (not isinstance(text, str) or not text.startswith("0x") or len(text) != 42
            or not _HEX_DIGITS.issuperset(text[2:])):
        raise ValueError(f"{text!r} is not an address (0x and 40 hex digits)")
    return bytes.fromhex(text[2:])


def _hex32(v: str) -> None:
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ValueError("must be 64 lower-case hex digits")


def _project_id(v: str) -> None:
    if not DEVICE_ID_PATTERN.match(v):
        raise ValueError("must be 3-63 characters of a-z, 0-9 and '-'")


def _address(v: str) -> None:
    parse_address(v)


def _addresses(v: tuple[str, ...]) -> None:
    for a in v:
        parse_address(a)
    if len({a.lower() for a in v}) != len(v):
        raise ValueError("a validator is listed twice")


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    id: str = setting(check=_project_id)
    owner_key: str = setting(check=_hex32, doc="the owner's Ed25519 public key, hex")
    grid_ef_g_per_kwh: int = setting(ge=0, le=10_000, doc="combined-margin grid factor")
    model_sha256: str = setting(check=_hex32, doc="sha256 of the required anomaly model")
    window_seconds: int = setting(900, ge=1, le=31 * 86400)
    methodology: Literal["CDM AMS-I.D"] = "CDM AMS-I.D"
    methodology_version: int = setting(1, ge=1, lt=2**32)
    anomaly_threshold_ppm: int = setting(500_000, ge=1, le=1_000_000)
    # Optional: ``senken chain deploy`` registers the project on chain with this owner, to
    # whom the credit contract mints; a file for a network without a chain needs none.
    owner_address: str | None = setting(None, check=_address,
                                        doc="the owner's EVM address (0x), credits go here")

    @property
    def owner_public_key(self) -> bytes:
        return bytes.fromhex(self.owner_key)

    @property
    def model_hash(self) -> bytes:
        return bytes.fromhex(self.model_sha256)

    def methodology_terms(self) -> Methodology:
        """The project's methodology with its governed parameters."""
        return GridExportAmsID(self.grid_ef_g_per_kwh, self.methodology_version,
                               self.anomaly_threshold_ppm)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    validators: tuple[str, ...] = setting(check=_addresses, doc="members' 0x addresses")
    threshold: int = setting(ge=1, doc="k: signatures a certificate needs")
    chain_id: int = setting(31337, ge=1)
    credit_contract: str = setting("0x" + "00" * 20, check=_address)
    topic_prefix: str = DEFAULT_PREFIX
    projects: tuple[ProjectConfig, ...] = ()
    activation_delay_s: int | None = setting(
        None, ge=0, le=30 * 86400,
        doc="a validator-set change applies to windows starting this long after its block, or "
            "later (docs/protocol.md, section 8): one value for every validator and the ledger")

    def __post_init__(self) -> None:
        if self.threshold > len(self.validators):
            raise ValueError(f"threshold {self.threshold} is above the {len(self.validators)} "
                             "validators")
        ids = [p.id for p in self.projects]
        if len(set(ids)) != len(ids):
            raise ValueError("a project is listed twice")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> NetworkConfig:
        """Build from plain data; raises ConfigError listing every bad field."""
        return build(cls, data, source)

    def activation_delay(self, local: int | None, where: str) -> int:
        """The activation delay a node uses: this file's, or ``local`` (its own config's,
        None where unset) where this file has none, else :data:`DEFAULT_ACTIVATION_DELAY_S`.
        Raises ValueError, naming ``where``, when both are set and differ: nodes that apply a
        set change to different windows judge certificates against different sets."""
        if self.activation_delay_s is None:
            return DEFAULT_ACTIVATION_DELAY_S if local is None else local
        if local is not None and local != self.activation_delay_s:
            raise ValueError(
                f"activation_delay_s is {local} in {where} but {self.activation_delay_s} in the "
                "network file: every validator and the ledger must use one value; remove it "
                f"from {where} (the network file's is used) or make them equal")
        return self.activation_delay_s

    def validator_set(self) -> ValidatorSet:
        return ValidatorSet.of((parse_address(a) for a in self.validators), self.threshold)

    def domain(self) -> Domain:
        return senken_domain(self.chain_id, parse_address(self.credit_contract))

    def owners(self) -> dict[str, bytes]:
        """project id -> owner Ed25519 public key, for :class:`DeviceRegistry`."""
        return {p.id: p.owner_public_key for p in self.projects}

    def project(self, project_id: str) -> ProjectConfig | None:
        for p in self.projects:
            if p.id == project_id:
                return p
        return None


def load_network_config(path: Path) -> NetworkConfig:
    """Load and check the network file; raises ConfigError listing every bad field."""
    return load_config(NetworkConfig, path, "SENKEN_NETWORK_")
