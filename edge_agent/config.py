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
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from senken_core.config import load_config
from senken_core.reading import DEVICE_ID_PATTERN
from senken_core.sensors import SENSOR_KINDS
from senken_core.topics import DEFAULT_PREFIX

__all__ = ["DEFAULT_STATE_DIR", "EdgeConfig", "MqttConfig", "load_edge_config"]

DEFAULT_STATE_DIR = Path(os.environ.get("SENKEN_EDGE_HOME", "~/.senken/edge")).expanduser()
_PLACEHOLDERS = {"changeme", "change-me", "password", "secret", "xxx", ""}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SerialConfig(_Strict):
    port: str = Field(description="serial device, e.g. /dev/serial/by-id/...")
    baudrate: int = Field(115200, gt=0, le=4_000_000)
    kind: str | None = Field(None, description="expected sensor kind; frames of others rejected")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str | None) -> str | None:
        if v is not None and v not in SENSOR_KINDS:
            raise ValueError(f"unknown sensor kind {v!r}; known: {', '.join(SENSOR_KINDS)}")
        return v


class MqttConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(1883, gt=0, lt=65536)
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(7 * 86400, ge=0)
    topic_prefix: str = DEFAULT_PREFIX
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version")

    @model_validator(mode="after")
    def _secrets(self) -> MqttConfig:
        if self.password is not None and self.password.strip().lower() in _PLACEHOLDERS:
            raise ValueError("mqtt password is a placeholder; set the real one or remove it")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set mqtt password or password_file, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    def read_password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text("utf-8").strip()
        return self.password


class OutboxConfig(_Strict):
    max_readings: int = Field(1_000_000, ge=100, description="size cap; full = refuse newest")
    drain_rate_per_s: float = Field(2000.0, gt=0, description="backlog drain bound")
    batch_max: int = Field(64, ge=1, le=512, description="readings per MQTT message")
    inflight_max: int = Field(32, ge=1, le=1000, description="unacknowledged MQTT messages")


class ModelConfig(_Strict):
    path: Path | None = Field(None, description="TFLite file; default: the packaged model")
    sha256: str | None = Field(None, description="expected hex sha256 of the model file")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 64 or any(c not in "0123456789abcdef" for c in v)):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        return v


class EdgeConfig(_Strict):
    device_id: str
    state_dir: Path = DEFAULT_STATE_DIR
    serial: SerialConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    heartbeat_interval_s: float = Field(30.0, gt=0)
    max_clock_skew_s: float = Field(120.0, gt=0, description="device vs agent clock tolerance")

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        if not DEVICE_ID_PATTERN.match(v):
            raise ValueError(
                "device_id must be 3-63 characters of a-z, 0-9 and '-', starting with a letter "
                "or digit"
            )
        return v

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
