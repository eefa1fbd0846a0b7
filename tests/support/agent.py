"""An edge agent run as a real process (`senken edge run`), as a technician would run it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from senken_core.keys import DeviceKey
from tests.support.process import ServiceProcess
from tests.support.waiting import wait_until


def make_device(state_dir: Path, device_id: str, port: str, broker_port: int, prefix: str,
                **sections: dict[str, Any]) -> tuple[Path, bytes]:
    """Create a device's key and config; returns (config path, public key)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    key = DeviceKey.generate()
    key.save(state_dir / "device.key")
    cfg: dict[str, Any] = {
        "serial": {"port": port},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": prefix,
                 "keepalive_s": 5},
        "outbox": {},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    lines = [f'device_id = "{device_id}"', f'state_dir = "{state_dir}"',
             "heartbeat_interval_s = 1.0"]
    for name, values in cfg.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = state_dir / "edge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, key.public_key


class AgentProcess(ServiceProcess):
    def __init__(self, config: Path) -> None:
        super().__init__(config, "agent.log")

    def start(self) -> AgentProcess:
        assert self.proc is None
        out = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "senken", "edge", "run", "--config", str(self.config)],
            stdout=out, stderr=subprocess.STDOUT, text=True, env={**os.environ},
        )
        wait_until(lambda: self.status().get("pid") == self.proc.pid or  # type: ignore[union-attr]
                   self.proc.poll() is not None, 30, "the agent to start")  # type: ignore[union-attr]
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def outbox_depth(self) -> int:
        path = self.state_dir / "outbox.db"
        if not path.exists():
            return 0
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
