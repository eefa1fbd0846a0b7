"""Counters and the last error, shared by the agent's threads and written to status.json."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field, fields
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
        """Every field, JSON-ready (counters as plain dicts)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["frames_rejected"] = dict(self.frames_rejected)
        return out


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
