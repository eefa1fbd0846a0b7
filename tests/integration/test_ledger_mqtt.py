"""The whole ledger process (MQTT ingest, API, PostgreSQL) against the real Mosquitto."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ledger.app import LedgerApp
from ledger.config import LedgerConfig, MqttConfig
from ledger.mqtt import MqttIngest
from ledger.store import StoreError
from senken_core.topics import registry_topic, validator_topic
from tests.support.postgres import fresh_database
from tests.support.waiting import wait_until
from tests.unit.test_ledger_support import World

pytestmark = pytest.mark.integration

BROKER = ("127.0.0.1", 1883)


class RunningLedger:
    """A :class:`LedgerApp` on an event loop of its own thread, stopped like SIGTERM would."""

    def __init__(self, app: LedgerApp) -> None:
        self.app = app
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self.app.run(self._stop)

    def __enter__(self) -> RunningLedger:
        self._thread.start()
        assert self._ready.wait(10)
        wait_until(lambda: self.app.api_port is not None and self.app.ingest.connected.is_set(),
                   20, "the ledger to listen and connect to the broker")
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        assert not self._thread.is_alive(), "the ledger did not stop"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.app.api_port}{path}", timeout=5)


class Publisher:
    def __init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect(*BROKER)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _end_session(client_id: str) -> None:
    """Remove the ledger's persistent session from the shared broker."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.connect(*BROKER, clean_start=True)
    client.loop_start()
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def config(tmp_path: Path) -> Iterator[LedgerConfig]:
    client_id = f"test-ledger-{uuid.uuid4().hex[:8]}"
    with fresh_database("ledger") as url:
        yield LedgerConfig.from_dict({
            "state_dir": str(tmp_path), "database_url": url,
            "mqtt": {"host": BROKER[0], "port": BROKER[1], "client_id": client_id,
                     "session_expiry_s": 300},
            "api": {"port": 0}})
        _end_session(client_id)


def test_certificates_reach_the_log_even_while_the_ledger_is_down(
        config: LedgerConfig, topic_prefix: str) -> None:
    world = World(prefix=topic_prefix)
    validator = world.validators[0].address
    certificates = validator_topic(validator, "certificates", topic_prefix)
    publisher = Publisher()
    try:
        with RunningLedger(LedgerApp(config, world.network)) as ledger:
            first = world.certify(0)
            publisher.publish(certificates, b"not a certificate")
            publisher.publish(certificates, first.to_wire())  # before the device's record
            publisher.publish(registry_topic(world.device, topic_prefix),
                              world.record().to_wire(), retain=True)
            path = f"/attestations/{first.attestation.id.hex()}"
            wait_until(lambda: ledger.get(path).status_code == 200, 20,
                       "the first window in the API")
            assert ledger.get(path).json()["log_index"] == 0
            health = ledger.get("/health").json()
            assert health["mqtt_connected"] and health["log_size"] == 1
            metrics = ledger.get("/metrics").text
            assert 'outcome="refused:malformed"' in metrics
            assert 'senken_ledger_certificates_total{outcome="pending"} 1.0' in metrics
        # the ledger is down: the broker queues what the validators publish
        second = world.certify(1)
        publisher.publish(certificates, second.to_wire())
        with RunningLedger(LedgerApp(config, world.network)) as ledger:
            path = f"/attestations/{second.attestation.id.hex()}"
            wait_until(lambda: ledger.get(path).status_code == 200, 20,
                       "the window certified while the ledger was down")
            assert ledger.get("/log/verify").json() == {
                "ok": True, "entries": 2, "head_hash": ledger.get("/log/head").json()[
                    "head_hash"], "first_bad_index": None, "reason": None}
    finally:
        publisher.publish(registry_topic(world.device, topic_prefix), b"", retain=True)
        publisher.close()


class FlakyLedger:
    """Stands in for the Ledger: the database fails on the first message."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def on_message(self, topic: str, payload: bytes) -> str:
        self.calls.append((topic, payload))
        if len(self.calls) == 1:
            raise StoreError("database down")
        return "appended"


def test_a_message_the_database_failed_on_is_delivered_again(topic_prefix: str) -> None:
    """Acknowledged only once handled: after a database failure the ingest reconnects and the
    broker delivers the unacknowledged certificate again."""
    client_id = f"test-ledger-{uuid.uuid4().hex[:8]}"
    flaky = FlakyLedger()
    ingest = MqttIngest(flaky, MqttConfig(client_id=client_id, session_expiry_s=300),  # type: ignore[arg-type]
                        topic_prefix, backoff_max_s=1.0)
    stop: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    ready = threading.Event()

    async def main() -> None:
        nonlocal stop, loop
        stop, loop = asyncio.Event(), asyncio.get_running_loop()
        ready.set()
        await ingest.run(stop)

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    publisher = Publisher()
    try:
        assert ready.wait(10)
        wait_until(ingest.connected.is_set, 20, "the ingest to connect")
        topic = validator_topic(b"\x01" * 20, "certificates", topic_prefix)
        publisher.publish(topic, b"payload-1")
        wait_until(lambda: len(flaky.calls) >= 2, 20, "the certificate delivered again")
        assert flaky.calls == [(topic, b"payload-1")] * 2
        assert ingest.connects == 2 and ingest.last_error is None
    finally:
        publisher.close()
        assert loop is not None and stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)
        _end_session(client_id)
