"""A simulated device on a pty, the edge agent as a process, and a real Mosquitto.

What a user would notice: readings arrive signed by the device key; a broker outage or a killed
agent loses nothing; a bad frame or an unplugged port never stops the agent.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.device import SimulatedDevice
from firmware_sim.faults import Fault
from senken_core.reading import decode_batch
from tests.support.agent import AgentProcess, make_device
from tests.support.consumer import ReadingConsumer
from tests.support.mosquitto import Mosquitto
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SYSTEM_BROKER = 1883


@pytest.fixture
def device(tmp_path: Path) -> Iterator[SimulatedDevice]:
    dev = SimulatedDevice("elec_meter", rate_hz=25, seed=3, link=tmp_path / "ttyUSB-meter")
    yield dev
    dev.stop()


def spawn(registry: list[AgentProcess], config: Path) -> AgentProcess:
    agent = AgentProcess(config)
    registry.append(agent)
    return agent.start()


def wait_for_last_frame(consumer: ReadingConsumer, device_id: str, dev: SimulatedDevice,
                        timeout: float = 60) -> None:
    """Stop the device, then wait until its last frame arrived as a reading."""
    dev.pause()
    last = dev.sent[-1].counter
    wait_until(lambda: last in consumer.frame_counters(device_id), timeout,
               f"the last frame of {device_id}")


def assert_nothing_lost(consumer: ReadingConsumer, device_id: str, dev: SimulatedDevice) -> None:
    received = consumer.frame_counters(device_id)
    assert received, "no reading arrived"
    assert len(received) == len(set(received)), "a frame counted twice after dedup"
    first = received[0]
    expected = {f.counter for f in dev.sent if f.counter >= first}
    missing = expected - set(received)
    assert not missing, f"{len(missing)} frames lost, e.g. {sorted(missing)[:5]}"


def test_readings_arrive_signed_and_mosquitto_sub_sees_them(
    tmp_path: Path, device: SimulatedDevice, topic_prefix: str,
    agent_processes: list[AgentProcess],
) -> None:
    config, public_key = make_device(tmp_path / "agent", "meter-01", str(device.port_path),
                                     SYSTEM_BROKER, topic_prefix)
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(SYSTEM_BROKER), "-q", "1", "-C", "3",
         "-W", "60", "-t", f"{topic_prefix}/devices/+/readings", "-F", "%t %x"],
        stdout=subprocess.PIPE, text=True,
    )
    status_sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(SYSTEM_BROKER), "-C", "1", "-W", "60",
         "-t", f"{topic_prefix}/devices/meter-01/status"], stdout=subprocess.PIPE, text=True,
    )
    with ReadingConsumer(SYSTEM_BROKER, topic_prefix, {"meter-01": public_key}) as consumer:
        agent = spawn(agent_processes, config)
        device.start()
        wait_until(lambda: consumer.count() >= 50, 60, "50 verified readings")
        out, _ = sub.communicate(timeout=60)
        agent_status = json.loads(status_sub.communicate(timeout=60)[0])
        assert agent.stop() == 0
    assert not consumer.rejected
    lines = out.split("\n")
    assert len([line for line in lines if line]) == 3
    for line in filter(None, lines):
        topic, payload = line.split(" ")
        assert topic == f"{topic_prefix}/devices/meter-01/readings"
        for signed in decode_batch(bytes.fromhex(payload)):
            reading = signed.verify(public_key)
            assert reading.device == "meter-01" and reading.kind == "elec_meter"
    reading = next(iter(consumer.readings.values()))
    assert reading.model_sha256.hex() == agent_status["model_sha256"]
    assert 0 <= reading.anomaly_ppm <= 1_000_000
    assert agent_status["state"] == "online" and agent_status["agent_version"]
    energy = [r.values[0][1] for _, r in sorted(consumer.readings.items())]
    assert energy == sorted(energy), "the export register never decreases"


def test_broker_outage_loses_nothing(tmp_path: Path, device: SimulatedDevice,
                                     own_broker: Mosquitto,
                                     agent_processes: list[AgentProcess]) -> None:
    prefix = "senken/v1"
    config, public_key = make_device(tmp_path / "agent", "meter-02", str(device.port_path),
                                     own_broker.port, prefix)
    agent = spawn(agent_processes, config)
    with ReadingConsumer(own_broker.port, prefix, {"meter-02": public_key}) as consumer:
        device.start()
        wait_until(lambda: consumer.count() >= 25, 30, "readings before the outage")
        own_broker.stop()
        sent_at_stop = len(device.sent)
        # Several seconds of outage: readings pile up in the agent's durable outbox.
        wait_until(lambda: len(device.sent) >= sent_at_stop + 100, 30, "frames during outage")
        wait_until(lambda: agent.outbox_depth() >= 50, 30, "a backlog in the outbox")
        assert agent.status().get("mqtt_connected") is False
        own_broker.start()
        wait_until(lambda: len(device.sent) >= sent_at_stop + 150, 30, "frames after outage")
        wait_for_last_frame(consumer, "meter-02", device, 60)
        assert_nothing_lost(consumer, "meter-02", device)
        assert not consumer.rejected
        wait_until(lambda: agent.outbox_depth() == 0, 30, "the outbox to drain")
    assert agent.alive()
    agent.stop()


def test_sigkill_agent_loses_nothing_and_reuses_no_sequence(
    tmp_path: Path, device: SimulatedDevice, own_broker: Mosquitto,
    agent_processes: list[AgentProcess],
) -> None:
    prefix = "senken/v1"
    # A slow drain so that unacknowledged readings are waiting when the agent is killed.
    config, public_key = make_device(tmp_path / "agent", "meter-03", str(device.port_path),
                                     own_broker.port, prefix,
                                     outbox={"drain_rate_per_s": 10, "batch_max": 4})
    agent = spawn(agent_processes, config)
    with ReadingConsumer(own_broker.port, prefix, {"meter-03": public_key}) as consumer:
        device.start()
        wait_until(lambda: len(device.sent) >= 100, 30, "100 frames")
        device.pause()
        total = len(device.sent)
        wait_until(lambda: agent.status().get("readings_signed", 0) >= total, 30,
                   "all frames stored")
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        backlog = agent.outbox_depth()
        assert backlog >= 30, "the kill should leave a backlog of unacknowledged readings"
        with consumer.lock:
            delivered_before = {seq for _, _, seq in consumer.arrivals}
        agent.start()
        device.resume()
        wait_until(lambda: len(device.sent) >= total + 50, 30, "frames after restart")
        wait_for_last_frame(consumer, "meter-03", device, 90)
        assert_nothing_lost(consumer, "meter-03", device)
        assert not consumer.rejected
        # The backlog drained oldest first, and no faster than drain_rate_per_s (10/s, with a
        # burst of at most one second's worth): a lower bound on time, whatever the load.
        with consumer.lock:
            drained = [(t, seq) for t, _, seq in consumer.arrivals if seq not in delivered_before]
        backlog_seqs = [seq for _, seq in drained][:backlog]
        assert backlog_seqs == sorted(backlog_seqs), "backlog not drained oldest first"
        span = drained[backlog - 1][0] - drained[0][0]
        assert span >= (backlog - 10 - 4) / 10, f"{backlog} readings drained in {span:.1f} s"
        # Sequence numbers were never reused for a different reading.
        seqs = sorted(seq for _, seq in consumer.readings)
        assert len(seqs) == len(set(seqs)) == consumer.count("meter-03")
    agent.stop()


def test_bad_frames_and_unplugged_port_never_stop_the_agent(
    tmp_path: Path, topic_prefix: str, agent_processes: list[AgentProcess]
) -> None:
    faults = [Fault(fault="garbage", at_frame=10), Fault(fault="checksum", at_frame=12),
              Fault(fault="truncated", at_frame=14, line_end=True),
              Fault(fault="out_of_range", at_frame=16, channel="ch4_bp"),
              Fault(fault="garbage", at_frame=18)]
    dev = SimulatedDevice("biogas_flare", rate_hz=25, seed=5, link=tmp_path / "ttyUSB-flare",
                          faults=faults)
    config, public_key = make_device(tmp_path / "agent", "flare-01", str(dev.port_path),
                                     SYSTEM_BROKER, topic_prefix)
    agent = spawn(agent_processes, config)
    try:
        with ReadingConsumer(SYSTEM_BROKER, topic_prefix, {"flare-01": public_key}) as consumer:
            dev.start()
            wait_until(lambda: consumer.count() >= 30, 30, "readings around the bad frames")
            rejected = agent.status().get("frames_rejected", {})
            assert rejected.get("checksum", 0) == 1, rejected
            assert rejected.get("range", 0) == 1, rejected
            assert rejected.get("syntax", 0) >= 1, rejected
            # Let the agent read everything written so far, then pull the cable.
            wait_for_last_frame(consumer, "flare-01", dev, 30)
            dev.unplug()
            wait_until(lambda: "unplugged" in str(agent.status().get("serial_state")), 20,
                       "the agent to report the missing port")
            assert agent.alive()
            assert "unplugged" in str(agent.status().get("last_error"))
            before = consumer.count()
            dev.replug()
            dev.resume()
            wait_until(lambda: agent.status().get("serial_state") == "reading", 20,
                       "the agent to reopen the port")
            wait_until(lambda: consumer.count() >= before + 25, 30, "readings after replug")
            wait_for_last_frame(consumer, "flare-01", dev, 30)
            assert_nothing_lost(consumer, "flare-01", dev)
            assert not consumer.rejected
    finally:
        dev.stop()
        assert agent.alive()
        agent.stop()


def test_a_second_agent_on_the_same_device_is_refused(
    tmp_path: Path, device: SimulatedDevice, topic_prefix: str,
    agent_processes: list[AgentProcess],
) -> None:
    config, _ = make_device(tmp_path / "agent", "meter-04", str(device.port_path),
                            SYSTEM_BROKER, topic_prefix)
    first = spawn(agent_processes, config)
    second = subprocess.run(
        [sys.executable, "-m", "senken", "edge", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 1
    assert f"another agent (pid {first.proc.pid})" in second.stderr  # type: ignore[union-attr]
    assert "Traceback" not in second.stderr
    assert first.alive()
