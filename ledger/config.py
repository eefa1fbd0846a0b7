"""The ledger's configuration: a TOML file plus ``SENKEN_LEDGER_*`` environment variables.

Example (``senken ledger init`` writes one)::

    state_dir = "/var/lib/senken-ledger"
    network_file = "/etc/senken/network.toml"
    # database_url = "postgresql://ledger@db.example.org/ledger"   (default: embedded SQLite)

    [mqtt]
    host = "broker.example.org"
    port = 8883
    tls_ca_file = "/etc/senken/ca.pem"

    [api]
    host = "0.0.0.0"
    port = 8470

    [timeseries]            # optional: export readings to InfluxDB / VictoriaMetrics
    url = "http://127.0.0.1:8428"

    [chain]                 # optional: follow governance and mint every logged attestation
                            # (docs/ledger.md, Governance and Minting)
    url = "http://127.0.0.1:8545"       # or "eth-tester": a chain inside this process
    minter_key_file = "/etc/senken/minter.key"
    addresses_file = "/etc/senken/addresses.json"    # senken chain deploy --out
    activation_delay_s = 600            # optional: the network file's by default

Environment: ``SENKEN_LEDGER_MQTT__HOST=...`` overrides ``[mqtt] host``;
``SENKEN_LEDGER_CONFIG`` names the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from senken_core.config import build, load_config, setting

__all__ = ["DEFAULT_STATE_DIR", "ApiConfig", "ChainConfig", "LedgerConfig", "MqttConfig",
           "TimeseriesConfig", "default_config_path", "load_ledger_config"]

DEFAULT_STATE_DIR = Path(os.environ.get("SENKEN_LEDGER_HOME", "~/.senken/ledger")).expanduser()
_PLACEHOLDERS = {"changeme", "change-me", "password", "secret", "xxx", "token", ""}


def _database_url(v: str) -> None:
    if not v.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        raise ValueError("must be sqlite:///<path> or postgresql://user@host/db")


def _client_id(v: str) -> None:
    if not 1 <= len(v) <= 64 or not v.isascii() or not v.isprintable():
        raise ValueError("must be 1-64 printable ASCII characters")


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = setting(1883, gt=0, lt=65536)
    username: str | None = None
    password_file: Path | None = setting(None, doc="file holding the broker password")
    tls_ca_file: Path | None = setting(None, doc="CA to trust for the broker (enables TLS)")
    client_id: str = setting("senken-ledger", check=_client_id,
                             doc="fixed: the broker keeps this session's queue")
    session_expiry_s: int = setting(7 * 86400, ge=0, lt=2**32,
                                    doc="how long the broker queues certificates for us")
    keepalive_s: int = setting(30, ge=5, le=3600)
    protocol: Literal["5", "3.1.1"] = setting(
        "5", doc="MQTT version; 3.1.1 for a broker without MQTT 5 (amqtt): clean session off "
                 "instead of clean start off, the broker's own session expiry")

    def read_password(self) -> str | None:
        if self.password_file is None:
            return None
        return self.password_file.read_text("utf-8").strip()


@dataclass(frozen=True, slots=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = setting(8470, ge=0, lt=65536, doc="0: any free port")


@dataclass(frozen=True, slots=True)
class TimeseriesConfig:
    url: str | None = setting(None, doc="InfluxDB / VictoriaMetrics URL; unset: history "
                                        "stays in the ledger database only")
    token: str | None = None
    org: str = "senken"
    bucket: str = "senken"
    batch_size: int = setting(5000, ge=1, le=100_000)
    retry_max_s: float = setting(30.0, gt=0, le=3600)

    def __post_init__(self) -> None:
        if self.token is not None and self.token.strip().lower() in _PLACEHOLDERS:
            raise ValueError("timeseries token is a placeholder; set the real one or remove it")


def _chain_url(v: str) -> None:
    if v != "eth-tester" and not v.startswith(("http://", "https://")):
        raise ValueError('must be "eth-tester" or an http(s):// JSON-RPC URL')


@dataclass(frozen=True, slots=True)
class ChainConfig:
    url: str | None = setting(None, check=_chain_url,
                              doc='"eth-tester" (a chain in this process, gone at exit) or a '
                                  "JSON-RPC URL; unset: no minting")
    chain_id: int | None = setting(None, ge=1, doc="expected chain id; default: the "
                                                   "addresses file's")
    minter_key_file: Path | None = setting(None, doc="secp256k1 key that sends (and pays for) "
                                                     "the mints, mode 0600; eth-tester: a "
                                                     "fresh funded key if unset")
    addresses_file: Path | None = setting(None, doc="contract addresses JSON (senken chain "
                                                    "deploy --out)")
    confirmations: int = setting(1, ge=1, le=1000, doc="blocks a mint's receipt must be deep "
                                                       "to count as minted, and a block to "
                                                       "have its validator set and terms read")
    poll_interval_s: float = setting(1.0, gt=0, le=600, doc="how often to look at the log and "
                                                            "the chain when idle")
    receipt_timeout_s: float = setting(120.0, gt=0, le=86_400,
                                       doc="without a receipt this long: re-send (dropped) or "
                                           "replace (pending) with a higher fee")
    gas_margin_percent: int = setting(25, ge=0, le=500, doc="added to the gas estimate")
    fee_bump_percent: int = setting(20, ge=10, le=500, doc="per replacement; nodes want >= 10")
    max_in_flight: int = setting(64, ge=1, le=4096, doc="mint transactions sent and not yet "
                                                        "settled")
    reorg_depth: int = setting(12, ge=0, le=10_000, doc="blocks the event mirror re-reads")
    mirror: bool = setting(True, doc="mirror the contracts' events into the database")
    request_timeout_s: float = setting(10.0, gt=0, le=600)
    activation_delay_s: int | None = setting(
        None, ge=0, le=30 * 86400,
        doc="a validator-set change applies to windows starting this long after its block, or "
            "later (docs/protocol.md, section 8); default: the network file's, else 600; if "
            "both are set they must be equal (one value at every validator and the ledger)")


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    network_file: Path | None = setting(None, doc="the network's terms; default "
                                                   "<state_dir>/network.toml")
    database_url: str | None = setting(None, check=_database_url,
                                       doc="default: sqlite:///<state_dir>/ledger.db")
    mqtt: MqttConfig = setting(default_factory=MqttConfig)
    api: ApiConfig = setting(default_factory=ApiConfig)
    timeseries: TimeseriesConfig = setting(default_factory=TimeseriesConfig)
    chain: ChainConfig = setting(default_factory=ChainConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> LedgerConfig:
        """Build from plain data (as a TOML file holds it); raises ConfigError."""
        return build(cls, data, source)

    @property
    def network_path(self) -> Path:
        return self.network_file or self.state_dir / "network.toml"

    @property
    def db_url(self) -> str:
        """The database URL in force (the embedded SQLite file unless one is set)."""
        return self.database_url or f"sqlite:///{self.state_dir / 'ledger.db'}"


def default_config_path() -> Path:
    env = os.environ.get("SENKEN_LEDGER_CONFIG")
    return Path(env) if env else DEFAULT_STATE_DIR / "ledger.toml"


def load_ledger_config(path: Path | None = None) -> LedgerConfig:
    """Load and validate the ledger's config; raises ConfigError listing every bad field."""
    return load_config(LedgerConfig, path or default_config_path(), "SENKEN_LEDGER_")
