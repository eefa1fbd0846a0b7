"""MQTT ingest: certificates and registry records from the broker into the :class:`Ledger`.

One persistent MQTT v5 session (fixed client id, clean start off, a session expiry), so the
broker queues the validators' certificates while the ledger is down (MQTT 5.0 section 3.1.2.4,
3.1.2.11.2); with ``[mqtt] protocol = "3.1.1"`` (a broker without MQTT 5, such as amqtt),
clean session off instead. Subscriptions, QoS 1::

    {prefix}/validators/+/certificates    CertifiedWindow.to_wire()
    {prefix}/registry/+                   SignedDeviceRecord.to_wire(), retained

Messages are acknowledged only once handled (committed to the database, or refused):
``paho``'s manual acknowledgement, reached through aiomqtt's client, which has no public
switch for it. If the database fails, the session is dropped unacknowledged and the broker
delivers the message again after the reconnect. A message is handled on a worker thread
(``asyncio.to_thread``): a big window's signature checks never block the event loop.

Reconnects back off exponentially with full jitter (0.5 s doubling up to ``backoff_max_s``),
resubscribing each time (Home Assistant's mqtt client does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ledger.config import MqttConfig
from ledger.service import Ledger
from ledger.store import StoreError
from senken_core.topics import registry_filter, validator_filter

__all__ = ["MqttIngest"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 10.0


class MqttIngest:
    """Feeds one :class:`Ledger` from the broker until stopped. ``status()`` for /health."""

    def __init__(self, ledger: Ledger, config: MqttConfig, prefix: str, *,
                 backoff_max_s: float = 30.0) -> None:
        self.ledger = ledger
        self.config = config
        self.prefix = prefix
        self.backoff_max_s = backoff_max_s
        self.connected = asyncio.Event()
        self.connects = 0
        self.messages = 0
        self.last_error: str | None = None
        self._since: float | None = None

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected.is_set(), "broker": f"{self.config.host}:"
                f"{self.config.port}", "connects": self.connects, "messages": self.messages,
                "last_error": self.last_error,
                "connected_for_s": None if self._since is None or not self.connected.is_set()
                else round(time.monotonic() - self._since, 1)}

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and handle messages until ``stop`` is set; reconnect with capped
        exponential backoff and jitter on any broker or database failure. Never raises for
        either."""
        delay = 0.5
        while not stop.is_set():
            session = asyncio.create_task(self._session())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({session, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not session.done():
                session.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await session
                break
            self.connected.clear()
            error = session.exception()
            if error is None:
                break
            if isinstance(error, aiomqtt.MqttError | StoreError | OSError):
                self.last_error = str(error) or type(error).__name__
                log.warning("mqtt session ended: %s; reconnecting", self.last_error)
            else:
                self.last_error = repr(error)
                log.error("mqtt session failed", exc_info=error)
            if self._since is not None and time.monotonic() - self._since > 60:
                delay = 0.5  # the last session was healthy for a while: start over
            pause = random.uniform(delay / 2, delay)
            delay = min(delay * 2, self.backoff_max_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
        self.connected.clear()

    def _client(self) -> aiomqtt.Client:
        cfg = self.config
        tls = aiomqtt.TLSParameters(ca_certs=str(cfg.tls_ca_file)) if cfg.tls_ca_file else None
        if cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
            session: dict[str, Any] = {"protocol": aiomqtt.ProtocolVersion.V5,
                                       "clean_start": False, "properties": props}
        else:  # a persistent session the 3.1.1 way, kept for as long as the broker keeps it
            session = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        client = aiomqtt.Client(
            cfg.host, cfg.port, identifier=cfg.client_id, username=cfg.username,
            password=cfg.read_password(), tls_params=tls, keepalive=cfg.keepalive_s,
            timeout=_CONNECT_TIMEOUT_S, **session)
        # Acknowledge after handling, not on receipt (module docstring). Set before connecting:
        # a resumed session delivers its queue right after CONNACK.
        client._client.manual_ack_set(True)
        return client

    async def _session(self) -> None:
        client = self._client()
        async with client:
            self.connects += 1
            self._since = time.monotonic()
            for topic in (validator_filter("certificates", self.prefix),
                          registry_filter(self.prefix)):
                await client.subscribe(topic, qos=1, timeout=_CONNECT_TIMEOUT_S)
            self.connected.set()
            self.last_error = None
            log.info("mqtt connected to %s:%d as %s", self.config.host, self.config.port,
                     self.config.client_id)
            async for message in client.messages:
                await self._handle(client, message)

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        payload = message.payload
        data = payload if isinstance(payload, bytes) else (
            payload.encode() if isinstance(payload, str) else b"")
        topic = str(message.topic)
        try:
            label = await asyncio.to_thread(self.ledger.on_message, topic, data)
        except StoreError:
            raise  # not acknowledged: redelivered after the reconnect
        except Exception:  # a bug on one message must not stop the others: count, ack, go on
            log.exception("handling %s failed", topic)
            label = "error"
        self.messages += 1
        log.debug("%s: %s", topic, label)
        if message.qos > 0:
            client._client.ack(message.mid, message.qos)
