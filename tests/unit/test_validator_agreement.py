"""The agreement protocol, exhaustively, on simulated networks (no broker): four validators
with k = 3 reach one attestation per window despite missed, duplicated and reordered
messages, crashed validators, and a validator that signs something else."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from senken_core.attestation import Attestation
from senken_core.evidence import CertifiedWindow, check_certified_window
from senken_core.secp256k1 import ValidatorKey, recover_address
from tests.support.validator_sim import PROJECT, T0, WINDOW_S, Device, SimNet, network
from validator.agreement import Have, WindowKey, agreed_readings, agreed_rejected, leader
from validator.node import ValidatorNode

KEYS = [ValidatorKey(bytes([i + 1]) * 32) for i in range(4)]


def nodes(threshold: int = 3, cls: type[ValidatorNode] = ValidatorNode,
          bad: set[int] = frozenset(), **kw: object) -> list[ValidatorNode]:  # type: ignore[assignment]
    net = network(KEYS, threshold)
    return [(cls if i in bad else ValidatorNode)(k, net, grace_s=2.0, round_timeout_s=2.0, **kw)
            for i, k in enumerate(KEYS)]


def feed(sim: SimNet, devices: list[Device], windows: int, per_window: int = 5,
         start: float = T0) -> None:
    """Each device reads ``per_window`` times per window, published one reading per message."""
    step = WINDOW_S / per_window
    for w in range(windows):
        for j in range(per_window):
            t = start + w * WINDOW_S + j * step + 0.5
            sim.run_until(t)
            for d in devices:
                sim.publish_readings(d, [d.read(t)])


def certified(sim: SimNet) -> dict[bytes, set[bytes]]:
    """attestation id -> the distinct certified attestations (wire bytes) published for it."""
    out: dict[bytes, set[bytes]] = {}
    for payload in sim.certificates:
        window = CertifiedWindow.from_wire(payload)
        out.setdefault(window.attestation.id, set()).add(window.attestation.to_wire())
    return out


def check_all(sim: SimNet, devices: list[Device]) -> None:
    net = sim.nodes[0].network
    keys = {d.name: d.key.public_key for d in devices}
    for payload in sim.certificates:
        window = CertifiedWindow.from_wire(payload)
        check_certified_window(window, net.validator_set(), net.domain(), keys.get,
                               net.project(PROJECT).methodology_terms())


def start(sim: SimNet, devices: list[Device]) -> None:
    for d in devices:
        sim.register(d)
    sim.deliver()


def test_every_window_is_certified_once_with_every_reading() -> None:
    sim = SimNet(nodes())
    devices = [Device("meter-1"), Device("meter-2")]
    start(sim, devices)
    feed(sim, devices, windows=3)
    sim.run_until(T0 + 3 * WINDOW_S + 10)
    certs = certified(sim)
    assert len(certs) == 6  # 2 devices x 3 windows
    assert all(len(v) == 1 for v in certs.values())  # one attestation per window
    check_all(sim, devices)
    for payload in sim.certificates:
        att = CertifiedWindow.from_wire(payload).attestation
        assert att.readings_accepted == 5
        # 4 increments inside the window, plus the one across its start (but the first window)
        assert att.quantity == (40 if att.window_start == T0 else 50)
    assert all(n.stats.certificates >= 1 for n in sim.nodes)
    assert not any(n._agreements or n._windows for n in sim.nodes)  # state is released


def test_a_validator_that_missed_readings_signs_the_same_attestation() -> None:
    missed = 3
    sim = SimNet(nodes(), drop=lambda i, m: i == missed and "/devices/" in m[0]
                 and sim.rng.random() < 0.6)
    devices = [Device("meter-1")]
    start(sim, devices)
    feed(sim, devices, windows=3)
    sim.run_until(T0 + 3 * WINDOW_S + 20)
    certs = certified(sim)
    assert len(certs) == 3 and all(len(v) == 1 for v in certs.values())
    check_all(sim, devices)
    for payload in sim.certificates:
        assert CertifiedWindow.from_wire(payload).attestation.readings_accepted == 5


def test_a_reading_only_one_validator_saw_is_still_attested() -> None:
    sim = SimNet(nodes(), drop=lambda i, m: i != 2 and "/devices/" in m[0]
                 and b"meter-1" in m[1] and lone[0] == m[1])
    lone: list[bytes] = [b""]
    devices = [Device("meter-1")]
    start(sim, devices)
    sim.run_until(T0 + 1)
    first = devices[0].read(T0 + 1)
    sim.publish_readings(devices[0], [first])
    from senken_core.reading import encode_batch
    second = devices[0].read(T0 + 2)
    lone[0] = encode_batch([second])  # only validator 2 receives this one
    sim.publish_readings(devices[0], [second])
    sim.run_until(T0 + WINDOW_S + 15)
    (att_wire,) = next(iter(certified(sim).values()))
    window = CertifiedWindow.from_wire(sim.certificates[0])
    assert window.attestation.readings_accepted == 2
    assert att_wire == window.attestation.to_wire()


def test_duplicated_and_reordered_messages_change_nothing() -> None:
    sim = SimNet(nodes(), duplicate=0.5, shuffle=True, rng=random.Random(7))
    devices = [Device("meter-1"), Device("meter-2")]
    start(sim, devices)
    feed(sim, devices, windows=2)
    sim.run_until(T0 + 2 * WINDOW_S + 30)
    certs = certified(sim)
    assert len(certs) == 4 and all(len(v) == 1 for v in certs.values())
    check_all(sim, devices)


def test_one_crashed_validator_does_not_stop_certificates() -> None:
    sim = SimNet(nodes())
    sim.crash(1)
    devices = [Device("meter-1")]
    start(sim, devices)
    feed(sim, devices, windows=3)
    sim.run_until(T0 + 3 * WINDOW_S + 60)
    certs = certified(sim)
    assert len(certs) == 3
    check_all(sim, devices)
    crashed = KEYS[1].address
    for payload in sim.certificates:
        window = CertifiedWindow.from_wire(payload)
        digest = window.attestation.digest(sim.nodes[0].domain)
        assert crashed not in {recover_address(digest, s) for s in window.certificate.signatures}


def test_two_crashed_validators_stop_certificates_until_one_returns() -> None:
    sim = SimNet(nodes())
    sim.crash(1)
    sim.crash(3)
    devices = [Device("meter-1")]
    start(sim, devices)
    feed(sim, devices, windows=2)
    sim.run_until(T0 + 2 * WINDOW_S + 60)
    assert sim.certificates == []  # 2 of 4 cannot make k = 3
    sim.recover(3)  # its persistent session delivers what it missed
    sim.run_until(T0 + 2 * WINDOW_S + 200)
    certs = certified(sim)
    assert len(certs) == 2 and all(len(v) == 1 for v in certs.values())
    check_all(sim, devices)


def test_a_returning_validator_without_queued_messages_catches_up_by_fetching() -> None:
    sim = SimNet(nodes(), queue_while_down=False)
    sim.crash(1)
    sim.crash(3)
    devices = [Device("meter-1")]
    start(sim, devices)
    for i in (1, 3):  # they knew the registry before they went down
        sim.nodes[i].on_message(f"sim/v1/registry/{devices[0].name}", devices[0].record(), sim.now)
    feed(sim, devices, windows=2)
    sim.run_until(T0 + 2 * WINDOW_S + 10)
    assert sim.certificates == []
    sim.recover(3)
    sim.run_until(T0 + 2 * WINDOW_S + 300)
    certs = certified(sim)
    assert len(certs) == 2
    check_all(sim, devices)


class Inflating(ValidatorNode):
    """Signs every attestation with ten times the quantity and credit."""

    def _sign(self, att: Attestation) -> tuple[Attestation, bytes]:
        bad = replace(att, quantity=att.quantity * 10 + 1, co2e_mg=att.co2e_mg * 10 + 1)
        return bad, self.key.sign_digest(bad.digest(self.domain))


def test_a_validator_signing_something_else_is_never_in_a_certificate() -> None:
    sim = SimNet(nodes(cls=Inflating, bad={0}))
    devices = [Device("meter-1"), Device("meter-2")]
    start(sim, devices)
    feed(sim, devices, windows=3)
    sim.run_until(T0 + 3 * WINDOW_S + 60)
    certs = certified(sim)
    assert len(certs) == 6 and all(len(v) == 1 for v in certs.values())
    check_all(sim, devices)  # the quantity in every certificate is the honest one
    for payload in sim.certificates:
        window = CertifiedWindow.from_wire(payload)
        digest = window.attestation.digest(sim.nodes[0].domain)
        assert KEYS[0].address not in {recover_address(digest, s)
                                       for s in window.certificate.signatures}
    assert sim.nodes[0].stats.attestations_signed > 0  # it did sign, something else


def test_a_revoked_device_is_not_attested_after_revocation() -> None:
    sim = SimNet(nodes())
    devices = [Device("meter-1")]
    start(sim, devices)
    feed(sim, devices, windows=1)
    sim.register(devices[0], version=2, revoked=True)
    feed(sim, devices, windows=1, start=T0 + WINDOW_S)
    sim.run_until(T0 + 2 * WINDOW_S + 30)
    assert all(n.stats.rejected.get("revoked_device") == 5 for n in sim.nodes)
    after = {CertifiedWindow.from_wire(p).attestation.window_start for p in sim.certificates}
    assert after == {T0}  # a revoked device gets no window at all after its revocation


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), crashed=st.sampled_from([None, 0, 1, 2, 3]),
       drop_p=st.sampled_from([0.0, 0.1, 0.3]), dup=st.sampled_from([0.0, 0.3]))
def test_any_schedule_gives_one_valid_attestation_per_window(seed: int, crashed: int | None,
                                                              drop_p: float, dup: float) -> None:
    rng = random.Random(seed)
    sim = SimNet(nodes(), rng=rng, duplicate=dup, shuffle=True,
                 drop=lambda i, m: "/devices/" in m[0] and rng.random() < drop_p)
    if crashed is not None:
        sim.crash(crashed)
    devices = [Device("meter-1"), Device("meter-2")]
    start(sim, devices)
    feed(sim, devices, windows=2, per_window=4)
    sim.run_until(T0 + 2 * WINDOW_S + 120)
    certs = certified(sim)
    assert all(len(v) == 1 for v in certs.values())
    check_all(sim, devices)
    # a reading that at least one live validator accepted is in its window's attestation
    # unless it was received only by validators left out of the proposal; with no drops,
    # every window is certified with every reading
    if drop_p == 0.0:
        assert len(certs) == 4
        for payload in sim.certificates:
            assert CertifiedWindow.from_wire(payload).attestation.readings_accepted == 4


def test_leaders_rotate_over_rounds_and_agree_everywhere() -> None:
    members = [k.address for k in KEYS]
    wid = b"\x01" * 32
    chosen = {leader(members, wid, r) for r in range(40)}
    assert chosen == set(members)
    assert leader(members, wid, 3) == leader(list(reversed(members)), wid, 3)


def test_union_and_median_rules() -> None:
    key = WindowKey(PROJECT, "meter-1", T0)
    a = Have(key, ((1, b"a" * 32), (2, b"b" * 32)), 0)
    b = Have(key, ((2, b"b" * 32), (3, b"c" * 32)), 5)
    c = Have(key, ((3, b"x" * 32),), 100)  # a device that signed two bodies for seq 3
    assert agreed_readings([a, b]) == {1: b"a" * 32, 2: b"b" * 32, 3: b"c" * 32}
    assert agreed_readings([a, b, c]) == {1: b"a" * 32, 2: b"b" * 32}
    assert agreed_rejected([a, b, c]) == 5  # one faulty count cannot move it out of range


@pytest.mark.parametrize("threshold", [3, 4])
def test_thresholds(threshold: int) -> None:
    sim = SimNet(nodes(threshold))
    devices = [Device("meter-1")]
    start(sim, devices)
    feed(sim, devices, windows=1)
    sim.run_until(T0 + WINDOW_S + 30)
    assert len(certified(sim)) == 1


def test_a_validator_that_missed_readings_replays_the_model_after_fetching_them() -> None:
    from senken_core.anomaly import AnomalyModel, ReadingScorer
    from senken_core.sensors import sensor_kind
    model = AnomalyModel.load()

    def scorer_for(kind: str) -> ReadingScorer:
        return ReadingScorer(model, sensor_kind(kind).channels)

    net = network(KEYS, 3)
    sim_nodes = [ValidatorNode(k, net, scorer_for=scorer_for,
                               grace_s=2.0, round_timeout_s=2.0) for k in KEYS]
    lost: set[bytes] = set()
    sim = SimNet(sim_nodes, drop=lambda i, m: i == 3 and m[1] in lost)
    device = Device("meter-1")
    start(sim, [device])
    from senken_core.reading import encode_batch
    for j in range(8):
        t = T0 + j + 0.5
        sim.run_until(t)
        signed = device.read(t)
        if j in (2, 3):
            lost.add(encode_batch([signed]))  # validator 3 never receives these two
        sim.publish_readings(device, [signed])
    sim.run_until(T0 + WINDOW_S + 30)
    three = sim.nodes[3]
    assert three.stats.readings_pending == 0 and not three.stats.rejected
    assert three.stats.readings_accepted == 8  # fetched from a peer, then re-scored in order
    assert len(certified(sim)) == 1
