"""The agreement protocol, exhaustively, on simulated networks (no broker): four validators
with k = 3 reach one attestation per window despite missed, duplicated and reordered
messages, crashed validators, and a validator that signs something else."""

from __future__ import annotations

import contextlib
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from senken_core.attestation import Attestation
from senken_core.errors import PayloadError
from senken_core.evidence import CertifiedWindow, check_certified_window
from senken_core.reading import SignedReading, encode_batch
from senken_core.secp256k1 import ValidatorKey, recover_address
from senken_core.topics import device_topic, registry_topic, validator_topic
from tests.support.validator_sim import PREFIX, PROJECT, T0, WINDOW_S, Device, SimNet, network
from validator.agreement import (
    Have,
    OpenedHaves,
    Proposal,
    Sign,
    SignedHave,
    WindowKey,
    agreed_readings,
    agreed_rejected,
    decode_leaves,
    decode_message,
    encode_leaves,
    leader,
    seal,
)
from validator.node import Outbound, ValidatorNode

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


# --- the compact have encoding and the cache of opened envelopes ---------------------------

leaf_lists = st.lists(st.tuples(st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32)),
                      max_size=60).map(lambda xs: tuple(sorted(dict(xs).items())))


@settings(max_examples=200, deadline=None)
@given(leaves=leaf_lists, rejected=st.integers(0, 2**32 - 1))
def test_have_leaves_round_trip(leaves: tuple[tuple[int, bytes], ...], rejected: int) -> None:
    wire = encode_leaves(leaves)
    assert len(wire) == 40 * len(leaves)
    assert decode_leaves(wire) == leaves
    have = Have(WindowKey(PROJECT, "meter-1", T0), leaves, rejected)
    assert Have.decode(have.encode()) == have
    opened = SignedHave.open(seal(KEYS[0], have.encode()))
    assert opened.have == have and opened.signer == KEYS[0].address


def _have_with(leaves: bytes) -> bytes:
    from senken_core import canonical
    return canonical.encode({"t": "have", **WindowKey(PROJECT, "m", T0).fields(),
                             "leaves": leaves, "rejected": 0})


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=400), st.binary(max_size=400).map(_have_with),
                      st.binary(max_size=400).map(lambda b: seal(KEYS[1], _have_with(b)))))
def test_any_bytes_as_leaves_or_messages_raise_payload_error_only(data: bytes) -> None:
    for decode in (decode_leaves, Have.decode, Proposal.decode, decode_message,
                   lambda d: decode_message(d, OpenedHaves(4)), SignedHave.open):
        with contextlib.suppress(PayloadError):
            decode(data)


@settings(max_examples=100, deadline=None)
@given(leaves=leaf_lists.filter(lambda xs: len(xs) >= 2), i=st.integers(0, 10**6),
       cut=st.integers(1, 39))
def test_leaves_are_strictly_checked(leaves: tuple[tuple[int, bytes], ...], i: int,
                                     cut: int) -> None:
    wire = encode_leaves(leaves)
    with pytest.raises(PayloadError):
        decode_leaves(wire[:-cut])  # not a whole number of leaves
    j = i % (len(leaves) - 1)
    swapped = list(leaves)
    swapped[j], swapped[j + 1] = swapped[j + 1], swapped[j]
    with pytest.raises(PayloadError):
        decode_leaves(encode_leaves(swapped))  # out of order
    repeated = list(leaves)
    repeated[j + 1] = (repeated[j][0], repeated[j + 1][1])
    with pytest.raises(PayloadError):
        decode_leaves(encode_leaves(repeated))  # a seq twice
    key = WindowKey(PROJECT, "meter-1", T0)
    from senken_core import canonical
    old_style = canonical.encode({"t": "have", **key.fields(), "rejected": 0,
                                  "leaves": [[q, h] for q, h in leaves]})
    with pytest.raises(PayloadError):
        Have.decode(old_style)  # leaves as CBOR arrays are refused


def test_a_have_carried_in_a_proposal_is_opened_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import validator.agreement as agreement
    key = WindowKey(PROJECT, "meter-1", T0)
    haves = [seal(k, Have(key, ((1, bytes([i]) * 32),), 0).encode())
             for i, k in enumerate(KEYS[:3])]
    proposal = seal(KEYS[0], Proposal(key, 0, tuple(SignedHave.open(h) for h in haves), (),
                                      None).encode())
    recovered: list[bytes] = []
    real = agreement.recover_address

    def counting(digest: bytes, sig: bytes) -> bytes:
        recovered.append(digest)
        return real(digest, sig)

    monkeypatch.setattr(agreement, "recover_address", counting)
    cache = OpenedHaves(16)
    for h in haves:
        message, signer = decode_message(h, cache)
        assert isinstance(message, SignedHave) and signer == message.signer
    assert len(recovered) == 3
    message, signer = decode_message(proposal, cache)
    assert isinstance(message, Proposal) and signer == KEYS[0].address
    assert len(recovered) == 4  # the proposal's own envelope only
    assert [h.signer for h in message.haves] == [k.address for k in KEYS[:3]]
    assert cache.hits == 3
    again, _ = decode_message(haves[0], cache)  # a QoS 1 duplicate or a new round's copy
    assert again is message.haves[0] and len(recovered) == 4
    small = OpenedHaves(2)
    for h in haves:
        SignedHave.open(h, small)
    assert len(small) == 2  # bounded: the oldest goes


# --- one publisher per certified window ----------------------------------------------------


def bundles_per_window(sim: SimNet) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for payload in sim.certificates:
        wid = CertifiedWindow.from_wire(payload).attestation.id
        out[wid] = out.get(wid, 0) + 1
    return out


def test_normally_only_the_leader_publishes_one_bundle_per_window() -> None:
    sim = SimNet(nodes())
    devices = [Device("meter-1"), Device("meter-2")]
    start(sim, devices)
    feed(sim, devices, windows=3)
    sim.run_until(T0 + 3 * WINDOW_S + 30)
    counts = bundles_per_window(sim)
    assert len(counts) == 6 and set(counts.values()) == {1}
    assert sum(n.stats.certificates_published for n in sim.nodes) == 6
    assert not any(n.stats.certificates_backup for n in sim.nodes)
    assert not any(n._backups for n in sim.nodes)  # cancelled by the leader's bundle
    # a copy of a window a node has settled costs it no decoding
    node = sim.nodes[0]
    skipped = node.stats.certificates_skipped
    for payload in sim.certificates:
        node.on_message(f"{PREFIX}/validators/0x{KEYS[1].address.hex()}/certificates",
                        payload, sim.now)
    assert node.stats.certificates_skipped == skipped + 6
    assert "bad_certificate" not in node.stats.messages_dropped


def test_a_backup_publishes_when_the_leader_crashes_right_after_signing() -> None:
    members = [k.address for k in KEYS]
    crashed: list[int] = []

    def leader_signed(i: int, message: Outbound) -> bool:
        if crashed or not message.topic.endswith("/agreement"):
            return False
        decoded, _ = decode_message(message.payload)
        if not isinstance(decoded, Sign):
            return False
        att = Attestation.from_wire(decoded.attestation)
        if leader(members, att.id, 0) != KEYS[i].address:
            return False
        crashed.append(i)
        return True

    sim = SimNet(nodes(), crash_after=leader_signed)
    devices = [Device("meter-1")]
    start(sim, devices)
    feed(sim, devices, windows=3)
    sim.run_until(T0 + 3 * WINDOW_S + 60)
    assert crashed
    certs = certified(sim)
    assert len(certs) == 3 and all(len(v) == 1 for v in certs.values())
    check_all(sim, devices)
    counts = bundles_per_window(sim)
    live = [n for i, n in enumerate(sim.nodes) if i not in crashed]
    assert sum(n.stats.certificates_backup for n in live) >= 1  # the crashed leader's window
    assert sum(counts.values()) <= 3 + 2  # at most the three live backups for that one
    assert not any(n._backups for n in live)


# --- overload: late, not lost --------------------------------------------------------------


def runner_for(node: ValidatorNode, clock: list[float]) -> object:
    from pathlib import Path

    from validator.app import ValidatorRunner
    from validator.config import ValidatorConfig
    return ValidatorRunner(ValidatorConfig(network_file=Path("unused.toml")), node, PREFIX,
                           clock=lambda: clock[0])


def drain(runner: object, node: ValidatorNode, clock: list[float]) -> list[Outbound]:
    """Run the runner's steps until it has nothing to do at the clock's time."""
    import time
    for _ in range(10_000):
        wait = runner.step()  # type: ignore[attr-defined]
        if wait is None:
            continue
        deadline = node.next_deadline()
        if not runner._inbox and (deadline is None or deadline > clock[0]):  # type: ignore[attr-defined]
            break
        time.sleep(min(wait, 0.02))
    out = list(runner._outbox)  # type: ignore[attr-defined]
    runner._outbox.clear()  # type: ignore[attr-defined]
    return out


def own_have(out: list[Outbound]) -> Have:
    for item in out:
        if item.topic.endswith("/agreement"):
            message, _ = decode_message(item.payload)
            if isinstance(message, SignedHave):
                return message.have
    raise AssertionError("no have sent")


@pytest.mark.parametrize("behind_s", [3.0, 60.0])
def test_a_node_behind_attests_what_arrived_before_the_window_was_due(behind_s: float) -> None:
    """Readings that arrived before the window was due are in its have, even if the node
    only gets to them after it is due, unless it is more than MAX_DEFER_S behind."""
    from validator.app import MAX_DEFER_S
    node = nodes()[0]
    clock = [float(T0)]
    runner = runner_for(node, clock)
    device = Device("meter-1")
    runner.received(registry_topic(device.name, PREFIX), device.record())  # type: ignore[attr-defined]
    drain(runner, node, clock)
    topic = device_topic(device.name, "readings", PREFIX)
    clock[0] = T0 + 1
    runner.received(topic, encode_batch([device.read(T0 + 0.5)]))  # type: ignore[attr-defined]
    assert drain(runner, node, clock) == []  # processed at once: the window is open
    for j in range(1, 5):  # these arrive in time, but the node is busy and not at them yet
        runner.received(topic, encode_batch([device.read(T0 + j + 0.5)]), T0 + j + 1)  # type: ignore[attr-defined]
    due = T0 + WINDOW_S + node.grace_s
    clock[0] = due + behind_s  # ... until after the window is due
    import time
    time.sleep(0.02)  # (the runner ticks at most every MIN_TICK_GAP_S)
    have = own_have(drain(runner, node, clock))
    if behind_s < MAX_DEFER_S:
        assert [seq for seq, _ in have.leaves] == [0, 1, 2, 3, 4]  # late, not lost
    else:
        assert [seq for seq, _ in have.leaves] == [0]  # liveness first: the tick waits
    assert node.stats.readings_accepted == 5  # MAX_DEFER_S for older messages, no longer


@pytest.mark.parametrize("lag_s", [0.0, 1.5, 3.0, 5.0])
def test_peers_that_are_behind_do_not_time_rounds_out(lag_s: float) -> None:
    """Every validator's messages reach the others ``lag_s`` after the window is due (they
    are behind, longer than a round's timeout): the round waits for the k-th have and then
    for the proposal, so round 0 certifies every window and no round times out."""
    sim = SimNet(nodes(), lag={i: lag_s for i in range(4)})
    devices = [Device("pv-a"), Device("pv-b")]
    start(sim, devices)
    feed(sim, devices, windows=3)
    sim.run_until(T0 + 3 * WINDOW_S + 2.0 + 8 * lag_s + 4 * 2.0)
    assert [n.stats.rounds_timed_out for n in sim.nodes] == [0, 0, 0, 0]
    assert all(len(v) == 1 for v in certified(sim).values())
    assert len(certified(sim)) == 3 * len(devices)
    check_all(sim, devices)


# --- every payload on every topic: counted and dropped, never an exception ----------------

_TOPICS = [device_topic("meter-1", "readings", PREFIX), registry_topic("meter-1", PREFIX),
           *(validator_topic(KEYS[1].address, leaf, PREFIX)
             for leaf in ("agreement", "certificates", "status"))]


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(_TOPICS), payload=st.binary(max_size=300))
def test_any_payload_on_any_topic_never_raises(topic: str, payload: bytes) -> None:
    node = nodes()[0]
    node.on_message(registry_topic("meter-1", PREFIX), Device("meter-1").record(), T0)
    node.on_message(topic, payload, T0 + 1)
    node.tick(T0 + 60)


def test_a_proposal_whose_boundary_is_not_a_reading_is_dropped() -> None:
    follower = nodes()[0]
    key = WindowKey(PROJECT, "meter-1", T0)
    wid = follower._agreement(key).id  # type: ignore[union-attr]
    lead = leader(follower.members, wid, 0)
    sender = next(k for k in KEYS if k.address == lead)
    haves = tuple(SignedHave.open(seal(k, Have(key, (), 0).encode())) for k in KEYS[:3])
    for boundary in (SignedReading(b"\x00garbage", bytes(64)),  # no reading at all
                     Device("meter-2").read(T0 - 1)):  # another device's reading
        hostile = Proposal(key, 0, haves, (), boundary)
        before = follower.stats.messages_dropped.get("bad_proposal", 0)
        follower.on_message(validator_topic(lead, "agreement", PREFIX),
                            seal(sender, hostile.encode()), T0 + WINDOW_S + 3)
        assert follower.stats.messages_dropped.get("bad_proposal", 0) == before + 1
