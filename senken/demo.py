"""``senken demo``: the whole system built so far, on embedded defaults, with visible progress.

Simulated sensors on pseudo-terminals feed real edge agents (key, model, outbox, MQTT), which
publish to a broker; a verifying subscriber checks every reading's signature against its
device's key and deduplicates by (device, seq), printing what arrives.

The broker is the first that works of: one already listening on 127.0.0.1:1883; the
``mosquitto`` binary started on a free port; the amqtt broker run in-process (MQTT 3.1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

__all__ = ["demo_cmd"]

KINDS = ("elec_meter", "biogas_flare", "soil_co2")
# The model scores 0 until a stream has filled its window (320 values) and warm-up (50): the
# first meter gets a voltage surge after that, so the demo shows the model flag an anomaly.
SPIKE_AT_FRAME = 450
NAMES = {"elec_meter": "pv-meter", "biogas_flare": "flare", "soil_co2": "soil"}


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.05)
    return True


@contextlib.contextmanager
def broker(workdir: Path, requested: str | None) -> Iterator[tuple[int, str, str]]:
    """Yield (port, MQTT protocol, description) of a broker for the demo.

    ``requested``: ``127.0.0.1:PORT`` (use that broker), ``mosquitto`` (start one), ``amqtt``
    (run one in-process), or None (the first that works, in that order from the module doc).
    """
    if requested not in (None, "mosquitto", "amqtt"):
        host, _, port_text = requested.rpartition(":")
        if host not in ("127.0.0.1", "localhost") or not port_text.isdigit():
            raise click.BadParameter("use 127.0.0.1:PORT", param_hint="--broker")
        if not _listening(int(port_text)):
            raise click.ClickException(f"no broker listening on {requested}")
        yield int(port_text), "5", f"broker at {requested}"
        return
    if requested is None and _listening(1883):
        yield 1883, "5", "Mosquitto already running at 127.0.0.1:1883"
        return
    port = _free_port()
    if requested == "mosquitto" and not shutil.which("mosquitto"):
        raise click.ClickException("mosquitto is not installed (apt-get install mosquitto)")
    if requested != "amqtt" and shutil.which("mosquitto"):
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "max_queued_messages 100000\n")
        proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            if not _wait(lambda: _listening(port) or proc.poll() is not None, 10) or \
                    proc.poll() is not None:
                raise click.ClickException("mosquitto did not start")
            yield port, "5", f"Mosquitto started on 127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        return
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise click.ClickException("no MQTT broker: install mosquitto (apt-get install "
                                   "mosquitto) or amqtt (pip install amqtt)") from None
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="amqtt", daemon=True)
    thread.start()
    amqtt = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}}},
                   loop=loop)
    asyncio.run_coroutine_threadsafe(amqtt.start(), loop).result(30)
    try:
        yield port, "3.1.1", f"amqtt broker in-process on 127.0.0.1:{port} (MQTT 3.1.1)"
    finally:
        asyncio.run_coroutine_threadsafe(amqtt.shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)


class VerifyingSubscriber:
    """Checks each reading's signature against its device key; dedups by (device, seq)."""

    def __init__(self, port: int, protocol: str, prefix: str, keys: dict[str, bytes]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from senken_core.topics import readings_filter

        self.keys = keys
        self.prefix = prefix
        self.seen: set[tuple[str, int]] = set()
        self.verified: Counter[str] = Counter()
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()
        self.last: dict[str, Any] = {}
        self.anomalies: list[Any] = []
        self.threshold_ppm = 500_000
        self.lock = threading.Lock()
        version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="senken-demo-verifier",
                                  protocol=version)
        self.client.on_connect = lambda c, *_: c.subscribe(readings_filter(prefix), qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        from senken_core.errors import SenkenError
        from senken_core.reading import decode_batch
        from senken_core.topics import parse_device_topic

        parsed = parse_device_topic(msg.topic, self.prefix)
        try:
            if parsed is None or parsed[0] not in self.keys:
                raise SenkenError(f"unknown device topic {msg.topic}")
            for signed in decode_batch(msg.payload):
                reading = signed.verify(self.keys[parsed[0]])
                with self.lock:
                    key = (reading.device, reading.seq)
                    if key in self.seen:
                        self.duplicates += 1
                        continue
                    self.seen.add(key)
                    self.verified[reading.device] += 1
                    self.last[reading.device] = reading
                    if reading.anomaly_ppm >= self.threshold_ppm:
                        self.anomalies.append(reading)
        except SenkenError as exc:
            with self.lock:
                self.rejected[type(exc).__name__] += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _describe(reading: Any) -> str:
    values = ", ".join(f"{name}={value}" for name, value in reading.values)
    return f"seq {reading.seq}: {values}; anomaly {reading.anomaly_ppm / 1e4:.2f}%"


@click.command("demo")
@click.option("--devices", type=click.IntRange(1, 50), default=3, show_default=True,
              help="simulated devices (kinds cycle: meter, flare, soil)")
@click.option("--rate", type=click.FloatRange(0.1, 200), default=10.0, show_default=True,
              help="frames per second per device")
@click.option("--duration", type=click.FloatRange(0), default=60.0, show_default=True,
              help="seconds to run (0: until Ctrl-C); the first meter's voltage surges at frame "
              f"{SPIKE_AT_FRAME}, after the model's warm-up")
@click.option("--broker", "broker_addr", default=None,
              metavar="127.0.0.1:PORT|mosquitto|amqtt",
              help="use this broker, start mosquitto, or run amqtt in-process "
              "[default: 127.0.0.1:1883 if up, else mosquitto, else amqtt]")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="where the demo devices keep keys and outboxes [default: a temp dir]")
def demo_cmd(devices: int, rate: float, duration: float, broker_addr: str | None,
             state_dir: Path | None) -> None:
    """Run simulated devices -> edge agents -> broker -> verifying subscriber, end to end."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from edge_agent.app import EdgeAgent
    from edge_agent.config import EdgeConfig
    from firmware_sim.device import SimulatedDevice
    from firmware_sim.faults import Fault
    from senken_core.keys import DeviceKey

    echo = click.echo
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="senken-")))
        state_dir.mkdir(parents=True, exist_ok=True)
        port, protocol, what = stack.enter_context(broker(state_dir, broker_addr))
        echo(f"[1/4] broker      {what}")
        prefix = f"senken-demo-{int(time.time())}/v1"
        sims, agents, keys = [], [], {}
        for i in range(devices):
            kind = KINDS[i % len(KINDS)]
            device_id = f"{NAMES[kind]}-{i + 1:02d}"
            faults = [Fault(fault="spike", at_frame=SPIKE_AT_FRAME, channel="voltage_dv",
                            factor=1.5)] if i == 0 else []
            sim = SimulatedDevice(kind, rate_hz=rate, seed=i, link=state_dir / f"tty-{device_id}",
                                  faults=faults)
            stack.callback(sim.stop)
            sims.append(sim)
            home = state_dir / device_id
            home.mkdir(exist_ok=True)
            key_path = home / "device.key"
            key = DeviceKey.load(key_path) if key_path.exists() else DeviceKey.generate()
            if not key_path.exists():
                key.save(key_path)
            keys[device_id] = key.public_key
            cfg = EdgeConfig.from_dict({
                "device_id": device_id, "state_dir": str(home),
                "serial": {"port": str(sim.port_path), "kind": kind},
                "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": prefix,
                         "protocol": protocol},
                "heartbeat_interval_s": 5.0,
            })
            agents.append(EdgeAgent(cfg))
            echo(f"[2/4] device      {device_id:<14} {kind:<13} on {sim.path} "
                 f"(key {key.public_key.hex()[:16]}...)")
        subscriber = VerifyingSubscriber(port, protocol, prefix, keys)
        subscriber.threshold_ppm = int(agents[0].model.threshold * 1_000_000)
        stack.callback(subscriber.close)
        for agent in agents:
            agent.start()
            stack.callback(agent.stop)
        for sim in sims:
            sim.start()
        echo(f"[3/4] agents      {len(agents)} edge agents reading, scoring "
             f"(model {agents[0].model.sha256.hex()[:16]}...), signing, publishing")
        echo(f"[4/4] subscriber  verifying signatures on {prefix}/devices/+/readings")
        start = time.monotonic()
        tick = threading.Event()
        shown = 0
        try:
            while duration == 0 or time.monotonic() - start < duration:
                tick.wait(2.0)
                with subscriber.lock:
                    total = sum(subscriber.verified.values())
                    echo(f"  t={time.monotonic() - start:5.1f}s  {total} readings verified, "
                         f"{subscriber.duplicates} duplicates dropped, "
                         f"{sum(subscriber.rejected.values())} rejected")
                    for device_id in keys:
                        if device_id in subscriber.last:
                            echo(f"      {device_id:<14} {subscriber.verified[device_id]:>5}  "
                                 f"{_describe(subscriber.last[device_id])}")
                    for reading in subscriber.anomalies[shown:]:
                        echo(f"  ! anomaly flagged by {reading.device}'s model: "
                             f"{_describe(reading)}")
                    shown = len(subscriber.anomalies)
        except KeyboardInterrupt:
            echo("stopping")
        with subscriber.lock:
            total = sum(subscriber.verified.values())
            flagged = len(subscriber.anomalies)
        echo(f"done: {flagged} readings flagged anomalous by the on-device model "
             f"(score >= {subscriber.threshold_ppm / 1e4:.0f}%, signed with each reading)")
        echo(f"done: {total} signed readings from {devices} devices arrived and verified; "
             f"{sum(a.outbox.depth for a in agents)} more in flight when stopped")
        if total == 0:
            raise click.ClickException("no reading arrived: see the messages above")
