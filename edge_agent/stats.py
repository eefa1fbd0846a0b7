"""Counters and the last error, shared by the agent's threads and written to status.json."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AgentStats", "read_status", "write_status"]


@dataclass
class AgentStats:
    """What the agent did since it started. Plain counters: one writer per field."""

    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    frames_ok: int = 0
    frames_rejected: Counter[str] = field(default_factory=Counter)
    frames_missed: int = 0
    firmware_reboots: int = 0
    clock_skew_frames: int = 0
    readings_signed: int = 0
    readings_refused_full: int = 0
    readings_acked: int = 0
    messages_published: int = 0
    serial_state: str = "starting"
    mqtt_connected: bool = False
    last_error: str | None = None
    last_error_ms: int | None = None
    last_reading_ms: int | None = None

    def error(self, message: str) -> None:
        self.last_error = message
        self.last_error_ms = int(time.time() * 1000)

    def snapshot(self) -> dict[str, Any]:
        return {
            "started_ms": self.started_ms,
            "frames_ok": self.frames_ok,
            "frames_rejected": dict(self.frames_rejected),
            "frames_missed": self.frames_missed,
            "firmware_reboots": self.firmware_reboots,
            "clock_skew_frames": self.clock_skew_frames,
            "readings_signed": self.readings_signed,
            "readings_refused_full": self.readings_refused_full,
            "readings_acked": self.readings_acked,
            "messages_published": self.messages_published,
            "serial_state": self.serial_state,
            "mqtt_connected": self.mqtt_connected,
            "last_error": self.last_error,
            "last_error_ms": self.last_error_ms,
            "last_reading_ms": self.last_reading_ms,
        }


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``status`` as JSON."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=1, sort_keys=True), "utf-8")
    os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
