"""Validator-set and methodology changes on simulated networks (no broker, no chain): the nodes
get schedules (senken_core.membership) as their chain watchers would hand them over, at the
same or at different moments, and every window is certified once, by the set and under the
term in force for it."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from senken_core.evidence import CertifiedWindow, check_certified_window
from senken_core.membership import MethodologyTerm, Schedule, ValidatorSetChanged, first_window
from senken_core.methodology import GridExportAmsID
from senken_core.quorum import CertificateError, verify_certificate
from senken_core.secp256k1 import ValidatorKey, recover_address
from senken_core.topics import validator_topic
from tests.support.validator_sim import PREFIX, PROJECT, T0, WINDOW_S, Device, SimNet, network
from validator.agreement import Have, SignedHave, WindowKey, seal
from validator.node import ValidatorNode

DELAY_S = 3  # activation delay (sim windows are 10 s)
EF, EF2 = 691, 500


def _keys() -> list[ValidatorKey]:
    """Four founding validators, and a fifth whose address is the lowest of all, so that a
    certificate (the k lowest signers) of a window it signs always carries its signature."""
    keys = [ValidatorKey(bytes([i + 1]) * 32) for i in range(4)]
    seed = 100
    while True:
        newcomer = ValidatorKey(bytes([seed]) * 32)
        if newcomer.address < min(k.address for k in keys):
            return [*keys, newcomer]
        seed += 1


KEYS = _keys()
ADDR = [k.address for k in KEYS]


def set_change(epoch: int, members: Iterable[int], k: int, t: float) -> ValidatorSetChanged:
    return ValidatorSetChanged(epoch, tuple(ADDR[i] for i in members), k, int(t))


GENESIS = set_change(1, range(4), 3, T0 - 1000)
TERMS_V1 = [MethodologyTerm(0, 1, EF)]


def schedule(*changes: ValidatorSetChanged,
             terms: list[MethodologyTerm] | None = None) -> Schedule:
    return Schedule.of([GENESIS, *changes], {PROJECT: terms or TERMS_V1}, DELAY_S)


def make_nodes(start: Schedule, count: int = 5) -> list[ValidatorNode]:
    net = network(KEYS[:4], 3)  # the network file: the founding set (the chain overrides it)
    return [ValidatorNode(k, net, schedule=start, grace_s=2.0, round_timeout_s=2.0)
            for k in KEYS[:count]]


def run(sim: SimNet, devices: list[Device], windows: int,
        events: list[tuple[float, list[int], Schedule]], per_window: int = 5,
        settle_s: float = 60) -> None:
    """Devices read ``per_window`` times per window; at each event's time its nodes read its
    schedule."""
    pending = sorted(events, key=lambda e: e[0])
    step = WINDOW_S / per_window
    times = [T0 + w * WINDOW_S + j * step + 0.5 for w in range(windows)
             for j in range(per_window)]
    for t in times:
        while pending and pending[0][0] <= t:
            at, who, new = pending.pop(0)
            sim.run_until(at)
            for i in who:
                sim.give_schedule(i, new)
        sim.run_until(t)
        for d in devices:
            sim.publish_readings(d, [d.read(t)])
    end = T0 + windows * WINDOW_S + settle_s
    for at, who, new in pending:
        sim.run_until(at)
        for i in who:
            sim.give_schedule(i, new)
    sim.run_until(end)


def by_window(sim: SimNet) -> dict[WindowKey, set[bytes]]:
    out: dict[WindowKey, set[bytes]] = {}
    for payload in sim.certificates:
        att = CertifiedWindow.from_wire(payload).attestation
        out.setdefault(WindowKey(att.project, att.device, att.window_start), set()).add(
            att.to_wire())
    return out


def signers(sim: SimNet, window: CertifiedWindow) -> set[bytes]:
    digest = window.attestation.digest(sim.nodes[0].domain)
    return {recover_address(digest, s) for s in window.certificate.signatures}


def check(sim: SimNet, final: Schedule, devices: list[Device]) -> list[CertifiedWindow]:
    """Every certified window holds under the final schedule's set and term for it."""
    keys = {d.name: d.key.public_key for d in devices}
    out = []
    for payload in sim.certificates:
        window = CertifiedWindow.from_wire(payload)
        start = window.attestation.window_start
        term = final.term_for(PROJECT, start)
        assert term is not None
        assert window.attestation.methodology_version == term.methodology_version
        check_certified_window(window, final.validators_for(start), sim.nodes[0].domain,
                               keys.get, GridExportAmsID(term.grid_ef_g_per_kwh,
                                                         term.methodology_version))
        out.append(window)
    return out


def start(sim: SimNet, devices: list[Device]) -> None:
    for d in devices:
        sim.register(d)
    sim.deliver()


@pytest.mark.parametrize(("k_new", "crashed"), [(3, ()), (4, (1,))])
def test_a_fifth_validator_signs_the_windows_from_the_switch_on(
        k_new: int, crashed: tuple[int, ...]) -> None:
    """n = 4, k = 3, then n = 5 with k = 3 or 4. With k = 4 and a founding validator down,
    every new window needs the newcomer: its signature is in every certificate from the
    switch on (with all five up, the first k signatures to arrive make the certificate)."""
    old = schedule()
    changed_at = T0 + 15  # the proposal executes mid-window
    new = schedule(set_change(2, range(5), k_new, changed_at))
    switch = first_window(int(changed_at) + DELAY_S, WINDOW_S)
    assert switch == T0 + 2 * WINDOW_S
    sim = SimNet(make_nodes(old))
    for i in crashed:
        sim.crash(i)
    devices = [Device("meter-1"), Device("meter-2")]
    start(sim, devices)
    run(sim, devices, windows=5, events=[(changed_at + 0.5, list(range(5)), new)])
    windows = by_window(sim)
    assert len(windows) == 10 and all(len(v) == 1 for v in windows.values())
    for window in check(sim, new, devices):
        start_s = window.attestation.window_start
        got = signers(sim, window)
        if start_s < switch:
            assert got <= set(ADDR[:4]) and len(got) == 3
            verify_certificate(window.certificate, old.validators_for(start_s),
                               sim.nodes[0].domain)
        else:
            assert len(got) == k_new
            assert ADDR[4] in got or not crashed  # the newcomer's signature counts
    newcomer = sim.nodes[4]
    assert newcomer.stats.attestations_signed == 3 * 2  # the windows from the switch on
    assert newcomer.stats.readings_accepted > 0


def test_a_validator_that_sees_the_change_late_lags_then_converges() -> None:
    """After the switch k = 4 of 5; validator 2 is down and validator 3 reads the chain only
    well after the first new window was due: its rounds time out (the others need it) until
    it reads the change, then every window is certified by the new set."""
    old = schedule()
    changed_at = T0 + 12
    new = schedule(set_change(2, range(5), 4, changed_at))
    switch = first_window(int(changed_at) + DELAY_S, WINDOW_S)
    sim = SimNet(make_nodes(old))
    sim.crash(2)
    devices = [Device("meter-1")]
    start(sim, devices)
    late = switch + WINDOW_S + 2 + 15  # its first new window was due 15 s earlier
    run(sim, devices, windows=4, settle_s=120,
        events=[(changed_at, [0, 1, 4], new), (late, [3], new)])
    windows = by_window(sim)
    assert len(windows) == 4 and all(len(v) == 1 for v in windows.values())
    for window in check(sim, new, devices):
        if window.attestation.window_start >= switch:
            assert len(signers(sim, window)) == 4
    assert sim.nodes[3].stats.agreements_restarted >= 1  # it had been agreeing under epoch 1
    assert sum(n.stats.rounds_timed_out for n in sim.nodes) > 0
    assert not any(n._agreements for n in sim.nodes[:2])


def test_a_removed_validator_is_never_counted_after_the_switch() -> None:
    """Validator 3 is removed (n = 3, k = 2) but never reads the chain again: it goes on
    sending haves, proposals and signatures as if it were a member."""
    old = schedule()
    changed_at = T0 + 5
    new = schedule(set_change(2, range(3), 2, changed_at))
    switch = first_window(int(changed_at) + DELAY_S, WINDOW_S)
    sim = SimNet(make_nodes(old, count=4))
    devices = [Device("meter-1"), Device("meter-2")]
    start(sim, devices)
    run(sim, devices, windows=4, events=[(changed_at, [0, 1, 2], new)])
    removed = ADDR[3]
    valid, stale = [], []
    for payload in sim.certificates:
        window = CertifiedWindow.from_wire(payload)
        start_s = window.attestation.window_start
        try:
            verify_certificate(window.certificate, new.validators_for(start_s),
                               sim.nodes[0].domain)
        except CertificateError:
            stale.append(window)
        else:
            valid.append(window)
    assert {w.attestation.window_start for w in valid} == {T0 + i * WINDOW_S for i in range(4)}
    contents = {(w.attestation.device, w.attestation.window_start, w.attestation.to_wire())
                for w in valid}
    assert len(contents) == 8  # 2 devices x 4 windows, one content each
    for window in valid:
        if window.attestation.window_start >= switch:
            assert removed not in signers(sim, window) and len(signers(sim, window)) == 2
    # what the removed validator assembled by itself (with its stale set) holds for nobody:
    # the members settled every new window without it
    assert all(removed in signers(sim, w) and w.attestation.window_start >= switch
               for w in stale)
    for node in sim.nodes[:3]:
        for key, settled in node._done.items():
            assert key.window_start < switch or \
                (removed not in settled.signers and len(settled.signers) == 2)
    assert sim.nodes[3].stats.attestations_signed > 0  # it did sign: it was never counted
    dropped = sum(sim.nodes[i].stats.messages_dropped.get("not_a_member", 0) for i in range(3))
    assert dropped > 0  # its haves for the new windows


def test_a_node_outside_the_windows_set_takes_no_part() -> None:
    sim = SimNet(make_nodes(schedule()))
    devices = [Device("meter-1")]
    start(sim, devices)
    run(sim, devices, windows=2, events=[])
    assert len(by_window(sim)) == 2
    outsider = sim.nodes[4]
    assert outsider.stats.readings_accepted == 10  # it verifies readings
    assert outsider.stats.attestations_signed == 0 and not outsider._agreements
    # and the members do not count its have
    key = WindowKey(PROJECT, "meter-1", T0 + 5 * WINDOW_S)
    have = seal(KEYS[4], Have(key, (), 0).encode())
    member = sim.nodes[0]
    member.on_message(validator_topic(ADDR[4], "agreement", PREFIX), have, sim.now)
    assert member.stats.messages_dropped.get("not_a_member", 0) >= 1
    assert SignedHave.open(have).signer == ADDR[4]


def test_a_methodology_term_applies_from_its_effective_window_even_when_seen_late() -> None:
    """A term (version 2, 500 g/kWh) effective from the third window: three of four
    validators read it in time, one only after that window was due; every window is certified
    once, under the term in force for it."""
    effective = T0 + 2 * WINDOW_S
    terms = [*TERMS_V1, MethodologyTerm(effective, 2, EF2)]
    new = schedule(terms=terms)
    sim = SimNet(make_nodes(schedule(), count=4))
    devices = [Device("meter-1")]
    start(sim, devices)
    run(sim, devices, windows=4, events=[(T0 + 3, [0, 1, 2], new),
                                         (effective + WINDOW_S + 6, [3], new)])
    windows = check(sim, new, devices)
    assert sorted(w.attestation.window_start for w in windows) == \
        [T0 + i * WINDOW_S for i in range(4)]
    for window in windows:
        att = window.attestation
        ef = EF2 if att.window_start >= effective else EF
        assert att.co2e_mg == att.quantity * ef and att.quantity > 0


def test_stale_validators_that_certified_an_old_term_take_part_again() -> None:
    """Three of four validators (k = 3) miss a term change and certify its first window
    under the old version (a certificate the contract would refuse); the fourth keeps that
    certificate aside. When they read the term they reopen the window, and a certificate
    under the new version follows."""
    effective = T0 + WINDOW_S
    new = schedule(terms=[*TERMS_V1, MethodologyTerm(effective, 2, EF2)])
    sim = SimNet(make_nodes(schedule(), count=4))
    devices = [Device("meter-1")]
    start(sim, devices)
    run(sim, devices, windows=2, settle_s=10, events=[(T0 + 1, [3], new)])
    stale = [CertifiedWindow.from_wire(p).attestation for p in sim.certificates]
    assert any(a.window_start == effective and a.methodology_version == 1 for a in stale)
    assert sim.nodes[3].stats.messages_dropped.get("certificate_parked", 0) >= 1
    sim.certificates.clear()
    for i in range(3):
        sim.give_schedule(i, new)
    sim.run_until(sim.now + 120)
    fresh = [CertifiedWindow.from_wire(p).attestation for p in sim.certificates]
    assert {(a.window_start, a.methodology_version, a.to_wire()) for a in fresh} == \
        {(effective, 2, fresh[0].to_wire())}  # (published by one or two leaders: one content)
    assert fresh[0].co2e_mg == fresh[0].quantity * EF2 and fresh[0].quantity > 0
    check(sim, new, devices)
    assert not any(n._agreements for n in sim.nodes)


def test_the_same_schedule_twice_changes_nothing() -> None:
    node = make_nodes(schedule(), count=1)[0]
    new = schedule(set_change(2, range(5), 3, T0))
    assert node.on_schedule(schedule(), T0) == []
    node.on_schedule(new, T0)
    assert node.on_schedule(new, T0 + 1) == [] and node.stats.schedules_applied == 1
    assert node.stats.schedule_epoch == 2 and node.validators == new.latest.validators


def split(sim: SimNet, final: Schedule) -> tuple[list[CertifiedWindow], list[CertifiedWindow]]:
    """The published certified windows that hold under ``final`` (the set of each window),
    and the rest."""
    valid, other = [], []
    for payload in sim.certificates:
        window = CertifiedWindow.from_wire(payload)
        try:
            verify_certificate(window.certificate,
                               final.validators_for(window.attestation.window_start),
                               sim.nodes[0].domain)
        except CertificateError:
            other.append(window)
        else:
            valid.append(window)
    return valid, other


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seen_after=st.lists(st.floats(0, 30), min_size=5, max_size=5),
       k_new=st.sampled_from([3, 4]), seed=st.integers(0, 2**16),
       duplicate=st.sampled_from([0.0, 0.3]))
def test_whenever_each_validator_reads_the_change_every_window_is_certified_once(
        seen_after: list[float], k_new: int, seed: int, duplicate: float) -> None:
    """Each validator reads the change at its own moment, up to 30 s (three windows) after
    its block, with duplicated and reordered messages: every window is certified by the set
    in force for it, with one content. A validator that had not read the change yet may
    publish a certificate that holds only under the old set (it sees k old members'
    signatures): nobody who has read the change counts it, and the contract would not mint
    it (it checks the current set)."""
    changed_at = T0 + 11
    old, new = schedule(), schedule(set_change(2, range(5), k_new, changed_at))
    sim = SimNet(make_nodes(old), rng=random.Random(seed), duplicate=duplicate,
                 shuffle=duplicate > 0)
    devices = [Device("meter-1")]
    start(sim, devices)
    run(sim, devices, windows=5, settle_s=60,
        events=[(changed_at + d, [i], new) for i, d in enumerate(seen_after)])
    valid, stale = split(sim, new)
    contents: dict[int, set[bytes]] = {}
    for window in valid:
        contents.setdefault(window.attestation.window_start, set()).add(
            window.attestation.to_wire())
    assert sorted(contents) == [T0 + i * WINDOW_S for i in range(5)]
    assert all(len(c) == 1 for c in contents.values())
    for window in stale:  # made with the old set by a validator that lagged
        verify_certificate(window.certificate, old.validators_for(0), sim.nodes[0].domain)
    assert not any(n._agreements for n in sim.nodes)


def test_a_validator_that_missed_the_certificate_is_sent_it() -> None:
    """Validator 3 gets no signatures and no certified windows: it keeps agreeing, and the
    others, who settled, answer its next have with the certificate."""
    sign = b"\x61t\x64sign"  # {"t": "sign", ...} in canonical CBOR
    sim = SimNet(make_nodes(schedule(), count=4),
                 drop=lambda i, m: i == 3 and (sign in m[1] or "/certificates" in m[0]))
    devices = [Device("meter-1")]
    start(sim, devices)
    run(sim, devices, windows=2, events=[], settle_s=40)
    late = sim.nodes[3]
    assert not late._agreements
    assert {k.window_start for k in late._done} == {T0, T0 + WINDOW_S}
    assert late.stats.certificates == 0  # it never assembled one itself


def test_chain_settings() -> None:
    from senken_core.errors import ConfigError
    from validator.config import ValidatorConfig

    cfg = ValidatorConfig.from_dict({"network_file": "n.toml", "chain": {
        "url": "http://127.0.0.1:8545", "poll_s": 2, "activation_delay_s": 60}})
    assert cfg.chain is not None and cfg.chain.validator_set is None
    assert ValidatorConfig.from_dict({"network_file": "n.toml"}).chain is None
    with pytest.raises(ConfigError) as caught:
        ValidatorConfig.from_dict({"network_file": "n.toml", "chain": {
            "url": "ws://x", "validator_set": "0x12", "poll_s": 30, "activation_delay_s": 10}})
    problems = " ".join(caught.value.problems)
    assert "chain.url" in problems and "chain.validator_set" in problems
    with pytest.raises(ConfigError, match="below poll_s"):
        ValidatorConfig.from_dict({"network_file": "n.toml", "chain": {
            "url": "http://x", "poll_s": 30, "activation_delay_s": 10}})


def test_the_activation_delay_is_the_network_files_and_a_different_one_is_refused() -> None:
    """One value at every validator and the ledger: the network file's wins, a validator
    whose own config says otherwise does not start."""
    from dataclasses import replace

    from validator.app import StartupError, _chain_watcher
    from validator.config import ValidatorConfig

    base = network([ValidatorKey(bytes([60 + i]) * 32) for i in range(4)], 3)
    with_delay = replace(base, activation_delay_s=45)

    def watcher_delay(net: object, chain: dict[str, object]) -> int:
        cfg = ValidatorConfig.from_dict({"network_file": "n.toml", "chain": {
            "url": "http://127.0.0.1:1", "poll_s": 2, **chain}})
        watcher = _chain_watcher(cfg, net)  # type: ignore[arg-type]
        return watcher.activation_delay_s  # type: ignore[union-attr,attr-defined]

    assert watcher_delay(base, {}) == 600  # neither: the default
    assert watcher_delay(base, {"activation_delay_s": 60}) == 60  # its own, the file has none
    assert watcher_delay(with_delay, {}) == 45  # the file's
    assert watcher_delay(with_delay, {"activation_delay_s": 45}) == 45  # both, equal
    with pytest.raises(StartupError, match="45 in the network file"):
        watcher_delay(with_delay, {"activation_delay_s": 60})
    with pytest.raises(StartupError, match="below"):
        watcher_delay(replace(base, activation_delay_s=1), {})  # under poll_s


def test_the_runner_feeds_the_watchers_schedules_and_survives_a_failing_chain() -> None:
    import asyncio

    from senken_core.errors import SenkenError
    from validator.app import ValidatorRunner
    from validator.config import ValidatorConfig

    new = schedule(set_change(2, range(5), 3, T0))

    class Source:
        def __init__(self) -> None:
            self.replies: list[Schedule | Exception | None] = [
                SenkenError("chain http://x: down"), new, None]

        def poll(self) -> Schedule | None:
            reply = self.replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply

    node = make_nodes(schedule(), count=1)[0]
    cfg = ValidatorConfig.from_dict({"network_file": "n.toml", "chain": {
        "url": "http://x", "poll_s": 1, "activation_delay_s": 3}})
    runner = ValidatorRunner(cfg, node, PREFIX, clock=lambda: float(T0), chain=Source())
    asyncio.run(runner.poll_chain())
    assert runner.chain_errors == 1 and node.schedule == schedule()
    asyncio.run(runner.poll_chain())
    assert runner.chain_errors == 0 and node.schedule == new and runner.schedules == 1
    asyncio.run(runner.poll_chain())  # nothing new
    assert runner.schedules == 1
