"""The edge agent's configuration: a TOML file plus ``SENKEN_EDGE_*`` environment variables.

Example (``senken edge init`` writes one)::

    device_id = "pv-plant-7-meter-1"
    state_dir = "/var/lib/senken-edge"

    [serial]
    port = "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0"
    baudrate = 115200

    [mqtt]
    host = "broker.example.org"
    port = 8883
    tls_ca_file = "/etc/senken/ca.pem"

Environment: ``SENKEN_EDGE_MQTT__HOST=...`` overrides ``[mqtt] host``; ``SENKEN_EDGE_CONFIG``
names the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from senken_core.config import build, load_config, setting
from senken_core.reading import DEVICE_ID_PATTERN
from senken_core.sensors import SENSOR_KINDS
from senken_core.topics import DEFAULT_PREFIX

__all__ = ["DEFAULT_STATE_DIR", "EdgeConfig", "MqttConfig", "load_edge_config"]

DEFAULT_STATE_DIR = Path(os.environ.get("SENKEN_EDGE_HOME", "~/.senken/edge")).expanduser()
_PLACEHOLDERS = {"changeme", "change-me", "password", "secret", "xxx", ""}


def _known_kind(v: str) -> None:
    if v not in SENSOR_KINDS:
        raise ValueError(f"unknown sensor kind {v!r}; known: {', '.join(SENSOR_KINDS)}")


def _hex_sha256(v: str) -> None:
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ValueError("sha256 must be 64 lower-case hex digits")


def _device_id(v: str) -> None:
    if not DEVICE_ID_PATTERN.match(v):
        raise ValueError(
            "device_id must be 3-63 characters of a-z, 0-9 and '-', starting with a letter "
            "or digit"
        )


@dataclass(frozen=True, slots=True)
class SerialConfig:
    port: str = setting(doc="serial device, e.g. /dev/serial/by-id/...")
    baudrate: int = setting(115200, gt=0, le=4_000_000)
    kind: str | None = setting(None, check=_known_kind,
                               doc="expected sensor kind; frames of others rejected")


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
    keepalive_s: int = setting(30, ge=5, le=3600)
    session_expiry_s: int = setting(7 * 86400, ge=0)
    topic_prefix: str = DEFAULT_PREFIX
    protocol: Literal["5", "3.1.1"] = setting("5", doc="MQTT protocol version")

    def __post_init__(self) -> None:
        if self.password is not None and self.password.strip().lower() in _PLACEHOLDERS:
            raise ValueError("mqtt password is a placeholder; set the real one or remove it")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set mqtt password or password_file, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")

    def read_password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text("utf-8").strip()
        return self.password


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    max_readings: int = setting(1_000_000, ge=100, doc="size cap; full = refuse newest")
    drain_rate_per_s: float = setting(2000.0, gt=0, doc="backlog drain bound")
    batch_max: int = setting(64, ge=1, le=512, doc="readings per MQTT message")
    inflight_max: int = setting(32, ge=1, le=1000, doc="unacknowledged MQTT messages")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    path: Path | None = setting(None, doc="TFLite file; default: the packaged model")
    sha256: str | None = setting(None, check=_hex_sha256,
                                 doc="expected hex sha256 of the model file")


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    device_id: str = setting(check=_device_id)
    serial: SerialConfig = setting(doc="the [serial] section, with at least port")
    state_dir: Path = DEFAULT_STATE_DIR
    mqtt: MqttConfig = setting(default_factory=MqttConfig)
    outbox: OutboxConfig = setting(default_factory=OutboxConfig)
    model: ModelConfig = setting(default_factory=ModelConfig)
    heartbeat_interval_s: float = setting(30.0, gt=0)
    max_clock_skew_s: float = setting(120.0, gt=0, doc="device vs agent clock tolerance")
    pipeline_threads: int = setting(
        2, ge=1, le=2,
        doc="2: sign and store on a thread of their own (2+ cores); 1: one thread",
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> EdgeConfig:
        """Build from plain data (as a TOML file holds it); raises ConfigError."""
        return build(cls, data, source)

    @property
    def key_path(self) -> Path:
        return self.state_dir / "device.key"

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / "outbox.db"

    @property
    def status_path(self) -> Path:
        return self.state_dir / "status.json"


def default_config_path() -> Path:
    env = os.environ.get("SENKEN_EDGE_CONFIG")
    return Path(env) if env else DEFAULT_STATE_DIR / "edge.toml"


def load_edge_config(path: Path | None = None) -> EdgeConfig:
    """Load and validate the agent's config; raises ConfigError listing every bad field."""
    return load_config(EdgeConfig, path or default_config_path(), "SENKEN_EDGE_")
