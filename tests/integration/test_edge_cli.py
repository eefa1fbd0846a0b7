"""The technician's commands against real parts: doctor over TLS, status, clear refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.device import SimulatedDevice
from tests.support.agent import AgentProcess, make_device
from tests.support.consumer import ReadingConsumer
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.tls import make_ca, make_server_tls
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def senken(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "senken", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "tls-broker", tls=make_server_tls(tmp_path / "pki"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[SimulatedDevice]:
    dev = SimulatedDevice("elec_meter", rate_hz=20, seed=7, link=tmp_path / "ttyUSB0")
    dev.start()
    yield dev
    dev.stop()


def test_doctor_passes_over_tls_and_the_agent_publishes_over_tls(
    tmp_path: Path, meter: SimulatedDevice, tls_broker: Mosquitto,
    agent_processes: list[AgentProcess],
) -> None:
    config, public_key = make_device(
        tmp_path / "agent", "meter-tls", str(meter.port_path), tls_broker.port, "senken/v1",
        mqtt={"tls_ca_file": str(tmp_path / "pki" / "ca.pem")},
    )
    doctor = senken("edge", "doctor", "--config", str(config), "--listen", "3")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    lines = {line.split()[1]: line for line in doctor.stdout.splitlines() if line[:4] in
             ("OK  ", "FAIL")}
    assert set(lines) >= {"config", "key", "serial", "clock", "broker", "model", "outbox"}
    assert all(line.startswith("OK") for line in lines.values()), doctor.stdout
    assert "TLS TLSv1." in lines["broker"]
    assert "valid frames" in lines["serial"]

    agent = AgentProcess(config)
    agent_processes.append(agent)
    agent.start()
    with ReadingConsumer(tls_broker.plain_port, "senken/v1",
                         {"meter-tls": public_key}) as consumer:
        wait_until(lambda: consumer.count() >= 10, 30, "readings over TLS")
    # With the agent running, doctor reports on its port instead of stealing its frames.
    again = senken("edge", "doctor", "--config", str(config), "--listen", "1")
    assert "in use by the running agent" in again.stdout
    status = senken("edge", "status", "--config", str(config))
    assert status.returncode == 0
    assert f"running, pid {agent.proc.pid}" in status.stdout  # type: ignore[union-attr]
    # the status file is rewritten each heartbeat: wait for one written while connected
    wait_until(lambda: "broker:       connected" in senken("edge", "status", "--config",
                                                          str(config)).stdout,
               10, "the agent's status to show the broker connected")
    agent.stop()
    stopped = senken("edge", "status", "--config", str(config), "--json")
    assert json.loads(stopped.stdout)["running"] is False


def test_doctor_says_what_to_fix(tmp_path: Path, tls_broker: Mosquitto) -> None:
    other_ca, _ = make_ca(tmp_path / "other", "other-ca")
    config, _ = make_device(tmp_path / "agent", "meter-bad", str(tmp_path / "no-such-tty"),
                            tls_broker.port, "senken/v1", mqtt={"tls_ca_file": str(other_ca)})
    os.chmod(tmp_path / "agent" / "device.key", 0o644)
    result = senken("edge", "doctor", "--config", str(config), "--listen", "1")
    assert result.returncode == 1
    out = result.stdout
    assert "FAIL  key" in out and "chmod 600" in out
    assert "FAIL  serial" in out and "does not exist" in out
    assert "FAIL  broker" in out and "certificate not trusted" in out
    assert "OK    model" in out
    assert "Traceback" not in out + result.stderr


def test_doctor_reports_an_unreachable_broker(tmp_path: Path) -> None:
    config, _ = make_device(tmp_path / "agent", "meter-off", "/dev/null", free_port(),
                            "senken/v1")
    result = senken("edge", "doctor", "--config", str(config), "--listen", "1")
    assert result.returncode == 1
    assert "FAIL  broker" in result.stdout and "unreachable" in result.stdout


def test_run_refuses_an_unsafe_key_and_a_corrupt_config(tmp_path: Path) -> None:
    config, _ = make_device(tmp_path / "agent", "meter-key", "/dev/null", 1883, "senken/v1")
    os.chmod(tmp_path / "agent" / "device.key", 0o640)
    result = senken("edge", "run", "--config", str(config))
    assert result.returncode == 1
    assert "chmod 600" in result.stderr and "Traceback" not in result.stderr
    config.write_text("device_id = \"meter-key\"\n[serial]\nport = 5\n")
    result = senken("edge", "run", "--config", str(config))
    assert result.returncode == 1
    assert "serial.port" in result.stderr and "Traceback" not in result.stderr


def test_last_will_marks_a_killed_agent_offline(
    tmp_path: Path, meter: SimulatedDevice, topic_prefix: str,
    agent_processes: list[AgentProcess],
) -> None:
    config, _ = make_device(tmp_path / "agent", "meter-lwt", str(meter.port_path), 1883,
                            topic_prefix)
    agent = AgentProcess(config)
    agent_processes.append(agent)
    agent.start()
    topic = f"{topic_prefix}/devices/meter-lwt/status"

    def retained_status() -> dict[str, object]:
        out = subprocess.run(["mosquitto_sub", "-p", "1883", "-t", topic, "-C", "1", "-W", "2",
                              "--retained-only"], capture_output=True, text=True)
        return json.loads(out.stdout) if out.stdout.strip() else {}

    wait_until(lambda: retained_status().get("state") == "online", 30, "status online")
    agent.stop(signal.SIGKILL)
    # keepalive_s = 5: the broker publishes the will within 1.5 keepalives.
    wait_until(lambda: retained_status().get("state") == "offline", 30, "the last will")
    status = retained_status()
    assert status["reason"] == "connection lost"
    assert status["device"] == "meter-lwt" and status["model_sha256"]
