"""The validator's configuration: a TOML file plus ``SENKEN_VALIDATOR_*`` environment variables.

Example (``senken validator init`` writes one)::

    state_dir = "/var/lib/senken-validator"        # validator.key, status.json, lock
    network_file = "/etc/senken/network.toml"      # the network's shared terms
    grace_s = 2.0
    round_timeout_s = 2.0

    [mqtt]
    host = "broker.example.org"
    port = 8883
    tls_ca_file = "/etc/senken/ca.pem"
    username = "0x5fbd..."                         # the ACL confines it to its own subtree
    password_file = "/etc/senken/validator.pass"

    [http]                                         # /metrics and /health
    host = "127.0.0.1"
    port = 9464                                    # 0: any free port (see status.json)

    [model]
    check = true                                   # re-run the anomaly model on each reading

    [chain]                                        # optional: the set and terms from the chain
    url = "http://127.0.0.1:8545"                  # JSON-RPC of a node of the network's chain
    poll_s = 15.0
    activation_delay_s = 600                       # optional: the network file's by default

Without ``[chain]`` the validator set and the methodology terms are the network file's, for
every window. With it they come from the contracts (docs/protocol.md, section 8); the
addresses default to the credit contract's ``validatorSet()`` and ``registry()`` (the network
file's ``credit_contract``).

The topic prefix is the network's (``topic_prefix`` in the network file): every member uses
the same. Environment: ``SENKEN_VALIDATOR_MQTT__HOST=...`` overrides ``[mqtt] host``;
``SENKEN_VALIDATOR_CONFIG`` names the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from senken_core.config import build, load_config, setting
from senken_core.network import parse_address

__all__ = [
    "DEFAULT_STATE_DIR",
    "ChainConfig",
    "HttpConfig",
    "ModelCheckConfig",
    "MqttConfig",
    "ValidatorConfig",
    "default_config_path",
    "load_validator_config",
]

DEFAULT_STATE_DIR = Path(os.environ.get("SENKEN_VALIDATOR_HOME",
                                        "~/.senken/validator")).expanduser()
_PLACEHOLDERS = {"changeme", "change-me", "password", "secret", "xxx", ""}


def _hex_sha256(v: str) -> None:
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ValueError("sha256 must be 64 lower-case hex digits")


def _address(v: str) -> None:
    parse_address(v)


def _rpc_url(v: str) -> None:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// JSON-RPC URL")


def _client_id(v: str) -> None:
    if not v or len(v.encode()) > 65535 or any(c in v for c in "\x00/#+"):
        raise ValueError("client_id must be non-empty, without '/', '#', '+' or NUL")


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = setting(1883, gt=0, lt=65536)
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    client_id: str | None = setting(None, check=_client_id,
                                    doc="default: validator-<0x address>")
    keepalive_s: int = setting(30, ge=5, le=3600)
    session_expiry_s: int = setting(
        7 * 86400, ge=0, lt=2**32,
        doc="how long the broker queues messages for this validator while it is down")
    reconnect_min_s: float = setting(0.5, gt=0, le=60)
    reconnect_max_s: float = setting(30.0, gt=0, le=3600)
    connect_timeout_s: float = setting(10.0, gt=0, le=300)
    protocol: Literal["5", "3.1.1"] = setting(
        "5", doc="MQTT version; 3.1.1 for a broker without MQTT 5 (amqtt): the broker's own "
                 "session expiry, and retained registry records again on every resubscription")

    def __post_init__(self) -> None:
        if self.password is not None and self.password.strip().lower() in _PLACEHOLDERS:
            raise ValueError("mqtt password is a placeholder; set the real one or remove it")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set mqtt password or password_file, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s is above reconnect_max_s")

    def read_password(self) -> str | None:
        """The password (from ``password_file`` if set); raises OSError if it cannot be read."""
        if self.password_file is not None:
            return self.password_file.read_text("utf-8").strip()
        return self.password


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Where ``/metrics`` (Prometheus) and ``/health`` (JSON) listen."""

    host: str = "127.0.0.1"
    port: int = setting(9464, ge=0, lt=65536, doc="0: any free port, written to status.json")


@dataclass(frozen=True, slots=True)
class ModelCheckConfig:
    check: bool = setting(True, doc="re-run the anomaly model over each device's readings")
    path: Path | None = setting(None, doc="TFLite file; default: the packaged model")
    sha256: str | None = setting(None, check=_hex_sha256,
                                 doc="expected hex sha256 of the model file")


@dataclass(frozen=True, slots=True)
class ChainConfig:
    """Where the validator reads the validator set and the methodology terms (issue 4)."""

    url: str = setting(check=_rpc_url, doc="JSON-RPC URL of a node of the network's chain")
    validator_set: str | None = setting(
        None, check=_address, doc="ValidatorSet address; default: the credit contract's")
    project_registry: str | None = setting(
        None, check=_address, doc="ProjectRegistry address; default: the credit contract's")
    poll_s: float = setting(15.0, gt=0, le=3600, doc="how often the chain is read")
    activation_delay_s: int | None = setting(
        None, ge=0, le=30 * 86400,
        doc="a set change applies to windows starting this long after its block, or later; "
            "default: the network file's, else 600; if both are set they must be equal (one "
            "value at every validator and the ledger); above poll_s")
    confirmations: int = setting(0, ge=0, le=10_000,
                                 doc="read the chain this many blocks below its head")
    from_block: int = setting(0, ge=0, doc="where to look for ValidatorSetChanged events "
                                           "(the ValidatorSet's deployment block or earlier)")
    timeout_s: float = setting(10.0, gt=0, le=300, doc="per JSON-RPC request")

    def __post_init__(self) -> None:
        if self.activation_delay_s is not None and self.activation_delay_s < self.poll_s:
            raise ValueError(f"activation_delay_s ({self.activation_delay_s}) is below poll_s "
                             f"({self.poll_s}): a change could apply to windows before this "
                             "validator reads it")


@dataclass(frozen=True, slots=True)
class ValidatorConfig:
    network_file: Path = setting(doc="the network's TOML file (senken network init)")
    state_dir: Path = DEFAULT_STATE_DIR
    mqtt: MqttConfig = setting(default_factory=MqttConfig)
    http: HttpConfig = setting(default_factory=HttpConfig)
    model: ModelCheckConfig = setting(default_factory=ModelCheckConfig)
    chain: ChainConfig | None = setting(None, doc="the validator set and terms from the chain")
    grace_s: float = setting(2.0, ge=0, le=3600,
                             doc="wait after a window ends for late readings")
    round_timeout_s: float = setting(2.0, gt=0, le=3600,
                                     doc="an agreement round's leader timeout")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> ValidatorConfig:
        """Build from plain data (as a TOML file holds it); raises ConfigError."""
        return build(cls, data, source)

    @property
    def key_path(self) -> Path:
        return self.state_dir / "validator.key"

    @property
    def status_path(self) -> Path:
        """JSON written at start: pid, address, the HTTP port actually bound."""
        return self.state_dir / "status.json"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "validator.lock"

    def client_id_for(self, address: bytes) -> str:
        """The MQTT client id: fixed across restarts, so the broker keeps the session."""
        return self.mqtt.client_id or f"validator-0x{address.hex()}"


def default_config_path() -> Path:
    env = os.environ.get("SENKEN_VALIDATOR_CONFIG")
    return Path(env) if env else DEFAULT_STATE_DIR / "validator.toml"


def load_validator_config(path: Path | None = None,
                          environ: Mapping[str, str] | None = None) -> ValidatorConfig:
    """Load and validate the validator's config; raises ConfigError listing every bad field."""
    return load_config(ValidatorConfig, path or default_config_path(), "SENKEN_VALIDATOR_",
                       environ)
