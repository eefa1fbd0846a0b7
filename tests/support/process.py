"""What the tests' service processes (edge agents, validators) share: a state directory with
its ``status.json``, and stop, kill and alive as a test needs them."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any


class ServiceProcess:
    """A ``senken ... run`` process a test started (``self.proc``), with its state dir."""

    def __init__(self, config: Path, log_name: str) -> None:
        self.config = config
        self.state_dir = config.parent
        self.proc: subprocess.Popen[str] | None = None
        self.log = self.state_dir / log_name

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self.proc = None
        return code

    def kill(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=20)
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any]:
        """The service's ``status.json`` ({} until it wrote one)."""
        try:
            data = json.loads((self.state_dir / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}
