"""The validator's composition root and runner: the I/O around the pure :class:`ValidatorNode`.

Tasks and channels (one asyncio loop on the main thread, one HTTP thread)::

    broker ══MQTT v5, QoS 1, clean_start=False, session expiry, will = status "offline"══╗
      ▲                                                                                  ║
      ║ publish (≤ 64 in flight)                                         messages (queue) ║
      ║                                                                                  ▼
    [publisher task] ◀── outbox (deque of Outbound) ◀──┐     paho's on_message stamps each
      per connection         bounded, oldest dropped   │       message with its arrival time
                                                       │       into the inbox as it is read
                                                       │         │ inbox (deque) + wake
                                                       │         ▼
                                                       └── [worker task] node.on_message per
                                                             message (yielding between them),
                                                             node.tick at next_deadline() and
                                                             at least every 0.5 s; lives
                                                             across connections

Overload (docs/protocol.md, section 7): the node's clock is *arrival time*. A message is fed
with the time it arrived (``now`` of ``on_message``), and a tick happens at time ``t`` only
once every message that arrived before ``t`` has been fed: a node that is behind closes a
window late, with every reading that reached it before the window was due, rather than on
time without them. Its lag is bounded: the node's time never trails the clock by more than
``MAX_DEFER_S``, so ticks (and rounds, and liveness) are deferred a few seconds at most.
Before each step the worker reads whatever waits in the socket (``_pump``): paho alone reads
about one packet per readable event, so a busy node's backlog would wait in the kernel,
unstamped, and peers' messages would look seconds later than they arrived.
    [supervisor] connect → publish status "online" (retained) → subscribe node.subscriptions()
       → run receiver + publisher until the link drops (→ backoff 2^n, capped, jittered;
       reconnect, resubscribe) or SIGTERM/SIGINT (→ flush the outbox ≤ 3 s, publish
       "offline" (retained), disconnect cleanly so the broker drops the will).
    [HTTP thread] /metrics, /health ── reads NodeStats + RunnerState (validator.metrics)
    [chain task] (with [chain]) every poll_s: ChainWatcher.poll on a worker thread
       (asyncio.to_thread: web3 blocks) → a new Schedule → node.on_schedule(schedule, now) on
       the loop's thread, between two worker steps; the first poll is made before the broker
       is connected, so the node starts with the chain's set when the chain answers

The node never does I/O and is fed ``time.time()``; a message on which it raises is logged,
counted (``node_errors``) and skipped, and so is a tick. Outbound messages produced while the
broker is away wait in the outbox (at most ``OUTBOX_MAX``; beyond, the oldest are dropped and
counted) and are published on reconnect; a publish cut off by a lost connection is retried,
so delivery is at least once and, across a reconnect, not always in order. Incoming QoS 1
messages are acknowledged on receipt (paho; aiomqtt has no manual acknowledgement): those the
node has not yet processed when the process dies are lost to it, like the node's own state,
which lives in memory.

Retained messages (the device registry): the first subscription of a process asks for them
(the node starts empty); later resubscriptions use MQTT 5 retain handling 1 ("only for a new
subscription", MQTT 5.0 section 3.8.3.1), since the persistent session already delivered any
change while the link was down. With ``[mqtt] protocol = "3.1.1"`` (a broker without MQTT 5,
such as amqtt) the session is kept by clean session off, for as long as the broker keeps it,
and every resubscription gets the retained records again (the node ignores those it holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import os
import random
import select
import signal
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from senken_core.errors import SenkenError
from senken_core.membership import Schedule
from senken_core.network import NetworkConfig, load_network_config, parse_address
from senken_core.secp256k1 import ValidatorKey
from senken_core.topics import STATUS_QOS, validator_topic
from validator.config import ValidatorConfig
from validator.metrics import HealthServer, RunnerState, StatsLike, ValidatorMetrics
from validator.node import Outbound
from validator.verify import Scorer

__all__ = [
    "Node",
    "NodeFactory",
    "ScheduleFollower",
    "ScheduleSource",
    "ServiceError",
    "Setup",
    "StartupError",
    "ValidatorRunner",
    "default_node_factory",
    "prepare",
    "run_validator",
]

log = logging.getLogger(__name__)

TICK_EVERY_S = 0.5  # the node's timers are looked at least this often
MAX_DEFER_S = 5.0  # a tick waits for older messages to be processed at most this long
MIN_TICK_GAP_S = 0.01  # a deadline that stays in the past cannot make the timer spin
PUMP_MAX = 1000  # packets read from the socket per step at most (see _pump)
OUTBOX_MAX = 100_000
INFLIGHT_MAX = 64
PUBLISH_TIMEOUT_S = 10.0
STOP_FLUSH_S = 3.0
STABLE_SESSION_S = 10.0
_LINK_CODES = {paho.MQTT_ERR_NO_CONN, paho.MQTT_ERR_CONN_LOST, paho.MQTT_ERR_QUEUE_SIZE}


class StartupError(SenkenError):
    """The validator cannot start as configured (key, network file, model, broker credentials);
    the message says what to fix."""


class ServiceError(SenkenError):
    """The running service cannot go on (e.g. its HTTP port is taken)."""


class Node(Protocol):
    """What the runner needs of :class:`validator.node.ValidatorNode`."""

    address: bytes

    @property
    def stats(self) -> StatsLike: ...
    def subscriptions(self) -> list[tuple[str, int]]: ...
    def on_message(self, topic: str, payload: bytes, now: float) -> list[Outbound]: ...
    def tick(self, now: float) -> list[Outbound]: ...
    def next_deadline(self) -> float | None: ...
    def status_payload(self, online: bool) -> bytes: ...


@runtime_checkable
class ScheduleFollower(Protocol):
    """A node that takes validator-set and methodology schedules (``[chain]``)."""

    def on_schedule(self, schedule: Schedule, now: float) -> list[Outbound]: ...


class ScheduleSource(Protocol):
    """What the runner needs of :class:`validator.chain.ChainWatcher`: a blocking ``poll``
    returning a new schedule or None, raising a SenkenError when the chain cannot be read."""

    def poll(self) -> Schedule | None: ...


@dataclass(frozen=True, slots=True)
class Setup:
    """Everything loaded and checked before any I/O."""

    cfg: ValidatorConfig
    key: ValidatorKey
    network: NetworkConfig
    scorer_for: Callable[[str], Scorer] | None


NodeFactory = Callable[[Setup], Node]


def default_node_factory(setup: Setup) -> Node:
    from validator.node import ValidatorNode

    node: Node = ValidatorNode(setup.key, setup.network, scorer_for=setup.scorer_for,
                               grace_s=setup.cfg.grace_s,
                               round_timeout_s=setup.cfg.round_timeout_s)
    return node


def _scorer_factory(cfg: ValidatorConfig, network: NetworkConfig,
                    ) -> Callable[[str], Scorer] | None:
    if not cfg.model.check:
        return None
    from senken_core.anomaly import AnomalyModel, ReadingScorer
    from senken_core.sensors import sensor_kind

    expected = bytes.fromhex(cfg.model.sha256) if cfg.model.sha256 else None
    model = AnomalyModel.load(cfg.model.path, expected_sha256=expected)  # ModelError
    for project in network.projects:
        if project.model_hash != model.sha256:
            log.warning("project %s requires model %s but this validator loaded %s (%s): its "
                        "readings will be rejected as wrong_model", project.id,
                        project.model_sha256, model.sha256.hex(), model.path)

    def scorer_for(kind: str) -> Scorer:
        return ReadingScorer(model, sensor_kind(kind).channels)

    return scorer_for


def prepare(cfg: ValidatorConfig) -> Setup:
    """Load the key, the network file and the model and check they fit together.

    Raises a :class:`SenkenError` (KeyFileError, ConfigError, ModelError, StartupError) whose
    message says what to fix. Does no network I/O.
    """
    key = ValidatorKey.load(cfg.key_path)
    network = load_network_config(cfg.network_file)
    members = {parse_address(a) for a in network.validators}
    if key.address not in members and cfg.chain is None:  # with [chain], the chain's set
        raise StartupError(
            f"this validator (0x{key.address.hex()}) is not in the validators of "
            f"{cfg.network_file}; add its address there (senken network init --validator ...)")
    m = cfg.mqtt
    for what, path in (("password_file", m.password_file), ("tls_ca_file", m.tls_ca_file),
                       ("tls_cert_file", m.tls_cert_file), ("tls_key_file", m.tls_key_file)):
        if path is not None and not os.access(path, os.R_OK):
            raise StartupError(f"mqtt {what} {path} cannot be read; fix the path or its "
                               "permissions")
    if m.password_file is not None and not m.read_password():
        raise StartupError(f"mqtt password_file {m.password_file} is empty")
    return Setup(cfg, key, network, _scorer_factory(cfg, network))


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


class _LinkLost(Exception):
    pass


class ValidatorRunner:
    """Runs one node against the broker until ``stop`` is set (see the module docstring)."""

    def __init__(self, cfg: ValidatorConfig, node: Node, topic_prefix: str, *,
                 clock: Callable[[], float] = time.time,
                 chain: ScheduleSource | None = None) -> None:
        self.cfg = cfg
        self.node = node
        self.chain = chain
        self.chain_errors = 0  # polls that failed
        self.schedules = 0  # schedules given to the node
        self.clock = clock
        self.state = RunnerState(started_at=clock())
        self.metrics = ValidatorMetrics(lambda: self.node.stats, self.state, node.address,
                                        clock)
        self.status_topic = validator_topic(node.address, "status", topic_prefix)
        self.client_id = cfg.client_id_for(node.address)
        self._outbox: deque[Outbound] = deque()
        self._inbox: deque[tuple[float, str, bytes]] = deque()  # (arrival, topic, payload)
        # peers' messages (agreement, certificates): taken up before waiting reading batches
        self._peers: deque[tuple[float, str, bytes]] = deque()
        self._peer_prefix = f"{topic_prefix}/validators/"
        self._node_now = -float("inf")  # the last time given to the node (never decreases)
        self._last_tick = -float("inf")  # monotonic
        self._inflight: set[asyncio.Task[None]] = set()
        self._subscribed_once = False
        self._errors_logged = 0
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # the node's deadline may have moved
        self._outbox_ready = asyncio.Event()
        self._drained = asyncio.Event()  # outbox empty and nothing in flight
        self._link_lost = asyncio.Event()  # a publish found the link down
        self._paho: paho.Client | None = None  # the connection's client while it is up

    # -- the node, fed inline ------------------------------------------------------------

    def _after_node(self, outbound: list[Outbound]) -> None:
        self.metrics.drain(self.node.stats)
        for item in outbound:
            self._outbox.append(item)
        overflow = len(self._outbox) - OUTBOX_MAX
        if overflow > 0:
            for _ in range(overflow):
                self._outbox.popleft()
            self.state.outbound_dropped += overflow
            log.warning("outbox full (%d messages waiting for the broker): dropped the %d "
                        "oldest", OUTBOX_MAX, overflow)
        if outbound:
            self._outbox_ready.set()
            self._drained.clear()
        self.state.outbound_queued = len(self._outbox) + len(self._inflight)
        self._wake.set()  # the node's next deadline may have moved

    def _node_failed(self, what: str) -> None:
        self.state.node_errors += 1
        # a flood of failing messages must not flood the log with tracebacks
        if self._errors_logged < 20 or self.state.node_errors % 1000 == 0:
            self._errors_logged += 1
            log.error("the node raised on %s; skipped (%d so far)", what, self.state.node_errors,
                      exc_info=True)

    def received(self, topic: str, payload: bytes, at: float | None = None) -> None:
        """A message from the broker, arrived at ``at`` (default now): queued for the node,
        peers' messages apart from the rest."""
        queue = self._peers if topic.startswith(self._peer_prefix) else self._inbox
        queue.append((self.clock() if at is None else at, topic, payload))
        self._wake.set()

    def node_time(self, now: float) -> float:
        """The time the node may be at: ``now``, but not past the arrival of the oldest
        message it has not processed yet, unless that is more than ``MAX_DEFER_S`` ago."""
        t = now
        if self._inbox or self._peers:
            oldest = min(q[0][0] for q in (self._inbox, self._peers) if q)
            t = min(now, max(oldest, now - MAX_DEFER_S))
        return max(t, self._node_now)

    def _pump(self) -> None:
        """Read what waits in the socket into the inbox, stamped now. paho reads about one
        packet per readable event and the worker yields once per message, so without this
        a busy node's backlog waits in the kernel (and the broker), unstamped, while its
        clock runs on: peers' haves, proposals and signatures would look seconds later than
        they arrived, and rounds time out. Never raises."""
        client = self._paho
        if client is None:
            return
        try:
            sock = client.socket()
            for _ in range(PUMP_MAX):
                if sock is None or not select.select([sock], [], [], 0)[0]:
                    return
                if client.loop_read() != paho.MQTT_ERR_SUCCESS:
                    return  # the link is going: aiomqtt's own reader sees it too
                sock = client.socket()
        except (OSError, ValueError):
            return

    def step(self) -> float | None:
        """Do the next thing the node needs: a tick that is due at the node's time, else the
        oldest peer's message, else the oldest other message. Returns None when it did
        something, else how long to wait (s) at most before the next tick. Never raises."""
        self._pump()
        now = self.clock()
        t = self.node_time(now)
        deadline = self._deadline()
        since = time.monotonic() - self._last_tick
        if since >= TICK_EVERY_S or (deadline is not None and deadline <= t
                                     and since >= MIN_TICK_GAP_S):
            self._last_tick = time.monotonic()
            self._node_now = t
            self._tick(t)
            return None
        # A peer's message goes first, at the node's time (the oldest arrival still waiting):
        # a window's have, proposal, signatures and certificate are not held up behind the
        # reading batches of the next window that arrived before them (docs/protocol.md,
        # section 7, "late, not lost"). Everything else in arrival order, at its arrival.
        queue = self._peers or self._inbox
        if queue:
            at, topic, payload = queue.popleft()
            self.metrics.message_wait.observe(max(0.0, now - at))
            inbox = self._inbox
            self.state.inbox_queued = len(inbox) + len(self._peers)
            self.state.behind_s = max(0.0, now - inbox[0][0]) if inbox else 0.0
            if queue is self._peers:
                self.handle_message(topic, payload, t)
            else:
                self.handle_message(topic, payload, max(
                    self._node_now, min(now, max(at, now - MAX_DEFER_S))))
            return None
        wait_s = TICK_EVERY_S - since
        if deadline is not None:
            wait_s = min(wait_s, max(deadline - now, MIN_TICK_GAP_S - since))
        return max(wait_s, 0.0)

    def handle_message(self, topic: str, payload: bytes, now: float | None = None) -> None:
        """Feed one message to the node (at ``now``, default the clock) and queue what it
        wants sent. Never raises."""
        if now is None:
            now = self.clock()
        self._node_now = max(self._node_now, now)
        self.state.messages_received += 1
        self.state.last_message_at = now
        try:
            outbound = self.node.on_message(topic, payload, now)
        except Exception:
            self._node_failed(f"a message on {topic} ({len(payload)} bytes)")
            outbound = []
        self._after_node(outbound)

    def apply_schedule(self, schedule: Schedule) -> None:
        """Give the node a new schedule, at the node's time, and queue what it wants sent.
        Never raises."""
        node = self.node
        if not isinstance(node, ScheduleFollower):
            log.error("the node cannot follow validator-set changes; schedule ignored")
            return
        now = self.node_time(self.clock())
        self._node_now = now
        self.schedules += 1
        latest = schedule.latest
        log.info("schedule: validator set epoch %d (%d members, k = %d) for %s%s",
                 latest.epoch, len(latest.members), latest.threshold,
                 "every window" if len(schedule.changes) == 1 else
                 f"windows from {latest.activation(schedule.activation_delay_s)} on",
                 "" if self.node.address in latest.members else
                 "; this validator is not a member: it verifies readings, takes no part")
        try:
            outbound = node.on_schedule(schedule, now)
        except Exception:
            self._node_failed("a schedule")
            outbound = []
        self._after_node(outbound)

    async def poll_chain(self) -> None:
        """One chain poll on a worker thread; a new schedule goes to the node. Never raises:
        a failed poll is logged (the first, then every 20th until one succeeds) and
        counted."""
        if self.chain is None:
            return
        try:
            schedule = await asyncio.to_thread(self.chain.poll)
        except SenkenError as exc:
            self._chain_failed()
            if self.chain_errors % 20 == 1:
                log.warning("%s (failed polls: %d); keeping the schedule the node has",
                            exc, self.chain_errors)
            return
        except Exception:  # a bug in the watcher: say so, keep the validator running
            self._chain_failed()
            log.exception("the chain watcher failed")
            return
        if self.chain_errors:
            log.info("the chain answers again after %d failed polls", self.chain_errors)
            self.chain_errors = self.state.chain_polls_failing = 0
        if schedule is not None:
            self.apply_schedule(schedule)

    def _chain_failed(self) -> None:
        self.chain_errors += 1
        self.state.chain_poll_failures += 1
        self.state.chain_polls_failing = self.chain_errors

    async def _chain_loop(self) -> None:
        poll_s = self.cfg.chain.poll_s if self.cfg.chain is not None else 15.0
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), poll_s)
            if not self._stop.is_set():
                await self.poll_chain()

    def _tick(self, now: float) -> None:
        try:
            outbound = self.node.tick(now)
        except Exception:
            self._node_failed("a tick")
            outbound = []
        self._after_node(outbound)

    def _deadline(self) -> float | None:
        try:
            return self.node.next_deadline()
        except Exception:
            self._node_failed("next_deadline")
            return None

    async def _work_loop(self) -> None:
        while True:
            self._wake.clear()
            wait_s = self.step()
            if wait_s is None or wait_s <= 0:
                await asyncio.sleep(0)  # let paho read, the receiver stamp, the publisher send
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)

    # -- the broker ------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        m = self.cfg.mqtt
        v5 = m.protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = m.session_expiry_s
        tls = None
        if m.tls_ca_file is not None:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(m.tls_ca_file),
                certfile=str(m.tls_cert_file) if m.tls_cert_file else None,
                keyfile=str(m.tls_key_file) if m.tls_key_file else None,
                cert_reqs=ssl.CERT_REQUIRED)
        return aiomqtt.Client(
            m.host, m.port, username=m.username, password=m.read_password(),
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self.status_topic, self.node.status_payload(False),
                              qos=STATUS_QOS, retain=True),
            # a persistent session either way: clean start off (5), clean session off (3.1.1)
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            clean_session=None if v5 else False, properties=properties, keepalive=m.keepalive_s,
            timeout=m.connect_timeout_s, tls_params=tls, logger=log.getChild("mqtt"))

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        retain_handling = (SubscribeOptions.RETAIN_SEND_IF_NEW_SUB if self._subscribed_once
                           else SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
        topics: list[tuple[str, Any]] = [
            (f, SubscribeOptions(qos=q, retainHandling=retain_handling)
             if self.cfg.mqtt.protocol == "5" else q)  # 3.1.1: no options, QoS only
            for f, q in self.node.subscriptions()]
        if not topics:
            return
        codes = await client.subscribe(topics)
        for (topic, _o), code in zip(topics, codes, strict=False):
            value = getattr(code, "value", code)
            if isinstance(value, int) and value >= 0x80:
                log.error("the broker refused the subscription to %s: %s (check its ACL)",
                          topic, code)
        self._subscribed_once = True

    def _on_paho_message(self, _client: object, _userdata: object,
                         message: paho.MQTTMessage) -> None:
        """paho's callback, on the loop's thread as paho reads the socket: the arrival time is
        taken here, not when a task gets round to the message."""
        self.received(message.topic, _payload_bytes(message.payload))

    async def _receive(self, client: aiomqtt.Client) -> None:
        # with paho's on_message taken over (see _session) nothing comes this way; the loop
        # still ends with MqttError when the link drops
        async for message in client.messages:
            self.received(message.topic.value, _payload_bytes(message.payload))

    async def _publish_one(self, client: aiomqtt.Client, item: Outbound,
                           slots: asyncio.Semaphore) -> None:
        try:
            await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain,
                                 timeout=PUBLISH_TIMEOUT_S)
            self.state.published += 1
        except asyncio.CancelledError:
            self._outbox.appendleft(item)  # cut off by a stop or a lost link: sent again later
            raise
        except aiomqtt.MqttCodeError as exc:
            self.state.publish_failures += 1
            if exc.rc in _LINK_CODES:
                self._outbox.appendleft(item)
                self._link_lost.set()
            else:
                log.error("cannot publish %d bytes to %s: %s; dropped", len(item.payload),
                          item.topic, exc)
        except aiomqtt.MqttError as exc:  # no PUBACK in time: the link is likely dead
            self.state.publish_failures += 1
            self._outbox.appendleft(item)
            log.warning("publish to %s: %s", item.topic, exc)
            self._link_lost.set()
        except ValueError as exc:  # paho refuses the topic or QoS: the node's bug
            self.state.publish_failures += 1
            log.error("cannot publish to %r: %s; dropped", item.topic, exc)
        finally:
            slots.release()

    def _publish_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self.state.outbound_queued = len(self._outbox) + len(self._inflight)
        if not self._outbox and not self._inflight:
            self._drained.set()

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        slots = asyncio.Semaphore(INFLIGHT_MAX)
        while not self._link_lost.is_set():
            if not self._outbox:
                if not self._inflight:
                    self._drained.set()
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            await slots.acquire()
            if self._link_lost.is_set() or not self._outbox:
                slots.release()
                continue
            task = asyncio.create_task(self._publish_one(client, self._outbox.popleft(), slots))
            self._inflight.add(task)
            task.add_done_callback(self._publish_done)

    async def _session(self) -> None:
        """One connection: returns after a clean stop, raises MqttError/_LinkLost otherwise."""
        client = self._client()
        inner = getattr(client, "_client", None)  # aiomqtt's paho client
        if isinstance(inner, paho.Client):
            # take messages straight from paho: stamped on arrival, and no task and
            # asyncio.wait per message (aiomqtt's iterator); aiomqtt only queues them
            inner.on_message = self._on_paho_message
        async with client:
            self._paho = inner if isinstance(inner, paho.Client) else None
            self.state.connected = True
            self.state.connections += 1
            log.info("connected to %s:%d as %s", self.cfg.mqtt.host, self.cfg.mqtt.port,
                     self.client_id)
            await client.publish(self.status_topic, self.node.status_payload(True),
                                 qos=STATUS_QOS, retain=True, timeout=PUBLISH_TIMEOUT_S)
            await self._subscribe(client)
            self._link_lost.clear()
            receiver = asyncio.create_task(self._receive(client))
            publisher = asyncio.create_task(self._publish_loop(client))
            stopping = asyncio.create_task(self._stop.wait())
            lost = asyncio.create_task(self._link_lost.wait())
            tasks = {receiver, publisher, stopping, lost}
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                receiver.cancel()
                if self._stop.is_set() and not self._link_lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._drained.wait(), STOP_FLUSH_S)
            finally:
                self._paho = None
                for task in (*tasks, *self._inflight):
                    task.cancel()
                await asyncio.gather(*tasks, *self._inflight, return_exceptions=True)
            for task in (receiver, publisher):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if self._link_lost.is_set() or not self._stop.is_set():
                raise _LinkLost("a publish failed: the broker link is down")
            await client.publish(self.status_topic, self.node.status_payload(False),
                                 qos=STATUS_QOS, retain=True, timeout=STOP_FLUSH_S)
            log.info("published status offline; disconnecting")

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, reconnect and process until ``stop`` is set. Returns after a clean stop."""
        self._stop = stop
        if self.chain is not None:
            await self.poll_chain()  # start with the chain's set if the chain answers
        timer = asyncio.create_task(self._work_loop(), name="validator-worker")
        watcher = None if self.chain is None else \
            asyncio.create_task(self._chain_loop(), name="validator-chain")

        def timer_ended(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                stop.set()

        timer.add_done_callback(timer_ended)
        attempt = 0
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await self._session()
                except (aiomqtt.MqttError, _LinkLost, OSError) as exc:
                    problem = str(exc) or type(exc).__name__
                else:
                    problem = ""
                finally:
                    self.state.connected = False
                    self._paho = None
                if stop.is_set():
                    break
                if time.monotonic() - started >= STABLE_SESSION_S:
                    attempt = 0  # a link that held; a broker that drops us at once backs off
                m = self.cfg.mqtt
                delay = min(m.reconnect_max_s, m.reconnect_min_s * 2 ** min(attempt, 30))
                delay *= random.uniform(0.5, 1.0)
                attempt += 1
                log.warning("broker %s:%d: %s; reconnecting in %.1f s", m.host, m.port,
                            problem or "disconnected", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()
            await asyncio.gather(timer, *filter(None, [watcher]), return_exceptions=True)
        if not timer.cancelled() and timer.exception() is not None:  # a bug: stop, loudly
            raise ServiceError(f"the timer task failed: {timer.exception()!r}") \
                from timer.exception()


# -- the process ------------------------------------------------------------------------------


def _chain_watcher(cfg: ValidatorConfig, network: NetworkConfig) -> ScheduleSource | None:
    """The ``[chain]`` watcher, or None without ``[chain]``. No I/O (the runner polls)."""
    c = cfg.chain
    if c is None:
        return None
    try:
        from validator.chain import ChainWatcher
    except ImportError as exc:
        raise StartupError(f"[chain] needs web3 ({exc}); install it with "
                           "pip install 'senken[chain]', or remove [chain]") from None
    try:
        delay = network.activation_delay(c.activation_delay_s,
                                         "[chain] of the validator's config")
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if delay < c.poll_s:
        raise StartupError(f"activation_delay_s ({delay}) is below [chain] "
                           f"poll_s ({c.poll_s}): a change could apply to windows before this "
                           "validator reads it")
    return ChainWatcher.connect(c.url, network, timeout_s=c.timeout_s,
                                activation_delay_s=delay,
                                validator_set=c.validator_set,
                                project_registry=c.project_registry,
                                confirmations=c.confirmations, from_block=c.from_block)


def _lock_state_dir(cfg: ValidatorConfig) -> int:
    """One validator per state dir: two would share one client id and evict each other."""
    fd = os.open(cfg.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(f"another validator (pid {holder}) is running on {cfg.state_dir}; "
                           "stop it first") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _write_status(cfg: ValidatorConfig, status: dict[str, object]) -> None:
    tmp = cfg.status_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=1, sort_keys=True), "utf-8")
    os.replace(tmp, cfg.status_path)


async def _serve(runner: ValidatorRunner) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


GC_GEN0_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)


def _settle_heap() -> None:
    """What start-up made (modules, the model, the registry) is moved out of the collector's
    sight, and young collections run less often: a node allocates a few objects per reading
    and keeps up to ``history`` readings per device, so the defaults collect every few
    readings and rescan that history (measured at 4,400 readings/s: about 2 % of a node's
    CPU in the collector)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def run_validator(cfg: ValidatorConfig, node_factory: NodeFactory | None = None) -> None:
    """Run until SIGTERM/SIGINT.

    Raises a :class:`SenkenError` before starting when the setup is wrong (see
    :func:`prepare`; :class:`StartupError` also when another validator holds the state dir),
    :class:`ServiceError` when the HTTP port cannot be bound.
    """
    setup = prepare(cfg)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = _lock_state_dir(cfg)
    http: HealthServer | None = None
    status: dict[str, object] = {}
    try:
        node = (node_factory or default_node_factory)(setup)
        if node.address != setup.key.address:
            raise ServiceError("the node's address is not its key's")
        runner = ValidatorRunner(cfg, node, setup.network.topic_prefix,
                                 chain=_chain_watcher(cfg, setup.network))
        http = HealthServer(runner.metrics, cfg.http.host, cfg.http.port)
        try:
            port = http.start()
        except OSError as exc:
            raise ServiceError(
                f"/metrics and /health on {cfg.http.host}:{cfg.http.port}: "
                f"{exc.strerror or exc}; set [http] port (0 picks a free one)") from None
        status = {"pid": os.getpid(), "address": "0x" + node.address.hex(),
                  "http_host": cfg.http.host, "http_port": port, "client_id": runner.client_id,
                  "broker": f"{cfg.mqtt.host}:{cfg.mqtt.port}", "running": True,
                  "started_ms": int(time.time() * 1000)}
        _write_status(cfg, status)
        _settle_heap()
        log.info("validator 0x%s: broker %s:%d, prefix %s, /metrics and /health on %s:%d",
                 node.address.hex(), cfg.mqtt.host, cfg.mqtt.port,
                 setup.network.topic_prefix, cfg.http.host, port)
        asyncio.run(_serve(runner))
        log.info("validator stopped")
    finally:
        if http is not None:
            http.stop()
        if status:
            with contextlib.suppress(OSError):
                _write_status(cfg, {**status, "running": False,
                                    "stopped_ms": int(time.time() * 1000)})
        os.close(lock_fd)
