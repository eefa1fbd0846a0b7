"""A verifying consumer: subscribes to readings, checks signatures, dedups by (device, seq)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from senken_core.errors import SenkenError
from senken_core.reading import Reading, decode_batch
from senken_core.topics import parse_device_topic, readings_filter


class ReadingConsumer:
    """Persistent-session QoS 1 subscriber, like a validator will be."""

    def __init__(self, port: int, prefix: str, public_keys: dict[str, bytes],
                 client_id: str = "test-consumer") -> None:
        self.prefix = prefix
        self.public_keys = public_keys
        self.readings: dict[tuple[str, int], Reading] = {}
        self.deliveries: Counter[tuple[str, int]] = Counter()
        self.rejected: list[str] = []
        self.arrivals: list[tuple[float, str, int]] = []  # first deliveries: (time, device, seq)
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect_async("127.0.0.1", port, keepalive=10)

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(readings_filter(self.prefix), qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = parse_device_topic(msg.topic, self.prefix)
        try:
            assert parsed is not None, msg.topic
            key = self.public_keys[parsed[0]]
            for signed in decode_batch(msg.payload):
                reading = signed.verify(key)
                assert reading.device == parsed[0]
                with self.lock:
                    if not self.deliveries[(reading.device, reading.seq)]:
                        self.arrivals.append((time.monotonic(), reading.device, reading.seq))
                    self.deliveries[(reading.device, reading.seq)] += 1
                    self.readings[(reading.device, reading.seq)] = reading
        except (SenkenError, AssertionError, KeyError) as exc:
            with self.lock:
                self.rejected.append(f"{msg.topic}: {exc!r}")

    def __enter__(self) -> ReadingConsumer:
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise AssertionError("consumer could not subscribe")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def frame_counters(self, device: str) -> list[int]:
        with self.lock:
            return sorted(r.frame_counter for (d, _), r in self.readings.items() if d == device)

    def count(self, device: str | None = None) -> int:
        with self.lock:
            return sum(1 for d, _ in self.readings if device is None or d == device)
