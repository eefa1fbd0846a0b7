"""The ledger with a schedule from the chain (no chain here: schedules built by hand, as
``ledger.chain_app.ScheduleFollower`` hands them over): which set and term a window is checked
under, when a window's schedule is final, and the waiting certificates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ledger.chain_app import ScheduleFollower
from ledger.config import LedgerConfig
from ledger.offline import check_evidence
from ledger.service import Ledger
from ledger.store import LedgerStore
from senken_core.chain_schedule import ScheduleRead
from senken_core.evidence import CertifiedWindow, EvidenceError
from senken_core.membership import MethodologyTerm, Schedule, ValidatorSetChanged
from senken_core.quorum import QuorumCertificate
from tests.unit.test_ledger_support import EF, HOUR, PROJECT, T0, World

DELAY_S = 600


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LedgerStore]:
    s = LedgerStore.open(LedgerConfig(state_dir=tmp_path).db_url)
    yield s
    s.close()


@pytest.fixture
def ledger(world: World, store: LedgerStore) -> Ledger:
    led = Ledger(world.network, store, follow_chain=True)
    assert led.on_registry(world.record().to_wire(), world.device) == "applied"
    return led


def schedule(world: World, *, new_set_at: int | None = None, k: int = 3,
             terms: list[MethodologyTerm] | None = None) -> Schedule:
    """The founders (epoch 1, deployed long before T0); with ``new_set_at``: epoch 2 (the
    founders and the outsider, k) mined at ``new_set_at``."""
    founders = [v.address for v in world.validators]
    changes = [ValidatorSetChanged(1, tuple(founders), 3, T0 - 30 * HOUR)]
    if new_set_at is not None:
        changes.append(ValidatorSetChanged(2, (*founders, world.outsider.address), k,
                                           new_set_at))
    return Schedule.of(changes, {PROJECT: terms or [MethodologyTerm(0, 1, EF)]}, DELAY_S)


def certify_v(world: World, hour: int, version: int, ef: int, **kw: Any) -> CertifiedWindow:
    """World's window of ``hour`` under methodology ``version`` at ``ef`` g/kWh."""
    project = replace(world.network.projects[0], methodology_version=version,
                      grid_ef_g_per_kwh=ef)
    saved = world.methodology
    world.methodology = project.methodology_terms()
    try:
        return world.certify(hour, **kw)
    finally:
        world.methodology = saved


def test_nothing_is_judged_before_the_chain_is_read_past_the_window(
        world: World, ledger: Ledger, store: LedgerStore) -> None:
    window = world.certify(0)
    start = window.attestation.window_start
    outcome = ledger.on_certificate(window.to_wire())
    assert (outcome.result, outcome.reason, outcome.label) == ("pending", "schedule",
                                                               "pending:schedule")
    assert store.pending_count() == 1 and ledger.waiting_for() == start
    assert ledger.on_schedule(schedule(world), 10, start - 1) == []
    assert ledger.on_schedule(schedule(world), 11, start) == []  # equal: a block may follow
    assert store.pending_count() == 1
    done = ledger.on_schedule(schedule(world), 12, start + 1)
    assert [o.result for o in done] == ["appended"]
    assert store.pending_count() == 0 and ledger.waiting_for() is None
    assert ledger.certificates == {"pending:schedule": 1, "appended": 1}
    assert ledger.stats()["schedule"]["read_block"] == 12


def test_a_read_of_an_earlier_block_is_ignored(world: World, ledger: Ledger) -> None:
    ledger.on_schedule(schedule(world), 20, T0 + HOUR)
    changed = schedule(world, new_set_at=T0)
    assert ledger.on_schedule(changed, 19, T0 + 2 * HOUR) == []
    assert ledger.schedule.latest.epoch == 1 and ledger.chain_block == 20


def test_each_window_is_checked_against_its_own_set(world: World, ledger: Ledger) -> None:
    """Epoch 2 (k = 4 of 5, the outsider in) mined at T0 + 1 h: windows from T0 + 1 h +
    the delay on need it, earlier ones the founders' k = 3."""
    mined = T0 + HOUR
    ledger.on_schedule(schedule(world, new_set_at=mined, k=4), 1, T0 + 10 * HOUR)
    newcomer = [world.outsider, *world.validators[:3]]
    outcomes = {
        "old set, before": world.certify(0),  # 3 founders, window T0
        "new set, before": world.certify(1, keys=newcomer),  # T0 + 1 h < T0 + 1 h + delay
        "old set, after": world.certify(2),
        "new set, after": world.certify(3, keys=newcomer),
    }
    labels = {name: ledger.on_certificate(w.to_wire()).label for name, w in outcomes.items()}
    assert labels == {"old set, before": "appended",
                      "new set, before": "refused:certificate:unknown_signer",
                      "old set, after": "refused:certificate:too_few",
                      "new set, after": "appended"}
    assert ledger.window_epoch(T0) == 1 and ledger.window_epoch(T0 + 3 * HOUR) == 2
    assert ledger.validators.threshold == 4


def test_the_windows_term_decides_version_and_grid_factor(world: World,
                                                          ledger: Ledger) -> None:
    """Version 2 at 500 g/kWh from T0 + 2 h; no term at all before T0 - 1 h."""
    terms = [MethodologyTerm(T0 - HOUR, 1, EF), MethodologyTerm(T0 + 2 * HOUR, 2, 500)]
    ledger.on_schedule(schedule(world, terms=terms), 1, T0 + 10 * HOUR)
    cases = [
        (world.certify(0), "appended"),
        (world.certify(2), "refused:wrong_methodology"),  # version 1 after the switch
        (certify_v(world, 3, 2, 500), "appended"),
        (certify_v(world, 4, 2, EF), "refused:wrong_attestation"),  # not the term's factor
        (world.certify(-2, readings=world.window_readings(-2, first_seq=1000)),
         "refused:no_term"),
    ]
    for window, expected in cases:
        assert ledger.on_certificate(window.to_wire()).label == expected
    assert ledger.certificates["refused:no_term"] == 1


def test_without_a_chain_the_network_file_decides(world: World, store: LedgerStore) -> None:
    led = Ledger(world.network, store)
    led.on_registry(world.record().to_wire(), world.device)
    assert led.final(T0 + 10**6) and led.window_epoch(T0) is None
    assert led.on_certificate(world.certify(0).to_wire()).label == "appended"
    assert led.on_certificate(certify_v(world, 1, 2, EF).to_wire()).label == \
        "refused:wrong_methodology"
    assert "schedule" not in led.stats()


def test_a_buyer_checks_evidence_against_the_schedule(world: World) -> None:
    newcomer = [world.outsider, *world.validators[:3]]
    window = world.certify(3, keys=newcomer)
    record = world.record().to_wire()
    with pytest.raises(EvidenceError) as refused:
        check_evidence(window.to_wire(), record, world.network)  # the file's set
    assert refused.value.reason == "certificate:unknown_signer"
    checked = check_evidence(window.to_wire(), record, world.network,
                             schedule(world, new_set_at=T0 + HOUR, k=4))
    assert world.outsider.address in checked.signers
    short = CertifiedWindow(QuorumCertificate(window.attestation, window.certificate
                                              .signatures[:3]), window.readings)
    with pytest.raises(EvidenceError, match="threshold is 4"):
        check_evidence(short.to_wire(), record, world.network,
                       schedule(world, new_set_at=T0 + HOUR, k=4))


class _Node:
    """A ChainNode's surface the follower uses, for an in-process chain."""

    def __init__(self) -> None:
        self.in_process = True
        self.mined = 0
        outer = self

        class Provider:
            def make_request(self, method: str, params: list[Any]) -> Any:
                assert method == "evm_mine"
                outer.mined += 1

        class W3:
            provider = Provider()

        self.w3 = W3()

    def _guard(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


class _Watcher:
    activation_delay_s = DELAY_S

    def __init__(self, node: _Node, reads: list[ScheduleRead]) -> None:
        self.node, self.reads = node, reads

    def read(self) -> ScheduleRead:
        return self.reads[min(self.node.mined, len(self.reads) - 1)]


def test_an_in_process_chain_is_asked_for_a_block_when_a_certificate_waits(
        world: World, ledger: Ledger) -> None:
    """A chain in this process mines only on transactions: the follower mines an empty
    block when a certificate of a past window waits for one, and reads again."""
    window = world.certify(0)
    start = window.attestation.window_start  # in the past
    node = _Node()
    reads = [ScheduleRead(schedule(world), 5, start - 100),
             ScheduleRead(schedule(world), 6, start + 10**6)]
    follower = ScheduleFollower(_Watcher(node, reads), node, ledger)  # type: ignore[arg-type]
    assert follower.step() and node.mined == 0  # nothing waits: nothing mined
    assert ledger.on_certificate(window.to_wire()).label == "pending:schedule"
    assert follower.step() and node.mined == 1
    assert ledger.certificates["appended"] == 1 and follower.status()["block"] == 6
