"""The demo's services as real processes: the gateway, the validators and the ledger.

Each runs as ``python -m senken <role> run --config ...`` in a session of its own (so Ctrl-C
reaches the demo alone, which stops them in order), logging to ``<state>/logs/<name>.log``.
The configs are written here, on embedded defaults: SQLite for the gateway and the ledger,
no time-series store, the gateway's broker files in a scratch directory (the demo's broker
lets anyone in, so the gateway has no broker to manage or reload).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from senken.demo_broker import Broker, DemoError, get_json

__all__ = ["Service", "gateway_service", "ledger_service", "start_all", "stop_all",
           "toml_value", "validator_health", "validator_service", "write_network",
           "write_secret"]


def toml_value(value: object) -> str:
    """A TOML value (a JSON string is a TOML basic string)."""
    return json.dumps(str(value) if isinstance(value, Path) else value)


def _toml(top: dict[str, Any], sections: dict[str, dict[str, Any]]) -> str:
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, values in sections.items():
        lines += ["", f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text("utf-8", "replace").splitlines()
                 if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


@dataclass
class Service:
    """One ``senken ... run`` process; ``ready()`` says when it serves."""

    name: str
    args: list[str]
    log: Path
    ready: Callable[[], bool]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "senken", *self.args],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def check(self) -> None:
        """Raise DemoError (one line, naming the log) if the process has ended."""
        if self.proc is not None and self.proc.poll() is not None:
            last = _last_line(self.log)
            raise DemoError(f"the {self.name} stopped (exit code {self.proc.returncode})"
                            + (f": {last}" if last else "") + f" (log: {self.log})")

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start_all(services: Sequence[Service], timeout: float = 60.0) -> None:
    """Start every service and wait until each is ready; DemoError naming the log of the
    first that stops or is not ready in time."""
    for service in services:
        service.start()
    waiting = list(services)
    deadline = time.monotonic() + timeout
    while waiting:
        for service in list(waiting):
            service.check()
            if service.ready():
                waiting.remove(service)
        if waiting and time.monotonic() > deadline:
            service = waiting[0]
            raise DemoError(f"the {service.name} was not ready after {timeout:.0f} s "
                            f"(log: {service.log})")
        if waiting:
            time.sleep(0.1)


def stop_all(services: Iterable[Service]) -> None:
    """SIGTERM to all at once, then wait for each (a slow one does not delay the others)."""
    running = [s for s in services if s.proc is not None and s.proc.poll() is None]
    for service in running:
        assert service.proc is not None
        service.proc.send_signal(signal.SIGTERM)
    for service in running:
        service.stop()


# -- the network file -------------------------------------------------------------------------


def write_network(path: Path, validators: Sequence[str], threshold: int, prefix: str,
                  project: dict[str, Any], chain: dict[str, Any] | None = None) -> None:
    """The network file, written as ``senken network init/add-project`` write it and checked
    by loading it back as the services do; ``chain``: its ``chain_id`` and
    ``credit_contract`` (the EIP-712 domain validators sign for)."""
    from senken.network_cli import render_toml
    from senken_core.errors import ConfigError
    from senken_core.network import load_network_config

    path.write_text(render_toml({"topic_prefix": prefix, **(chain or {}),
                                 "threshold": threshold, "validators": list(validators),
                                 "projects": [project]}), "utf-8")
    try:
        load_network_config(path)
    except ConfigError as exc:  # a bug in the demo
        raise DemoError(f"the demo's network file {path} is invalid: "
                        + "; ".join(exc.problems)) from None


# -- the services -------------------------------------------------------------------------------


def gateway_service(home: Path, logs: Path, broker: Broker, prefix: str, api_port: int,
                    run_id: str) -> Service:
    """A gateway on SQLite; devices are told to use the demo's broker, plain MQTT."""
    import secrets

    home.mkdir(parents=True, exist_ok=True)
    admin = home / "admin.token"
    write_secret(admin, f"senken-admin_{secrets.token_urlsafe(32)}")
    config = home / "gateway.toml"
    config.write_text(_toml({"state_dir": home, "topic_prefix": prefix}, {
        "api": {"host": "127.0.0.1", "port": api_port, "admin_token_file": admin},
        "mqtt": {"host": "127.0.0.1", "port": broker.port,
                 "client_id": f"senken-demo-gateway-{run_id}", "retry_interval_s": 1.0,
                 "protocol": broker.protocol},
        # the broker's files go to a scratch dir nobody reads: the demo's broker is open
        "broker": {"dir": home / "broker-files", "public_host": "127.0.0.1",
                   "public_port": broker.port, "tls_port": 0, "plain_port": broker.port,
                   "device_tls": False},
    }), "utf-8")
    url = f"http://127.0.0.1:{api_port}"
    return Service("gateway", ["gateway", "run", "--config", str(config)],
                   logs / "gateway.log",
                   lambda: (get_json(f"{url}/v1/health", 1) or {}).get("status") == "ok")


def validator_health(home: Path, pid: int | None = None) -> dict[str, Any] | None:
    """A validator's /health, found through the status.json it writes at start."""
    try:
        status = json.loads((home / "status.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or not status.get("running") or \
            (pid is not None and status.get("pid") != pid):
        return None
    health = get_json(f"http://127.0.0.1:{status.get('http_port')}/health", 2)
    return health if isinstance(health, dict) else None


def validator_service(home: Path, logs: Path, index: int, broker: Broker, network: Path,
                      grace_s: float) -> Service:
    """A validator re-running the anomaly model; its key is already in ``home``."""
    config = home / "validator.toml"
    config.write_text(_toml({"state_dir": home, "network_file": network, "grace_s": grace_s,
                             "round_timeout_s": 2.0}, {
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive_s": 10,
                 "session_expiry_s": 300, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0,
                 "protocol": broker.protocol},
        "http": {"host": "127.0.0.1", "port": 0},
        "model": {"check": True},
    }), "utf-8")
    service = Service(f"validator {index}", ["validator", "run", "--config", str(config)],
                      logs / f"validator-{index}.log", lambda: False)

    def ready() -> bool:
        pid = service.proc.pid if service.proc is not None else None
        return bool((validator_health(home, pid) or {}).get("mqtt_connected"))

    service.ready = ready
    return service


def ledger_service(home: Path, logs: Path, broker: Broker, network: Path, api_port: int,
                   run_id: str, chain: dict[str, Any] | None = None) -> Service:
    """The ledger on embedded SQLite, no time-series store, its API on ``api_port``;
    ``chain``: its ``[chain]`` section (minting)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "ledger.toml"
    sections: dict[str, dict[str, Any]] = {
        "mqtt": {"host": "127.0.0.1", "port": broker.port,
                 "client_id": f"senken-demo-ledger-{run_id}", "session_expiry_s": 300,
                 "protocol": broker.protocol},
        "api": {"host": "127.0.0.1", "port": api_port},
    }
    if chain is not None:
        sections["chain"] = chain
    config.write_text(_toml({"state_dir": home, "network_file": network}, sections), "utf-8")
    url = f"http://127.0.0.1:{api_port}"
    return Service("ledger", ["ledger", "run", "--config", str(config)], logs / "ledger.log",
                   lambda: bool((get_json(f"{url}/health", 1) or {}).get("mqtt_connected")))
