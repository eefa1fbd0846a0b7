"""The validator's runner against a real Mosquitto, as real processes.

Most tests run the runner around a scripted fake node (tests/support/validator.py EchoNode), so
what they check is the runner's: messages reach the node, its outbound messages are published,
its timers fire, a node that raises is survived, the retained status follows the process
(online, offline on SIGTERM, offline by the last will on SIGKILL), the broker queues messages
while the validator is down (persistent session), the runner reconnects and resubscribes,
and /metrics, /health and ``senken validator status`` answer, also while the loop is busy.
The last test runs the real node (``senken validator run``).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from senken_core import canonical
from senken_core.topics import validator_topic
from tests.support.mosquitto import Mosquitto
from tests.support.validator import (
    ROOT,
    TopicWatcher,
    ValidatorProcess,
    make_validator,
    write_network,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
BROKER = 1883


@pytest.fixture
def validators() -> Iterator[list[ValidatorProcess]]:
    """Validators a test started; any still running at teardown is killed, pass or fail."""
    started: list[ValidatorProcess] = []
    yield started
    for v in started:
        v.kill()


def senken(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "senken", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def fake_validator(tmp_path: Path, prefix: str, port: int = BROKER, **sections: dict,
                   ) -> tuple[ValidatorProcess, bytes]:
    config, key = make_validator(tmp_path / "validator", port, **sections)
    write_network(config.parent / "network.toml", [key.address], prefix)
    return ValidatorProcess(config, fake=True), key.address


def state_of(payload: bytes | None) -> str | None:
    return None if payload is None else json.loads(payload)["state"]


def test_messages_in_outbound_out_timers_errors_metrics_status_and_a_clean_stop(
    tmp_path: Path, topic_prefix: str, validators: list[ValidatorProcess],
) -> None:
    proc, address = fake_validator(tmp_path, topic_prefix)
    status_topic = validator_topic(address, "status", topic_prefix)
    inbox, outbox = f"{topic_prefix}/test/in", f"{topic_prefix}/test/out"
    with TopicWatcher(BROKER, f"{topic_prefix}/#") as watch:
        validators.append(proc.start())
        wait_until(lambda: state_of(watch.last(status_topic)) == "online", 10, "status online")

        watch.publish(f"{inbox}/a", b"hello")
        wait_until(lambda: watch.payloads(f"{outbox}/a") == [b"hello"], 10, "the echo")
        watch.publish(f"{inbox}/t", b"timer:0.3:fired")
        sent = time.monotonic()
        wait_until(lambda: watch.payloads(f"{topic_prefix}/test/timer") == [b"fired"], 10,
                   "the node's timer")
        assert 0.25 <= time.monotonic() - sent < 3  # at its deadline, not before

        # a message the node raises on is counted and skipped; the next one goes through
        for payload in (b"raise", b"peer:" + b"ab" * 20, b"reject:bad_signature",
                        b"latency:1.5", b"after"):
            watch.publish(f"{inbox}/b", payload)
        wait_until(lambda: b"after" in watch.payloads(f"{outbox}/b"), 10, "the next echo")
        health = proc.health()
        assert health is not None
        assert health["status"] == "ok" and health["mqtt_connected"] is True
        assert health["address"] == "0x" + address.hex()
        assert health["node_errors"] == 1 and health["messages_received"] == 7
        assert health["readings_verified"] == 7 and health["readings_rejected"] == 1
        assert health["peers_seen"] == 1 and 0 <= health["last_message_age_s"] < 10
        # the echo can arrive before the validator has the broker's PUBACK for it
        wait_until(lambda: "senken_validator_messages_published_total 6.0" in proc.metrics(),
                   10, "the PUBACKs")
        metrics = proc.metrics()
        for line in ("senken_validator_readings_verified_total 7.0",
                     'senken_validator_readings_rejected_total{reason="bad_signature"} 1.0',
                     "senken_validator_node_errors_total 1.0",
                     "senken_validator_quorum_latency_seconds_count 1.0",
                     'senken_validator_quorum_latency_seconds_bucket{le="2.0"} 1.0',
                     "senken_validator_peers_seen 1.0",
                     f'senken_validator_peer_last_seen_seconds{{peer="0x{"ab" * 20}"}}',
                     "senken_validator_mqtt_connected 1.0",
                     f'senken_validator_info{{address="0x{address.hex()}"}} 1.0'):
            assert line in metrics, line

        # the HTTP thread answers while the loop is busy with one long message
        watch.publish(f"{inbox}/c", b"busy:1.5")
        wait_until(lambda: (proc.health() or {}).get("messages_received") == 8, 10,
                   "the busy message to be taken")
        started = time.monotonic()
        assert proc.get("/health") is not None and proc.get("/metrics") is not None
        assert time.monotonic() - started < 0.5
        assert not watch.payloads(f"{outbox}/c")  # still busy
        wait_until(lambda: watch.payloads(f"{outbox}/c"), 10, "the busy echo")

        shown = senken("validator", "status", "--config", str(proc.config))
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert f"validator:     0x{address.hex()}" in shown.stdout
        assert "broker:        connected (127.0.0.1:1883)" in shown.stdout
        assert "readings:      8 verified" in shown.stdout
        assert "1 node errors" in shown.stdout
        as_json = json.loads(senken("validator", "status", "--config", str(proc.config),
                                    "--json").stdout)
        assert as_json["running"] is True and as_json["peers_seen"] == 1

        # a message queued behind long ones waits, and the operator sees it: the last of
        # these is in the inbox at the latest when the first busy one ends (the socket is
        # read before each message), then waits out the second (1.2 s)
        for payload in (b"busy:0.3", b"busy:1.2", b"queued"):
            watch.publish(f"{inbox}/e", payload)
        wait_until(lambda: b"queued" in watch.payloads(f"{outbox}/e"), 10, "the last echo")
        waits = dict(re.findall(
            r'^senken_validator_message_wait_seconds_(count|bucket\{le="1\.0"\}) (\S+)$',
            proc.metrics(), re.M))
        assert float(waits["count"]) == 11.0, waits
        assert float(waits['bucket{le="1.0"}']) <= 10.0, waits
        assert "senken_validator_inbox_queued 0.0" in proc.metrics()

        # one validator per state dir: a second one on the same config refuses, status 2
        second = subprocess.run(proc.command(), capture_output=True, text=True, timeout=60,
                                cwd=ROOT)
        assert second.returncode == 2 and "another validator" in second.stderr

        assert proc.stop(signal.SIGTERM) == 0
        wait_until(lambda: state_of(watch.last(status_topic)) == "offline", 10,
                   "status offline")
    with TopicWatcher(BROKER, status_topic) as late:  # retained for whoever comes later
        wait_until(lambda: late.messages, 10, "the retained status")
        assert late.messages[-1][2] and state_of(late.messages[-1][1]) == "offline"
    assert senken("validator", "status", "--config", str(proc.config)).returncode == 1


def test_last_will_on_sigkill_and_messages_queued_while_down_arrive_after_restart(
    tmp_path: Path, topic_prefix: str, validators: list[ValidatorProcess],
) -> None:
    proc, address = fake_validator(tmp_path, topic_prefix)
    status_topic = validator_topic(address, "status", topic_prefix)
    inbox, outbox = f"{topic_prefix}/test/in", f"{topic_prefix}/test/out"
    with TopicWatcher(BROKER, f"{topic_prefix}/#") as watch:
        validators.append(proc.start())
        watch.publish(f"{inbox}/q", b"m0")
        wait_until(lambda: watch.payloads(f"{outbox}/q") == [b"m0"], 10, "the first echo")

        proc.stop(signal.SIGKILL)
        wait_until(lambda: state_of(watch.last(status_topic)) == "offline", 10,
                   "the last will")
        for i in range(1, 4):  # the broker queues these in the validator's session
            watch.publish(f"{inbox}/q", f"m{i}".encode())
        proc.start()
        wait_until(lambda: watch.payloads(f"{outbox}/q") == [b"m0", b"m1", b"m2", b"m3"], 10,
                   "the queued messages' echoes")
        assert state_of(watch.last(status_topic)) == "online"


def test_reconnects_and_resubscribes_when_the_broker_comes_back_without_the_session(
    tmp_path: Path, topic_prefix: str, own_broker: Mosquitto,
    validators: list[ValidatorProcess],
) -> None:
    proc, _address = fake_validator(tmp_path, topic_prefix, own_broker.port)
    inbox, outbox = f"{topic_prefix}/test/in", f"{topic_prefix}/test/out"
    with TopicWatcher(own_broker.port, f"{topic_prefix}/test/out/#") as watch:
        validators.append(proc.start())
        watch.publish(f"{inbox}/r", b"before")
        wait_until(lambda: watch.payloads(f"{outbox}/r") == [b"before"], 10, "the echo")

        subscriptions = watch.subscriptions
        own_broker.stop()
        proc.wait_connected(False)
        got = proc.get("/health")
        assert got is not None and got[0] == 503
        assert json.loads(got[1])["status"] == "degraded"
        assert "senken_validator_mqtt_connected 0.0" in proc.metrics()
        # the broker comes back with no memory of the session: only a resubscription helps
        for leftover in own_broker.dir.glob("mosquitto.db*"):
            leftover.unlink()
        own_broker.start()
        proc.wait_connected(True)
        wait_until(lambda: watch.subscriptions > subscriptions, 10,
                   "the watcher to resubscribe")
        watch.publish(f"{inbox}/r", b"after")
        wait_until(lambda: watch.payloads(f"{outbox}/r") == [b"before", b"after"], 10,
                   "the echo after the reconnect")
    assert "senken_validator_mqtt_connections_total 2.0" in proc.metrics()
    assert proc.stop() == 0


def test_a_taken_http_port_fails_the_service_with_status_1(
    tmp_path: Path, topic_prefix: str,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc, _address = fake_validator(tmp_path, topic_prefix,
                                        http={"port": taken.getsockname()[1]})
        result = senken("validator", "run", "--config", str(proc.config))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "/metrics and /health on 127.0.0.1:" in errors[0]
    assert "Traceback" not in result.stderr


def test_the_real_node_runs_as_a_service(
    tmp_path: Path, topic_prefix: str, validators: list[ValidatorProcess],
) -> None:
    pytest.importorskip("validator.node").ValidatorNode  # noqa: B018
    config, key = make_validator(tmp_path / "validator", BROKER, model={"check": True})
    write_network(config.parent / "network.toml", [key.address], topic_prefix, projects=[{
        "id": "pv-plant-7", "owner_key": "00" * 32, "grid_ef_g_per_kwh": 700,
        "model_sha256": "ab" * 32, "window_seconds": 60}])
    status_topic = validator_topic(key.address, "status", topic_prefix)
    with TopicWatcher(BROKER, status_topic) as watch:
        proc = ValidatorProcess(config)
        validators.append(proc.start())
        wait_until(lambda: watch.messages, 10, "the node's status")
        assert canonical.decode(watch.messages[-1][1])["online"] is True
        health = proc.health()
        assert health is not None and health["status"] == "ok"
        assert health["address"] == "0x" + key.address.hex()
        shown = senken("validator", "status", "--config", str(config))
        assert shown.returncode == 0 and "connected" in shown.stdout
        assert proc.stop() == 0
        wait_until(lambda: canonical.decode(watch.messages[-1][1])["online"] is False, 10,
                   "the node's offline status")
    log = proc.log.read_text()
    assert "requires model " + "ab" * 32 in log  # the project's model is not the loaded one
