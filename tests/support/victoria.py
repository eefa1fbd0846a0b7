"""A real VictoriaMetrics started by a test, on a free loopback port, with its own data dir.

Use the ``victoria`` fixture (import it into the test module, or list this module in
``pytest_plugins``); the test may ``stop()`` and ``start()`` it, and the port and the data
survive. ``export(match)`` reads back what is stored, deterministically: it flushes first, and
asks for every timestamp up to tomorrow (an export with the default end, "now", leaves out the
last second's samples).

The server runs with the flags the ledger's exporter relies on
(:data:`ledger.timeseries.VICTORIA_METRICS_FLAGS`: one sample per series and millisecond).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.timeseries import VICTORIA_METRICS_FLAGS
from tests.support.mosquitto import free_port, port_open
from tests.support.waiting import wait_until

BINARY = "victoria-metrics"
_HTTP_TIMEOUT_S = 10.0


class VictoriaMetrics:
    """``start()``/``stop()`` as often as a test likes; the port and the data survive."""

    def __init__(self, workdir: Path, port: int | None = None, binary: str = BINARY) -> None:
        path = shutil.which(binary)
        if path is None:
            raise RuntimeError(f"{binary} is not installed: apt-get install victoria-metrics "
                               "(bash .ci/run installs it)")
        self.binary = path
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = self.dir / "data"
        self.log = self.dir / "victoria-metrics.log"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, "already running"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"-storageDataPath={self.data}",
                 f"-httpListenAddr=127.0.0.1:{self.port}", "-loggerLevel=WARN",
                 *VICTORIA_METRICS_FLAGS],
                stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc
        wait_until(lambda: self._healthy() or proc.poll() is not None, 20,
                   f"victoria-metrics on port {self.port}")
        if proc.poll() is not None:
            self.proc = None
            raise RuntimeError(f"victoria-metrics exited ({proc.returncode}):\n"
                               f"{self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM: it writes what it buffered to disk, as a service stop
        does; SIGKILL: a crash)."""
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        self.proc.wait(timeout=20)
        self.proc = None
        wait_until(lambda: not port_open(self.port), 10,
                   "victoria-metrics to release its port")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _get(self, path: str, **params: str) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=_HTTP_TIMEOUT_S) as resp:
            return bytes(resp.read())

    def flush(self) -> None:
        """Make everything written so far searchable (``/internal/force_flush``)."""
        self._get("/internal/force_flush")

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every series matching the series selector ``match`` (``reading_power_w``,
        ``{__name__=~"reading_.*",device="dev-1"}``), each ``{"metric": {labels},
        "values": [...], "timestamps": [ms, ...]}``, samples in time order."""
        self.flush()
        end_ms = int(time.time() * 1000) + 86_400_000
        body = self._get("/api/v1/export", **{"match[]": match, "start": "0",
                                              "end": str(end_ms)})
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def samples(self, match: str) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
        """``export`` as {sorted labels: [(timestamp_ms, value), ...]}."""
        return {tuple(sorted(s["metric"].items())): list(zip(s["timestamps"], s["values"],
                                                              strict=True))
                for s in self.export(match)}


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics of the test's own, started; the test may stop and start it.

    Fails (never skips) when the binary is missing: CI must run these tests.
    """
    if shutil.which(BINARY) is None:
        pytest.fail(f"{BINARY} is not on PATH: install it (apt-get install victoria-metrics; "
                    "bash .ci/run does) to run the time-series tests", pytrace=False)
    server = VictoriaMetrics(tmp_path / "victoria-metrics")
    server.start()
    yield server
    server.stop()
