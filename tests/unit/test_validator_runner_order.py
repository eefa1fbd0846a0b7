"""The runner's order of work (validator/app.py, docs/protocol.md section 7): peers' messages
go before waiting reading batches, at the node's time (the oldest arrival still waiting); the
rest in arrival order at its arrival; the node's clock never passes a waiting message; a tick
at time t waits for every message that arrived before t."""

from __future__ import annotations

import pytest

from validator import app
from validator.app import ValidatorRunner
from validator.config import ValidatorConfig
from validator.node import Outbound
from validator.shared import NodeStats

PREFIX = "order/v1"
PEER = f"{PREFIX}/validators/0x{'ab' * 20}/agreement"
READINGS = f"{PREFIX}/devices/meter-1/readings"


class Recorder:
    """A node that records what it was given, and when (node time)."""

    address = b"\x01" * 20

    def __init__(self, deadline: float | None = None) -> None:
        self.stats = NodeStats()
        self.seen: list[tuple[str, float]] = []
        self.deadline = deadline

    def subscriptions(self) -> list[tuple[str, int]]:
        return []

    def on_message(self, topic: str, payload: bytes, now: float) -> list[Outbound]:
        self.seen.append((payload.decode(), now))
        return []

    def tick(self, now: float) -> list[Outbound]:
        if self.deadline is not None and now >= self.deadline:
            self.seen.append(("tick", now))
            self.deadline = None
        return []

    def next_deadline(self) -> float | None:
        return self.deadline

    def status_payload(self, online: bool) -> bytes:
        return b"{}"


def run(node: Recorder, arrivals: list[tuple[str, bytes, float]], now: float) -> None:
    runner = ValidatorRunner(ValidatorConfig.from_dict({"network_file": "n.toml"}), node,
                             PREFIX, clock=lambda: now)
    for topic, payload, at in arrivals:
        runner.received(topic, payload, at=at)
    for _ in range(50):
        runner.step()


def test_a_peers_message_goes_before_waiting_readings_at_the_oldest_arrival() -> None:
    node = Recorder()
    run(node, [(READINGS, b"r1", 98.0), (READINGS, b"r2", 98.5), (PEER, b"have", 99.0),
               (READINGS, b"r3", 99.5), (PEER, b"sign", 99.6)], now=100.0)
    assert [p for p, _t in node.seen if p != "tick"] == ["have", "sign", "r1", "r2", "r3"]
    times = dict(node.seen)
    assert times["have"] == times["sign"] == 98.0  # the node's time: r1 still waits
    assert (times["r1"], times["r2"], times["r3"]) == (98.0, 98.5, 99.5)  # their arrivals


def test_a_tick_still_waits_for_the_readings_that_arrived_before_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "MIN_TICK_GAP_S", 0.0)  # ticks as soon as due (not spaced out)
    node = Recorder(deadline=99.0)
    run(node, [(READINGS, b"r1", 98.0), (PEER, b"have", 98.8), (READINGS, b"r2", 98.9),
               (READINGS, b"r3", 99.2)], now=100.0)
    order = [p for p, _t in node.seen]
    assert order == ["have", "r1", "r2", "tick", "r3"]  # due at 99.0, after r1 and r2
    assert dict(node.seen)["tick"] == 99.2  # the node's time once r2 was taken up
