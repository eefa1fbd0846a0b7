"""``senken ledger run`` as a process of its own, for tests that need the real service (its
config file, its MQTT ingest, its background minter) and to stop or kill it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def get_json(url: str, timeout: float = 5) -> Any:
    """GET ``url``: the decoded JSON body, or the bytes of any other body."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if resp.headers.get_content_type() == "application/json" else body


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


@dataclass
class LedgerProcess:
    config: Path
    api: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LedgerProcess:
        log = (self.config.parent / "ledger.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "senken", "ledger", "run",
                                      "--config", str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        wait_until(lambda: self.health() is not None or self.proc.poll() is not None,  # type: ignore[union-attr]
                   30, "the ledger's API")
        assert self.proc.poll() is None, (self.config.parent / "ledger.log").read_text()
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            return get_json(self.api + "/health", 1)  # type: ignore[no-any-return]
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the process dies where it is, nothing flushed or closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def attestations(self) -> list[dict[str, Any]]:
        return get_json(self.api + "/attestations?limit=1000")["attestations"]  # type: ignore[no-any-return]
