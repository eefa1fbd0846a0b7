"""Validators for tests: configs, a scripted fake node, real processes, a topic watcher.

``ValidatorProcess(config).start()`` runs ``senken validator run`` (the real node);
``ValidatorProcess(config, fake=True)`` runs the same runner and CLI path around
:class:`EchoNode` (``python -m tests.support.validator --config F``), a node that echoes what
it gets and follows a few scripted commands, for testing the runner on its own.

EchoNode subscribes to ``{prefix}/test/in/#`` and answers each message with an echo on
``{prefix}/test/out/{last topic level}``, except for these payloads::

    raise            the node raises (the runner must count it and go on)
    busy:<s>         spin the CPU for s seconds, then echo (the loop is busy meanwhile)
    timer:<s>:<tag>  no echo; at now + s, tick publishes <tag> on {prefix}/test/timer
    peer:<hex40>     record a peer seen now
    reject:<reason>  count a rejected reading
    latency:<s>      record a quorum latency
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from senken_core.secp256k1 import ValidatorKey
from tests.support.process import ServiceProcess
from tests.support.waiting import wait_until
from validator.node import NodeStats, Outbound

ROOT = Path(__file__).resolve().parents[2]


def write_network(path: Path, addresses: list[bytes], prefix: str, threshold: int = 1,
                  projects: list[dict[str, Any]] | None = None, **top: Any) -> Path:
    """A network file with these validators (and projects: dicts of ProjectConfig fields;
    ``top``: other top-level settings, e.g. chain_id and credit_contract)."""
    lines = [f"topic_prefix = {json.dumps(prefix)}", f"threshold = {threshold}",
             *(f"{k} = {json.dumps(v)}" for k, v in top.items()),
             "validators = [" + ", ".join(f'"0x{a.hex()}"' for a in addresses) + "]"]
    for project in projects or []:
        lines += ["", "[[projects]]"] + [f"{k} = {json.dumps(v)}" for k, v in project.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_validator(state_dir: Path, broker_port: int, network_file: Path | None = None,
                   key: ValidatorKey | None = None, **sections: dict[str, Any],
                   ) -> tuple[Path, ValidatorKey]:
    """Create a validator's key (unless given, then saved) and config; returns (config, key).

    The HTTP port is 0 (any free one), the session expiry short (tests leave no week-long
    sessions on the shared broker), reconnects fast, the model check off; ``sections``
    override, e.g. ``model={"check": True}``.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    key = key or ValidatorKey.generate()
    key.save(state_dir / "validator.key")
    cfg: dict[str, dict[str, Any]] = {
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive_s": 5,
                 "session_expiry_s": 120, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "http": {"host": "127.0.0.1", "port": 0},
        "model": {"check": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    lines = [f"state_dir = {json.dumps(str(state_dir))}",
             f"network_file = {json.dumps(str(network_file or state_dir / 'network.toml'))}",
             "grace_s = 0.5", "round_timeout_s = 1.0"]
    for name, values in cfg.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = state_dir / "validator.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, key


class EchoNode:
    """A scripted stand-in for ValidatorNode (module docstring)."""

    def __init__(self, setup: Any) -> None:
        self.address: bytes = setup.key.address
        self.prefix: str = setup.network.topic_prefix
        self.stats = NodeStats()
        self.timers: list[tuple[float, bytes]] = []

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(f"{self.prefix}/test/in/#", 1)]

    def status_payload(self, online: bool) -> bytes:
        return json.dumps({"state": "online" if online else "offline",
                           "address": "0x" + self.address.hex()}).encode()

    def on_message(self, topic: str, payload: bytes, now: float) -> list[Outbound]:
        self.stats.readings_verified += 1
        command, _, arg = payload.partition(b":")
        if payload == b"raise":
            raise RuntimeError("scripted failure")
        if command == b"timer":
            delay, _, tag = arg.partition(b":")
            self.timers.append((now + float(delay), tag))
            return []
        if command == b"busy":
            end = time.perf_counter() + float(arg)
            while time.perf_counter() < end:
                pass
        elif command == b"peer":
            self.stats.peers_last_seen[bytes.fromhex(arg.decode())] = now
        elif command == b"reject":
            reason = arg.decode()
            self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        elif command == b"latency":
            self.stats.quorum_latency_s.append(float(arg))
        self.stats.readings_accepted += 1
        return [Outbound(f"{self.prefix}/test/out/{topic.rsplit('/', 1)[-1]}", payload)]

    def tick(self, now: float) -> list[Outbound]:
        due = [t for t in self.timers if t[0] <= now]
        self.timers = [t for t in self.timers if t[0] > now]
        return [Outbound(f"{self.prefix}/test/timer", tag) for _at, tag in due]

    def next_deadline(self) -> float | None:
        return min((at for at, _tag in self.timers), default=None)


class ValidatorProcess(ServiceProcess):
    """``senken validator run`` (or the fake-node runner) as a real process."""

    def __init__(self, config: Path, fake: bool = False, inflate: bool = False) -> None:
        """``fake``: the runner around EchoNode; ``inflate``: the real node, but signing every
        attestation with ten times its quantity (a faulty validator)."""
        super().__init__(config, "validator.log")
        self.fake = fake
        self.inflate = inflate

    def command(self) -> list[str]:
        if self.fake or self.inflate:
            return [sys.executable, "-m", "tests.support.validator", "--config", str(self.config),
                    *(["--inflate"] if self.inflate else [])]
        return [sys.executable, "-m", "senken", "validator", "run", "--config", str(self.config)]

    def start(self, connected: bool = True) -> ValidatorProcess:
        """Start and wait until /health answers (and, if ``connected``, reports the broker)."""
        assert self.proc is None
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         text=True, env=env, cwd=ROOT)
        wait_until(lambda: self.health() is not None or self.proc.poll() is not None,  # type: ignore[union-attr]
                   30, "the validator's health endpoint")
        assert self.proc.poll() is None, self.log.read_text()
        if connected:
            self.wait_connected()
        return self

    def wait_connected(self, connected: bool = True, timeout: float = 20) -> None:
        wait_until(lambda: (self.health() or {}).get("mqtt_connected") is connected, timeout,
                   f"the validator to be {'connected' if connected else 'disconnected'}")

    def url(self, path: str) -> str | None:
        status = self.status()
        if self.proc is None or status.get("pid") != self.proc.pid or not status.get("running"):
            return None
        return f"http://127.0.0.1:{status['http_port']}{path}"

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes] | None:
        """``(status code, body)`` of a GET, or None if nothing answers."""
        url = self.url(path)
        if url is None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return None

    def health(self) -> dict[str, Any] | None:
        got = self.get("/health")
        return None if got is None else json.loads(got[1])

    def metrics(self) -> str:
        got = self.get("/metrics")
        assert got is not None and got[0] == 200, got
        return got[1].decode()


class TopicWatcher:
    """A paho subscriber (resubscribing on every connect) that records what arrives."""

    def __init__(self, port: int, *filters: str, client_id: str | None = None) -> None:
        self.filters = filters
        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retained)
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.subscriptions = 0  # SUBACKs so far: one more after each reconnect
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.connect_async("127.0.0.1", port, keepalive=10)

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        self.subscribed.clear()
        client.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, *_a: Any) -> None:
        self.subscriptions += 1
        self.subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def __enter__(self) -> TopicWatcher:
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 10, f"a subscription to {self.filters}")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def payloads(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _r in self.messages if t == topic]

    def last(self, topic: str) -> bytes | None:
        found = self.payloads(topic)
        return found[-1] if found else None

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(10)


def inflating_node(setup: Any) -> Any:
    """A real ValidatorNode that signs ten times the quantity and credit of every attestation
    it signs (and nothing else): a faulty validator for the end-to-end tests."""
    from dataclasses import replace

    from senken_core.attestation import Attestation
    from validator.node import ValidatorNode

    class Inflating(ValidatorNode):
        def _sign(self, att: Attestation) -> tuple[Attestation, bytes]:
            bad = replace(att, quantity=att.quantity * 10 + 1, co2e_mg=att.co2e_mg * 10 + 1)
            return bad, self.key.sign_digest(bad.digest(self.domain))

    return Inflating(setup.key, setup.network, scorer_for=setup.scorer_for,
                     grace_s=setup.cfg.grace_s, round_timeout_s=setup.cfg.round_timeout_s)


def _main() -> None:
    """``python -m tests.support.validator --config F``: the runner around EchoNode."""
    import click

    from senken_core.errors import SenkenError
    from validator.app import ServiceError, run_validator
    from validator.config import load_validator_config

    @click.command()
    @click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
    @click.option("--inflate", is_flag=True, help="the real node, signing inflated attestations")
    def run(config_path: Path, inflate: bool) -> None:
        import logging

        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            run_validator(load_validator_config(config_path),
                          node_factory=inflating_node if inflate else EchoNode)
        except ServiceError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except SenkenError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    run()


if __name__ == "__main__":
    _main()
