"""The gateway's configuration: a TOML file plus ``SENKEN_GATEWAY_*`` environment variables.

Example (``senken gateway init`` writes one)::

    state_dir = "/var/lib/senken-gateway"
    topic_prefix = "senken/v1"

    [api]
    host = "0.0.0.0"
    port = 8080
    admin_token_file = "/var/lib/senken-gateway/admin.token"

    [database]
    url = "postgresql+psycopg://senken@db.example.org/gateway"   # default: SQLite in state_dir

    [mqtt]              # the gateway's own connection, to publish the registry
    host = "127.0.0.1"
    port = 1883
    username = "gateway"
    password_file = "/var/lib/senken-gateway/mqtt.password"

    [broker]            # the Mosquitto whose accounts the gateway manages
    dir = "/etc/mosquitto/senken"        # passwd, acl and mosquitto.conf are written here
    public_host = "broker.example.org"   # what enrolled devices are told
    public_port = 8883
    ca_file = "/etc/mosquitto/certs/ca.pem"
    cert_file = "/etc/mosquitto/certs/server.pem"
    key_file = "/etc/mosquitto/certs/server.key"
    plain_port = 1883                    # services on the broker's host (optional)
    file_owner = "mosquitto"
    pid_file = "/run/mosquitto/senken.pid"

    [[accounts]]        # service accounts, synced at start (or: senken gateway account add)
    name = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
    role = "validator"
    password_file = "/etc/senken/validator-1.mqtt-password"

Environment: ``SENKEN_GATEWAY_API__PORT=...`` overrides ``[api] port``; ``SENKEN_GATEWAY_CONFIG``
names the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.broker_files import BrokerLayout, check_prefix, check_username
from senken_core.config import build, load_config, setting
from senken_core.topics import DEFAULT_PREFIX

__all__ = ["DEFAULT_STATE_DIR", "GatewayConfig", "default_config_path", "load_gateway_config",
           "read_secret_file"]

DEFAULT_STATE_DIR = Path(os.environ.get("SENKEN_GATEWAY_HOME", "~/.senken/gateway")).expanduser()
_PLACEHOLDERS = {"changeme", "change-me", "password", "secret", "xxx", ""}


def read_secret_file(path: Path, what: str) -> str:
    """The one-line secret in ``path``; ValueError (saying what to do) if it is missing,
    readable by others, empty or a placeholder."""
    try:
        info = path.stat()
        text = path.read_text("utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"{what} file {path} does not exist") from None
    except (PermissionError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} file {path}: cannot read it ({exc})") from None
    if info.st_mode & 0o077:
        raise ValueError(f"{what} file {path} is readable by group or others; "
                         f"chmod 600 {path}")
    if text.lower() in _PLACEHOLDERS or "\n" in text:
        raise ValueError(f"{what} file {path} holds a placeholder or several lines; put the "
                         "real secret on one line")
    return text


def _prefix(v: str) -> None:
    check_prefix(v)


def _database_url(v: str) -> None:
    if not v.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
        raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")


@dataclass(frozen=True, slots=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = setting(8080, gt=0, lt=65536)
    admin_token_file: Path | None = setting(
        None, doc="file holding the admin token that registers projects; none: disabled")


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str | None = setting(None, check=_database_url,
                              doc="SQLAlchemy URL; default: SQLite in state_dir")


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = setting(1883, gt=0, lt=65536)
    username: str | None = None
    password_file: Path | None = None
    tls_ca_file: Path | None = None
    client_id: str = "senken-gateway"
    retry_interval_s: float = setting(5.0, gt=0, le=3600, doc="re-publish unpublished records")
    protocol: Literal["5", "3.1.1"] = setting("5", doc="MQTT protocol version")


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    dir: Path | None = setting(None, doc="where passwd, acl and mosquitto.conf go; "
                                         "default: state_dir/broker")
    public_host: str = setting("127.0.0.1", doc="the broker's address, as devices reach it")
    public_port: int = setting(8883, gt=0, lt=65536)
    tls_port: int = setting(8883, ge=0, lt=65536, doc="TLS listener for devices; 0: none")
    tls_bind: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    plain_port: int = setting(0, ge=0, lt=65536,
                              doc="plain listener for services on the host; 0: none")
    plain_bind: str = "127.0.0.1"
    device_tls: bool = setting(True, doc="tell devices to use TLS (needs ca_file)")
    file_owner: str | None = setting(None, doc="user the broker runs as (files are chowned)")
    file_group: str | None = None
    pid_file: Path | None = setting(None, doc="the broker's pid file: reloaded by SIGHUP")
    reload_command: tuple[str, ...] = setting((), doc="instead: a command that reloads it")

    def __post_init__(self) -> None:
        if self.tls_port and None in (self.ca_file, self.cert_file, self.key_file):
            raise ValueError("the TLS listener (broker.tls_port) needs broker.ca_file, cert_file "
                             "and key_file; set tls_port = 0 to run without one")
        if self.device_tls and self.ca_file is None:
            raise ValueError("broker.device_tls needs broker.ca_file (devices must trust the "
                             "broker's CA); set device_tls = false for plain MQTT")
        if not self.tls_port and not self.plain_port:
            raise ValueError("the broker needs a listener: broker.tls_port or plain_port")


@dataclass(frozen=True, slots=True)
class AccountConfig:
    name: str
    role: Literal["validator", "ledger", "gateway"]
    password_file: Path

    def __post_init__(self) -> None:
        check_username(self.name, self.role)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    broker: BrokerConfig = setting(doc="the [broker] section: the Mosquitto it manages")
    state_dir: Path = DEFAULT_STATE_DIR
    topic_prefix: str = setting(DEFAULT_PREFIX, check=_prefix)
    api: ApiConfig = setting(default_factory=ApiConfig)
    database: DatabaseConfig = setting(default_factory=DatabaseConfig)
    mqtt: MqttConfig = setting(default_factory=MqttConfig)
    accounts: tuple[AccountConfig, ...] = ()

    def __post_init__(self) -> None:
        names = [a.name for a in self.accounts]
        if len(set(names)) != len(names):
            raise ValueError("an account is listed twice")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> GatewayConfig:
        """Build from plain data (as a TOML file holds it); raises ConfigError."""
        return build(cls, data, source)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.state_dir / 'gateway.db'}"

    @property
    def broker_dir(self) -> Path:
        return self.broker.dir or self.state_dir / "broker"

    def broker_layout(self) -> BrokerLayout:
        b = self.broker
        return BrokerLayout(password_file=self.broker_dir / "passwd",
                            acl_file=self.broker_dir / "acl", tls_port=b.tls_port or None,
                            tls_bind=b.tls_bind, ca_file=b.ca_file, cert_file=b.cert_file,
                            key_file=b.key_file, plain_port=b.plain_port or None,
                            plain_bind=b.plain_bind, pid_file=b.pid_file)


def default_config_path() -> Path:
    env = os.environ.get("SENKEN_GATEWAY_CONFIG")
    return Path(env) if env else DEFAULT_STATE_DIR / "gateway.toml"


def load_gateway_config(path: Path | None = None) -> GatewayConfig:
    """Load and validate the gateway's config; raises ConfigError listing every bad field."""
    return load_config(GatewayConfig, path or default_config_path(), "SENKEN_GATEWAY_")
