"""The commands as people run them: an operator starts a gateway (SQLite, its default) next to
Mosquitto, an owner registers a project and issues a token, a technician enrolls a device with
`senken edge enroll`, the owner approves and later revokes it. Bad input exits 2, one line."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_agent.config import load_edge_config
from gateway.client import GatewayClient
from gateway.config import load_gateway_config
from senken_core.topics import device_topic
from tests.support.gateway import MqttProbe, gateway_mosquitto, mosquitto_readable_dir
from tests.support.mosquitto import free_port
from tests.support.tls import make_server_tls
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
PROJECT = "pv-plant-7"


def senken(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "senken", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def one_line_error(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def shared() -> Iterator[Path]:
    with mosquitto_readable_dir() as path:
        yield path


def test_operator_owner_and_technician(tmp_path: Path, topic_prefix: str, shared: Path,
                                       processes: list[subprocess.Popen[str]]) -> None:
    tls = make_server_tls(shared / "pki")
    api_port, tls_port, plain_port = free_port(), free_port(), free_port()
    state = tmp_path / "gateway"
    root = os.geteuid() == 0
    init = senken("gateway", "init", "--state-dir", str(state), "--api-port", str(api_port),
                  "--topic-prefix", topic_prefix, "--tls-port", str(tls_port),
                  "--plain-port", str(plain_port), "--ca-file", str(tls.ca),
                  "--cert-file", str(tls.cert), "--key-file", str(tls.key),
                  "--broker-dir", str(shared / "broker-files"),
                  "--broker-pid-file", str(shared / "mosquitto" / "mosquitto.pid"),
                  *(["--broker-user", "mosquitto"] if root else []))
    assert init.returncode == 0, init.stderr
    config = state / "gateway.toml"
    assert (state / "admin.token").stat().st_mode & 0o777 == 0o600
    again = senken("gateway", "init", "--state-dir", str(state))
    one_line_error(again, "already exists")

    gateway = subprocess.Popen([sys.executable, "-m", "senken", "gateway", "run", "--config",
                                str(config)], stdout=subprocess.DEVNULL,
                               stderr=(tmp_path / "gateway.log").open("w"), text=True)
    processes.append(gateway)
    url = f"http://127.0.0.1:{api_port}"

    def healthy() -> bool:
        assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()
        try:
            return httpx.get(f"{url}/v1/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 30, "the gateway's API")
    broker = gateway_mosquitto(shared / "mosquitto", load_gateway_config(config))
    broker.start()
    try:
        _owner_and_technician(tmp_path, url, state, topic_prefix, tls_port)
    finally:
        broker.stop()
    gateway.terminate()  # uvicorn shuts down cleanly, then exits by the signal it caught
    assert gateway.wait(timeout=20) in (0, -15)
    assert "Application shutdown complete" in (tmp_path / "gateway.log").read_text()


def _owner_and_technician(tmp_path: Path, url: str, state: Path, prefix: str,
                          tls_port: int) -> None:
    owner_key, api_token = tmp_path / "owner" / "owner.key", tmp_path / "owner" / "api.token"
    created = senken("gateway", "owner-key", "init", str(owner_key))
    assert created.returncode == 0 and "public key:" in created.stdout, created.stderr
    common = ["--gateway", url, "--api-token-file", str(api_token)]
    registered = senken("gateway", "project", "register", "--project", PROJECT,
                        "--owner-key", str(owner_key), "--location", "52.37,4.89",
                        "--param", "grid_ef_g_per_kwh=700",
                        "--admin-token-file", str(state / "admin.token"), *common)
    assert registered.returncode == 0, registered.stderr
    assert api_token.stat().st_mode & 0o777 == 0o600
    issued = senken("gateway", "tokens", "--project", PROJECT, "--count", "2", "--ttl", "1h",
                    *common)
    assert issued.returncode == 0, issued.stderr
    token, spare = issued.stdout.split()

    edge = tmp_path / "edge"
    made = senken("edge", "init", "--device-id", "meter-cli", "--serial-port", "/dev/null",
                  "--kind", "elec_meter", "--state-dir", str(edge), "--broker-port", "1")
    assert made.returncode == 0, made.stderr
    enroll = subprocess.Popen(
        [sys.executable, "-m", "senken", "edge", "enroll", "--token", token, "--gateway", url,
         "--config", str(edge / "edge.toml"), "--wait", "60", "--poll-interval", "0.2",
         "--location", "roof", "--technician", "A. Tech", "--calibration-date", "2025-03-01"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        owner_api = GatewayClient(url, api_token.read_text().strip())
        wait_until(lambda: bool(owner_api.enrollments(PROJECT)), 30, "the pending enrollment")
        owner_api.close()
        listed = senken("gateway", "pending", "--project", PROJECT, *common)
        assert "meter-cli (elec_meter), key " in listed.stdout, listed.stdout + listed.stderr
        assert "at roof, calibrated 2025-03-01, by A. Tech" in listed.stdout
        approved = senken("gateway", "approve", "--project", PROJECT, "--owner-key",
                          str(owner_key), "--all", *common)
        assert approved.returncode == 0 and "approved meter-cli" in approved.stdout, \
            approved.stdout + approved.stderr
        out, err = enroll.communicate(timeout=60)
    finally:
        if enroll.poll() is None:
            enroll.kill()
            enroll.wait()
    assert enroll.returncode == 0, out + err
    assert "approved: broker user meter-cli" in out

    # the agent's config now holds the broker account the gateway made
    cfg = load_edge_config(edge / "edge.toml")
    assert (cfg.mqtt.username, cfg.mqtt.port, cfg.mqtt.topic_prefix) == (
        "meter-cli", tls_port, prefix)
    assert cfg.mqtt.password_file is not None and cfg.mqtt.tls_ca_file is not None
    assert cfg.mqtt.password_file.stat().st_mode & 0o777 == 0o600
    assert tomllib.loads((edge / "edge.toml").read_text())["serial"]["kind"] == "elec_meter"
    assert not (edge / "enrollment.json").exists()
    device = MqttProbe(tls_port, "meter-cli", cfg.mqtt.read_password(), cfg.mqtt.tls_ca_file)
    wait_until(device.connected_ok, 10, "the enrolled device to connect over TLS")
    assert not device.publish(device_topic("meter-cli", "readings", prefix), b"x").is_failure
    assert device.publish(device_topic("someone", "readings", prefix), b"x").is_failure
    device.close()

    # bad input: one line, exit code 2 (more cases, in process: tests/unit/test_gateway_cli.py)
    other = tmp_path / "edge-2"
    senken("edge", "init", "--device-id", "meter-two", "--serial-port", "/dev/null",
           "--kind", "elec_meter", "--state-dir", str(other))
    one_line_error(senken("edge", "enroll", "--token", token, "--gateway", url, "--config",
                          str(other / "edge.toml"), "--wait", "0"), "already used")
    one_line_error(senken("edge", "enroll", "--config", str(other / "edge.toml")),
                   "--token and --gateway")
    one_line_error(senken("gateway", "tokens", "--project", PROJECT, "--gateway", url,
                          "--api-token-file", str(state / "admin.token")),
                   "not the owner API token")
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text('topic_prefix = "a/#"\n[api]\nport = "eighty"\n')
    one_line_error(senken("gateway", "run", "--config", str(bad_config)), "api.port",
                   "topic_prefix", "broker: required")
    # a pending enrollment with --wait 0 resumes later without a token
    waiting = senken("edge", "enroll", "--token", spare, "--gateway", url, "--config",
                     str(other / "edge.toml"), "--wait", "0")
    assert waiting.returncode == 0 and "pending" in waiting.stdout, waiting.stderr
    rejected = senken("gateway", "reject", "--project", PROJECT, "meter-two", *common)
    assert rejected.returncode == 0, rejected.stderr
    resumed = senken("edge", "enroll", "--config", str(other / "edge.toml"), "--wait", "5")
    assert resumed.returncode == 1 and "rejected" in resumed.stderr, resumed.stderr

    revoked = senken("gateway", "revoke", "meter-cli", "--owner-key", str(owner_key), *common)
    assert revoked.returncode == 0 and "revoked meter-cli (record version 2)" in revoked.stdout, \
        revoked.stderr
    wait_until(lambda: not MqttProbe(tls_port, "meter-cli", cfg.mqtt.read_password(),
                                     cfg.mqtt.tls_ca_file).connected_ok(), 10,
               "the revoked device to be refused")
    one_line_error(senken("gateway", "revoke", "meter-cli", "--owner-key", str(owner_key),
                          *common), "revoked already")
