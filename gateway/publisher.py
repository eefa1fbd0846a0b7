"""Publishes the owner-signed device records, retained at QoS 1, and never loses one.

A record is stored with ``published = false`` before anything is sent. This thread publishes
each device's latest unpublished record on ``registry_topic(device, prefix)`` (retained: a
validator that subscribes later still gets every device's current record), waits for the
broker's PUBACK with a success reason code (MQTT 5, section 3.4.2.1) and only then marks it
published. A broker that is down, or refuses the publish, leaves the flag unset: the thread
retries on every reconnect, on every new record and every ``retry_interval_s``.

Runs on a thread of its own around a paho-mqtt 2 client (paho's network loop is another).
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.store import GatewayStore
from senken_core.topics import registry_topic

__all__ = ["MqttSettings", "RegistryPublisher"]

log = logging.getLogger(__name__)
_RECORD_QOS = 1


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca_file: Path | None = None
    client_id: str = "senken-gateway"
    keepalive_s: int = 30
    protocol: str = "5"  # or "3.1.1"


class RegistryPublisher:
    """:class:`gateway.ports.RecordPublisher` over paho-mqtt. ``start()`` once, ``stop()``."""

    def __init__(self, store: GatewayStore, settings: MqttSettings, topic_prefix: str,
                 retry_interval_s: float = 5.0, ack_timeout_s: float = 10.0) -> None:
        self.store = store
        self.settings = settings
        self.topic_prefix = topic_prefix
        self.retry_interval_s = retry_interval_s
        self.ack_timeout_s = ack_timeout_s
        self.published = 0  # counter: records acknowledged by the broker
        self.refused = 0  # counter: publishes the broker refused (ACL, ...)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._acks: dict[int, Any] = {}
        self._acked = threading.Condition()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None

    def _build_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                             protocol=mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls_ca_file is not None:
            client.tls_set(ca_certs=str(s.tls_ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def start(self) -> None:
        assert self._thread is None, "started already"
        self._client = self._build_client()
        self._client.connect_async(self.settings.host, self.settings.port,
                                   keepalive=self.settings.keepalive_s)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="registry-publisher",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused the gateway's connection: %s", reason)
            return
        log.info("connected to the broker %s:%d", self.settings.host, self.settings.port)
        self._connected.set()
        self._wake.set()  # publish what waited for the broker

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning("disconnected from the broker: %s", reason)

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._acked:
            self._acks[mid] = reason
            self._acked.notify_all()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            if self._connected.is_set():
                try:
                    self.flush()
                except Exception:  # a database outage: logged, retried; never kills the loop
                    log.exception("publishing the registry failed; retrying")
            self._wake.wait(self.retry_interval_s)

    def flush(self) -> int:
        """Publish every device's latest unpublished record; how many the broker took.
        Stops at the first that is not acknowledged (it is retried later)."""
        client = self._client
        done = 0
        if client is None:
            return done
        with self._acked:  # acknowledgements of publishes given up on: their mids get reused
            self._acks.clear()
        for row in self.store.unpublished():
            if self._stopping.is_set() or not self._connected.is_set():
                break
            topic = registry_topic(row.device, self.topic_prefix)
            info = client.publish(topic, row.wire, qos=_RECORD_QOS, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning("%s: publish not sent (%s); retrying later", row.device,
                            mqtt.error_string(info.rc))
                break
            reason = self._wait_ack(info.mid)
            if reason is None:
                log.warning("%s: no PUBACK within %.0f s; retrying later", row.device,
                            self.ack_timeout_s)
                break
            if getattr(reason, "is_failure", False):
                self.refused += 1
                log.error("%s: the broker refused the registry record (%s); check the "
                          "gateway's ACL (write %s)", row.device, reason, topic)
                break
            self.store.mark_published(row.device, row.version)
            self.published += 1
            done += 1
            log.info("%s: record version %d published on %s", row.device, row.version, topic)
        return done

    def _wait_ack(self, mid: int) -> Any:
        with self._acked:
            self._acked.wait_for(lambda: mid in self._acks or self._stopping.is_set(),
                                 timeout=self.ack_timeout_s)
            return self._acks.pop(mid, None)
