"""The validator's ``/metrics`` (Prometheus text) and ``/health`` (JSON), on one port.

The HTTP server runs on a thread of its own, so it answers while the event loop is busy
verifying a large batch. Everything is read at request time by a custom collector: the node's
:class:`~validator.node.NodeStats` and the runner's :class:`RunnerState`, both owned and
written by the event loop's thread.

Thread safety, by choice without a lock (a lock the loop holds while it processes a message
would make a scrape wait for the slowest message, which is what the thread is for): each
integer is read in one attribute load, and each dict is copied with one ``dict(d)`` call,
which in CPython runs under the GIL without releasing it (the keys are str and bytes, whose
hashing calls no Python code), so a copy never sees a dict mid-update. A scrape may be *torn
across fields*: ``verified`` from after a message and ``accepted`` from before it. Prometheus
tolerates that (counters stay monotonic each on its own). If a copy ever does raise
``RuntimeError`` (a build without the GIL), it is retried.

``quorum_latency_s`` is the exception: the node appends to it and the runner drains it into
the histogram on the loop's thread (:meth:`ValidatorMetrics.drain`), never the HTTP thread.

Metrics (all prefixed ``senken_validator_``): ``readings_verified_total``,
``readings_accepted_total``, ``readings_rejected_total{reason}``, ``readings_duplicate_total``,
``readings_pending``, ``attestations_signed_total``, ``certificates_total``,
``quorum_latency_seconds`` (histogram), ``rounds_timed_out_total``,
``peer_messages_dropped_total{reason}``, ``peers_seen`` (peers heard from in the last 60 s),
``peer_last_seen_seconds{peer}`` (Unix time of a peer's last message), ``registry_devices``,
``registry_refused_total{reason}``, ``windows_open``, ``mqtt_connected``, and the runner's own:
``mqtt_messages_received_total``, ``node_errors_total``, ``messages_published_total``,
``publish_failures_total``, ``outbound_dropped_total``, ``outbound_queued``,
``mqtt_connections_total``, ``last_message_timestamp_seconds``, ``inbox_queued``,
``behind_seconds``, ``message_wait_seconds`` (histogram: arrival to the node taking a message
up), ``info{address}``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["PEER_WINDOW_S", "HealthServer", "RunnerState", "StatsLike", "ValidatorMetrics"]

PEER_WINDOW_S = 60.0
_P = "senken_validator_"
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
T = TypeVar("T")
log = logging.getLogger(__name__)


class StatsLike(Protocol):
    """The fields of :class:`validator.node.NodeStats` read here."""

    readings_verified: int
    readings_accepted: int
    readings_duplicate: int
    readings_pending: int
    rejected: dict[str, int]
    attestations_signed: int
    certificates: int
    certificates_published: int
    certificates_backup: int
    certificates_skipped: int
    quorum_latency_s: list[float]
    rounds_timed_out: int
    messages_dropped: dict[str, int]
    peers_last_seen: dict[bytes, float]
    registry_devices: int
    registry_refused: dict[str, int]
    windows_open: int
    schedule_epoch: int
    schedules_applied: int
    agreements_restarted: int


@dataclass
class RunnerState:
    """What the runner itself knows; written by the loop's thread only."""

    connected: bool = False
    connections: int = 0
    last_message_at: float | None = None  # Unix time
    messages_received: int = 0
    node_errors: int = 0
    published: int = 0
    publish_failures: int = 0
    outbound_dropped: int = 0
    outbound_queued: int = 0
    chain_poll_failures: int = 0  # chain polls that failed (the node keeps its schedule)
    chain_polls_failing: int = 0  # gauge: failed in a row, 0 once the chain answers
    inbox_queued: int = 0  # messages received, not yet given to the node
    behind_s: float = 0.0  # how long the oldest of them has waited (when the last was taken)
    started_at: float = field(default_factory=time.time)


def _copy(read: Callable[[], T]) -> T:
    for _ in range(100):
        try:
            return read()
        except RuntimeError:  # changed during the copy (only without a GIL)
            continue
    return read()


class ValidatorMetrics:
    """A registry of its own (never the global one) reading ``stats()`` at scrape time.

    ``stats`` is a callable so that the runner may hand over a node built later.
    """

    def __init__(self, stats: Callable[[], StatsLike], state: RunnerState, address: bytes,
                 clock: Callable[[], float] = time.time) -> None:
        self.stats = stats
        self.state = state
        self.address = address
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        self.quorum_latency = Histogram(
            _P + "quorum_latency_seconds",
            "Time from a window being due to its quorum certificate, as this node saw it",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.message_wait = Histogram(
            _P + "message_wait_seconds",
            "Time from a message's arrival to the node taking it up (a node that cannot keep "
            "up shows it here first)", buckets=_WAIT_BUCKETS, registry=self.registry)
        self.registry.register(_NodeCollector(self))

    def drain(self, stats: StatsLike) -> None:
        """Move the node's new quorum latencies into the histogram (the loop's thread only)."""
        latencies = stats.quorum_latency_s
        if latencies:
            for value in latencies:
                self.quorum_latency.observe(value)
            latencies.clear()

    def peers_seen(self, peers: dict[bytes, float], now: float) -> int:
        return sum(1 for peer, seen in peers.items()
                   if peer != self.address and now - seen <= PEER_WINDOW_S)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(http status, body)``: 200 and ``ok`` when connected to the broker, else 503 and
        ``degraded``."""
        s = self.stats()
        st = self.state
        now = self.clock()
        peers = _copy(lambda: dict(s.peers_last_seen))
        connected = st.connected
        last = st.last_message_at
        body = {
            "status": "ok" if connected else "degraded",
            "mqtt_connected": connected,
            "address": "0x" + self.address.hex(),
            "pid": os.getpid(),
            "uptime_s": round(now - st.started_at, 3),
            "peers_seen": self.peers_seen(peers, now),
            "last_message_age_s": None if last is None else round(max(0.0, now - last), 3),
            "certificates": s.certificates,
            "pending": s.readings_pending,
            "readings_verified": s.readings_verified,
            "readings_accepted": s.readings_accepted,
            "readings_rejected": sum(_copy(lambda: dict(s.rejected)).values()),
            "readings_duplicate": s.readings_duplicate,
            "attestations_signed": s.attestations_signed,
            "rounds_timed_out": s.rounds_timed_out,
            "windows_open": s.windows_open,
            "registry_devices": s.registry_devices,
            "messages_received": st.messages_received,
            "node_errors": st.node_errors,
            "outbound_queued": st.outbound_queued,
        }
        return (200 if connected else 503), body


class _NodeCollector(Collector):
    def __init__(self, metrics: ValidatorMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        s = self.m.stats()
        st = self.m.state
        now = self.m.clock()

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(_P + name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(_P + name, doc, value=value)

        def by_label(name: str, doc: str, label: str, values: dict[str, int],
                     ) -> CounterMetricFamily:
            family = CounterMetricFamily(_P + name, doc, labels=[label])
            for key in sorted(values):
                family.add_metric([key], values[key])
            return family

        yield counter("readings_verified", "Readings checked (accepted + rejected)",
                      s.readings_verified)
        yield counter("readings_accepted", "Readings accepted", s.readings_accepted)
        yield by_label("readings_rejected", "Readings rejected, by reason code", "reason",
                       _copy(lambda: dict(s.rejected)))
        yield counter("readings_duplicate", "Readings seen before (QoS 1 redelivery), dropped",
                      s.readings_duplicate)
        yield gauge("readings_pending", "Readings waiting for earlier ones to re-run the model",
                    s.readings_pending)
        yield counter("attestations_signed", "Window attestations this validator signed",
                      s.attestations_signed)
        yield counter("certificates", "Quorum certificates this node assembled",
                      s.certificates)
        yield counter("certificates_published", "Certified windows this node published "
                      "(as the round's leader, or as a backup)", s.certificates_published)
        yield counter("certificates_backup", "Certified windows published as a backup: the "
                      "leader's did not appear in time", s.certificates_backup)
        yield counter("certificates_skipped", "Peers' certified windows for settled windows, "
                      "not decoded", s.certificates_skipped)
        yield counter("rounds_timed_out", "Agreement rounds that timed out", s.rounds_timed_out)
        yield by_label("peer_messages_dropped", "Bad peer messages dropped, by reason",
                       "reason", _copy(lambda: dict(s.messages_dropped)))
        peers = _copy(lambda: dict(s.peers_last_seen))
        yield gauge("peers_seen", f"Peers heard from in the last {PEER_WINDOW_S:.0f} s",
                    self.m.peers_seen(peers, now))
        last_seen = GaugeMetricFamily(_P + "peer_last_seen_seconds",
                                      "Unix time of the last message from each peer",
                                      labels=["peer"])
        for peer in sorted(peers):
            last_seen.add_metric(["0x" + peer.hex()], peers[peer])
        yield last_seen
        yield gauge("registry_devices", "Devices in the registry", s.registry_devices)
        yield by_label("registry_refused", "Registry records refused, by reason", "reason",
                       _copy(lambda: dict(s.registry_refused)))
        yield gauge("windows_open", "Windows collecting readings", s.windows_open)
        yield gauge("validator_set_epoch", "The highest validator-set epoch this node knows "
                    "from the chain (0: the network file's set)", s.schedule_epoch)
        yield counter("schedules_applied", "Schedules read from the chain that changed a "
                      "validator set or a methodology term", s.schedules_applied)
        yield counter("agreements_restarted", "Windows moved to a new round by a new "
                      "schedule", s.agreements_restarted)
        yield counter("chain_poll_failures", "Chain polls that failed (the schedule is kept)",
                      st.chain_poll_failures)
        yield gauge("chain_polls_failing", "Chain polls failed in a row (0: the chain "
                    "answers)", st.chain_polls_failing)
        yield gauge("mqtt_connected", "1 when connected to the broker", int(st.connected))
        yield counter("mqtt_connections", "Successful broker connections", st.connections)
        yield counter("mqtt_messages_received", "Messages received from the broker",
                      st.messages_received)
        yield counter("node_errors", "Messages or ticks on which the node raised (skipped)",
                      st.node_errors)
        yield counter("messages_published", "Messages published (acknowledged at QoS 1)",
                      st.published)
        yield counter("publish_failures", "Publishes that failed (retried after reconnect)",
                      st.publish_failures)
        yield counter("outbound_dropped", "Outbound messages dropped: the queue was full",
                      st.outbound_dropped)
        yield gauge("outbound_queued", "Outbound messages waiting for the broker",
                    st.outbound_queued)
        yield gauge("inbox_queued", "Messages received and not yet taken up by the node",
                    st.inbox_queued)
        yield gauge("behind_seconds", "How long the oldest message not yet taken up had "
                    "waited, when the node last took one", st.behind_s)
        if st.last_message_at is not None:
            yield gauge("last_message_timestamp_seconds",
                        "Unix time of the last message from the broker", st.last_message_at)
        info = GaugeMetricFamily(_P + "info", "This validator", labels=["address"])
        info.add_metric(["0x" + self.m.address.hex()], 1)
        yield info


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, self.server.metrics.render())
            elif path in ("/health", "/healthz"):
                code, body = self.server.metrics.health()
                self._send(code, "application/json",
                           json.dumps(body, sort_keys=True).encode() + b"\n")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or "
                                                             b"/health\n")
        except Exception:  # a bug in a collector must not kill the server thread
            log.exception("HTTP %s failed", path)
            self._send(500, "text/plain; charset=utf-8", b"internal error\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: ValidatorMetrics


class _Server6(_Server):
    address_family = socket.AF_INET6


class HealthServer:
    """``/metrics`` and ``/health`` on a thread of their own.

    ``start`` binds (raises OSError, e.g. the port is taken) and returns the bound port.
    """

    def __init__(self, metrics: ValidatorMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        cls = _Server6 if ":" in self.host else _Server
        server = cls((self.host, self.port), _Handler)
        server.metrics = self.metrics
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="senken-validator-http", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
