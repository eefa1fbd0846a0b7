"""Drains the outbox to the broker: QoS 1, persistent session, bounded rate, oldest first.

Runs on a thread of its own around a paho-mqtt 2 client (paho's network loop runs on another).
Delivery is at-least-once: rows leave the outbox only after their PUBACK. paho keeps
unacknowledged messages across reconnects and re-sends them (DUP set), so a broker outage
loses nothing; a crash of the agent re-sends whatever was not acknowledged, and consumers
deduplicate by ``(device, seq)``.

Status: a retained ``online`` status on every connect, ``offline`` as the last will (and on a
clean stop), refreshed with each heartbeat; both carry agent version, model hash, outbox depth
and the last error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import EdgeConfig
from edge_agent.outbox import Outbox
from edge_agent.stats import AgentStats
from senken_core.reading import SignedReading, encode_batch
from senken_core.topics import HEARTBEAT_QOS, READINGS_QOS, STATUS_QOS, device_topic

__all__ = ["Publisher", "build_client"]

DELETE_EVERY_S = 0.5
DELETE_BATCH = 512

log = logging.getLogger(__name__)


def build_client(cfg: EdgeConfig, client_id: str | None = None) -> mqtt.Client:
    """A paho client configured for ``cfg`` (credentials, TLS); not connected."""
    m = cfg.mqtt
    if m.protocol == "5":
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or cfg.device_id,
                             protocol=mqtt.MQTTv5)
    else:  # MQTT 3.1.1: the persistent session is clean_session=False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or cfg.device_id,
                             protocol=mqtt.MQTTv311, clean_session=False)
    if m.username is not None:
        client.username_pw_set(m.username, m.read_password())
    if m.tls_ca_file is not None:
        client.tls_set(
            ca_certs=str(m.tls_ca_file),
            certfile=str(m.tls_cert_file) if m.tls_cert_file else None,
            keyfile=str(m.tls_key_file) if m.tls_key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    return client


class Publisher:
    """Owns the MQTT connection of one agent."""

    def __init__(
        self,
        cfg: EdgeConfig,
        outbox: Outbox,
        stats: AgentStats,
        stop: threading.Event,
        status_fields: Callable[[], dict[str, Any]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.stats = stats
        self.stop = stop
        self.status_fields = status_fields
        self.clock = clock
        self.wake = threading.Event()
        self.connected = threading.Event()
        # PUBACK events (mid, refused) from paho's thread, consumed by the drain thread. Every
        # publish is recorded (in _inflight or _other) by the thread that made it before that
        # thread can handle any event, so an event always finds the message it belongs to.
        self._events: deque[tuple[int, bool]] = deque()
        self._inflight: dict[int, list[int]] = {}  # readings messages: mid -> seqs
        self._lock = threading.Lock()
        self._other: set[int] = set()  # status messages (QoS 1) awaiting PUBACK
        self._acked: list[int] = []  # acknowledged seqs not yet deleted
        self._last_delete = clock()
        self._handed_upto = -1
        self._tokens = float(cfg.outbox.batch_max)
        self._last_refill = clock()
        prefix = cfg.mqtt.topic_prefix
        self.readings_topic = device_topic(cfg.device_id, "readings", prefix)
        self.status_topic = device_topic(cfg.device_id, "status", prefix)
        self.heartbeat_topic = device_topic(cfg.device_id, "heartbeat", prefix)
        self.client = build_client(cfg)
        self.client.max_inflight_messages_set(cfg.outbox.inflight_max)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.will_set(self.status_topic, self._status("offline", "connection lost"),
                             qos=STATUS_QOS, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    # -- status ---------------------------------------------------------------------------
    def _status(self, state: str, reason: str | None = None) -> bytes:
        fields = self.status_fields()
        fields.update(state=state, ts_ms=int(time.time() * 1000), outbox_depth=self.outbox.depth,
                      last_error=self.stats.last_error)
        if reason:
            fields["reason"] = reason
        return json.dumps(fields, sort_keys=True).encode()

    # -- paho callbacks (paho's thread) ---------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            message = f"broker {self.cfg.mqtt.host}:{self.cfg.mqtt.port} refused: {rc}"
            log.error("%s", message)
            self.stats.error(message)
            return
        log.info("connected to broker %s:%s", self.cfg.mqtt.host, self.cfg.mqtt.port)
        self.stats.mqtt_connected = True
        self.connected.set()
        self._publish_status("online")
        self.wake.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.connected.is_set() and not self.stop.is_set():
            message = f"lost the broker {self.cfg.mqtt.host}:{self.cfg.mqtt.port} ({rc}); " \
                      "readings wait in the outbox"
            log.warning("%s", message)
            self.stats.error(message)
        self.stats.mqtt_connected = False
        self.connected.clear()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        # Called with paho's message mutex held: take no lock of ours here.
        self._events.append((mid, bool(rc.is_failure)))
        self.wake.set()

    def _publish_status(self, state: str, reason: str | None = None) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(self.status_topic, self._status(state, reason),
                                   qos=STATUS_QOS, retain=True)
        with self._lock:
            self._other.add(info.mid)
        return info

    # -- the drain loop (publisher thread) --------------------------------------------------
    def _settle(self, force: bool = False) -> None:
        """Apply PUBACKs: delete acknowledged readings, re-queue refused ones."""
        acked = self._acked
        refused: list[int] = []
        while self._events:
            mid, failed = self._events.popleft()
            seqs = self._inflight.pop(mid, None)
            if seqs is None:
                with self._lock:
                    self._other.discard(mid)
                continue
            (refused if failed else acked).extend(seqs)
        # Deletes are grouped (at most every DELETE_EVERY_S or DELETE_BATCH rows): acknowledged
        # rows are above _handed_upto, so they are never handed out twice meanwhile.
        now = self.clock()
        if acked and (force or len(acked) >= DELETE_BATCH or
                      now - self._last_delete >= DELETE_EVERY_S):
            self.outbox.delete(acked)
            self.stats.readings_acked += len(acked)
            self._acked = []
            self._last_delete = now
        if refused:
            message = (f"broker refused {len(refused)} readings (not authorised for "
                       f"{self.readings_topic}?); they stay in the outbox and are retried")
            log.error("%s", message)
            self.stats.error(message)
            self._handed_upto = min(self._handed_upto, min(refused) - 1)

    def _refill(self) -> None:
        now = self.clock()
        rate = self.cfg.outbox.drain_rate_per_s
        cap = max(float(self.cfg.outbox.batch_max), rate)  # at most one second of burst
        self._tokens = min(cap, self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now

    def _fill(self) -> None:
        """Hand the next rows to paho while the in-flight window and the rate allow."""
        batch_max = self.cfg.outbox.batch_max
        while self.connected.is_set() and not self.stop.is_set():
            if len(self._inflight) >= self.cfg.outbox.inflight_max:
                return
            self._refill()
            if self._tokens < 1:
                return
            rows = self.outbox.peek(self._handed_upto, min(batch_max, int(self._tokens)))
            if not rows:
                return
            payload = encode_batch([SignedReading(body, sig) for _, body, sig in rows])
            info = self.client.publish(self.readings_topic, payload, qos=READINGS_QOS)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.error("publish failed: %s", mqtt.error_string(info.rc))
                return
            self._inflight[info.mid] = [seq for seq, _, _ in rows]
            self._handed_upto = rows[-1][0]
            self._tokens -= len(rows)
            self.stats.messages_published += 1

    def _next_wait(self) -> float:
        """How long the drain loop may sleep before it has something to do."""
        if self._events:
            return 0.0
        wait = 0.5
        if self._tokens < 1:
            wait = min(wait, (1 - self._tokens) / self.cfg.outbox.drain_rate_per_s)
        if self._acked:
            wait = min(wait, self._last_delete + DELETE_EVERY_S - self.clock())
        return max(0.001, wait)

    def heartbeat(self) -> None:
        """Publish a heartbeat and refresh the retained status."""
        if not self.connected.is_set():
            return
        payload = json.dumps({**self.status_fields(), **self.stats.snapshot(),
                              "outbox_depth": self.outbox.depth,
                              "ts_ms": int(time.time() * 1000)}, sort_keys=True).encode()
        self.client.publish(self.heartbeat_topic, payload, qos=HEARTBEAT_QOS)
        self._publish_status("online")

    def run(self, on_tick: Callable[[], None] | None = None) -> None:
        """Connect and drain until ``stop`` is set; then publish ``offline`` and disconnect."""
        m = self.cfg.mqtt
        if m.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = m.session_expiry_s
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s,
                                      clean_start=False, properties=props)
        else:
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()
        next_beat = self.clock()
        try:
            while not self.stop.is_set():
                self.wake.wait(self._next_wait())
                self.wake.clear()
                self._settle()
                self._fill()
                if self.clock() >= next_beat:
                    next_beat = self.clock() + self.cfg.heartbeat_interval_s
                    self.heartbeat()
                if on_tick is not None:
                    on_tick()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self.connected.is_set():
            info = self._publish_status("offline", "stopped")
            # Not sent in time: the broker's last will still says offline.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=2.0)
        self._settle(force=True)
        self.client.disconnect()
        self.client.loop_stop()
