"""A simulated network for validator nodes: a broker that can drop, duplicate and reorder,
a clock, devices that sign readings, and a project owner that signs registry records.

Pure (no sockets): the agreement tests drive :class:`validator.node.ValidatorNode` through it
exhaustively. Delivery follows MQTT's shape: every published message goes to every node that
is up; a node that is down misses what is published meanwhile unless ``queue_while_down`` (a
persistent session) keeps it for its return.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from senken_core.keys import READING_TAG, DeviceKey
from senken_core.membership import Schedule
from senken_core.network import NetworkConfig
from senken_core.reading import Reading, SignedReading, encode_batch
from senken_core.registry import DeviceRecord
from senken_core.secp256k1 import ValidatorKey
from senken_core.topics import device_topic, registry_topic
from validator.node import Outbound, ValidatorNode

MODEL = b"\x22" * 32
WINDOW_S = 10
T0 = 1_795_003_200  # a multiple of WINDOW_S
OWNER = DeviceKey(b"\x0a" * 32)
PREFIX = "sim/v1"
PROJECT = "pv-plant-7"


def network(keys: list[ValidatorKey], threshold: int) -> NetworkConfig:
    return NetworkConfig.from_dict({
        "validators": ["0x" + k.address.hex() for k in keys], "threshold": threshold,
        "topic_prefix": PREFIX,
        "projects": [{"id": PROJECT, "owner_key": OWNER.public_key.hex(),
                      "grid_ef_g_per_kwh": 691, "model_sha256": MODEL.hex(),
                      "window_seconds": WINDOW_S}]})


@dataclass
class Device:
    name: str
    key: DeviceKey = field(default_factory=DeviceKey.generate)
    seq: int = 0
    energy_wh: int = 50_000

    def record(self, version: int = 1, revoked: bool = False) -> bytes:
        return DeviceRecord(PROJECT, self.name, self.key.public_key, "elec_meter", MODEL,
                            version, revoked).sign(OWNER).to_wire()

    def read(self, ts_s: float, wh_step: int = 10) -> SignedReading:
        self.energy_wh += wh_step
        reading = Reading(self.name, self.seq, int(ts_s * 1000), "elec_meter", self.seq + 1,
                          int(ts_s * 1000), (("energy_export_wh", self.energy_wh),
                                             ("power_w", 1000), ("voltage_dv", 2300)),
                          MODEL, 0, 0)
        self.seq += 1
        body = reading.canonical()
        return SignedReading(body, self.key.sign(READING_TAG, body))


@dataclass
class SimNet:
    nodes: list[ValidatorNode]
    now: float = float(T0)
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    drop: Callable[[int, Outbound | tuple[str, bytes]], bool] = lambda i, m: False
    duplicate: float = 0.0  # probability that a delivery happens twice
    shuffle: bool = False
    queue_while_down: bool = True
    down: set[int] = field(default_factory=set)
    # node i crashes right after publishing a message for which this is true (the rest of
    # what it wanted to send is lost with it)
    crash_after: Callable[[int, Outbound], bool] = lambda i, m: False
    certificates: list[bytes] = field(default_factory=list)  # every certified window published
    # node i's messages reach the others this many seconds after it sent them (a validator
    # that is behind: it sends at the arrival time it has got to)
    lag: dict[int, float] = field(default_factory=dict)
    _later: list[tuple[float, str, bytes, int]] = field(default_factory=list)
    _inbox: list[list[tuple[str, bytes]]] = field(default_factory=list)
    _held: dict[int, list[tuple[str, bytes]]] = field(default_factory=dict)
    _steps: int = 0

    def __post_init__(self) -> None:
        self._inbox = [[] for _ in self.nodes]

    def publish(self, topic: str, payload: bytes, sender: int | None = None,
                lagged: bool = False) -> None:
        if sender is not None and not lagged and self.lag.get(sender):
            self._later.append((self.now + self.lag[sender], topic, payload, sender))
            return
        if "/certificates" in topic:
            self.certificates.append(payload)
        for i in range(len(self.nodes)):
            if i == sender:
                continue
            if self.drop(i, (topic, payload)):
                continue
            if i in self.down:
                if self.queue_while_down:
                    self._held.setdefault(i, []).append((topic, payload))
                continue
            copies = 2 if self.rng.random() < self.duplicate else 1
            self._inbox[i].extend([(topic, payload)] * copies)

    def publish_readings(self, device: Device, readings: list[SignedReading]) -> None:
        self.publish(device_topic(device.name, "readings", PREFIX), encode_batch(readings))

    def register(self, device: Device, **kw: object) -> None:
        self.publish(registry_topic(device.name, PREFIX), device.record(**kw))  # type: ignore[arg-type]

    def give_schedule(self, i: int, schedule: Schedule) -> None:
        """Node ``i`` reads ``schedule`` from the chain now (its next poll), and sends what
        that makes it send."""
        if i not in self.down:
            self._emit(i, self.nodes[i].on_schedule(schedule, self.now))

    def crash(self, i: int) -> None:
        self.down.add(i)

    def recover(self, i: int) -> None:
        self.down.discard(i)
        self._inbox[i].extend(self._held.pop(i, []))

    def _emit(self, i: int, out: list[Outbound]) -> None:
        for message in out:
            self.publish(message.topic, message.payload, sender=i)
            if self.crash_after(i, message):
                self.crash(i)
                return

    def _release(self) -> None:
        due = [m for m in self._later if m[0] <= self.now]
        self._later = [m for m in self._later if m[0] > self.now]
        for _at, topic, payload, sender in due:
            self.publish(topic, payload, sender, lagged=True)

    def deliver(self, max_steps: int = 1_000_000) -> None:
        """Deliver until every inbox is empty."""
        self._release()
        steps = 0
        while any(self._inbox[i] for i in range(len(self.nodes)) if i not in self.down):
            for i, node in enumerate(self.nodes):
                if i in self.down or not self._inbox[i]:
                    continue
                box = self._inbox[i]
                j = self.rng.randrange(len(box)) if self.shuffle else 0
                topic, payload = box.pop(j)
                self._emit(i, node.on_message(topic, payload, self.now))
                steps += 1
                self._steps += 1
                assert steps < max_steps, "the nodes keep talking"

    def run_until(self, t: float) -> None:
        """Deliver, tick at each node's deadline, until the clock reaches ``t``."""
        ticked_at = None
        while True:
            self._steps = 0
            self.deliver()
            deadlines = [d for i, n in enumerate(self.nodes)
                         if i not in self.down and (d := n.next_deadline()) is not None]
            deadlines.extend(at for at, *_ in self._later)
            nxt = min(deadlines, default=float("inf"))
            assert nxt > self.now or nxt > t or ticked_at != self.now or self._steps, \
                f"a node asks to be ticked at {nxt} again after a tick at {self.now}"
            if nxt > t:
                self.now = t
                break
            self.now = max(self.now, nxt)
            for i, node in enumerate(self.nodes):
                if i not in self.down:
                    self._emit(i, node.tick(self.now))
            ticked_at = self.now
        for i, node in enumerate(self.nodes):
            if i not in self.down:
                self._emit(i, node.tick(self.now))
        self.deliver()
