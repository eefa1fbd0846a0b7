"""The ledger's core on the embedded store (SQLite): what is appended, what is refused, why."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ledger.config import LedgerConfig
from ledger.service import MAX_WINDOW_AHEAD_S, Ledger
from ledger.store import LedgerStore
from senken_core import canonical
from senken_core.reading import SignedReading
from tests.unit.test_ledger_support import HOUR, T0, World


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def store(tmp_path: Path) -> LedgerStore:
    s = LedgerStore.open(LedgerConfig(state_dir=tmp_path).db_url)
    yield s  # type: ignore[misc]
    s.close()


@pytest.fixture
def ledger(world: World, store: LedgerStore) -> Ledger:
    led = Ledger(world.network, store)
    assert led.on_registry(world.record().to_wire(), world.device) == "applied"
    return led


def test_the_embedded_default_is_sqlite_in_wal_mode(tmp_path: Path) -> None:
    cfg = LedgerConfig(state_dir=tmp_path / "state")
    assert cfg.db_url == f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    store = LedgerStore.open(cfg.db_url)
    store.close()
    with sqlite3.connect(tmp_path / "state" / "ledger.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_appending_twice_is_one_entry_and_the_log_verifies(world: World, ledger: Ledger,
                                                           store: LedgerStore) -> None:
    window = world.certify(0)
    first = ledger.on_certificate(window.to_wire())
    again = ledger.on_certificate(window.to_wire())
    assert (first.result, first.index) == ("appended", 0)
    assert (again.result, again.index) == ("duplicate", 0)
    # the same attestation certified by another three validators is the same window
    other_quorum = replace(window, certificate=replace(
        window.certificate, signatures=world.sign(window.attestation, world.validators[1:])))
    assert ledger.on_certificate(other_quorum.to_wire()).result == "duplicate"
    assert ledger.on_certificate(world.certify(1).to_wire()).index == 1
    report = store.verify_log()
    assert report.ok and report.entries == 2
    assert store.head() == (2, report.head_hash)
    assert ledger.certificates == {"appended": 2, "duplicate": 2}


@pytest.mark.parametrize(("case", "reason"), [
    ("k-1 signatures", "certificate:too_few"),
    ("unknown signer", "certificate:unknown_signer"),
    ("a signer twice", "certificate:duplicate_signer"),
    ("a changed reading", "bad_reading"),
    ("an inflated quantity", "wrong_attestation"),
    ("off the project's grid", "wrong_window"),
    ("another anomaly model", "wrong_model"),
])
def test_bad_certificates_are_refused_with_their_reason(world: World, ledger: Ledger,
                                                        store: LedgerStore, case: str,
                                                        reason: str) -> None:
    window = world.certify(0)
    att = window.attestation
    if case == "k-1 signatures":
        bad = world.certify(0, keys=world.validators[:2])
    elif case == "unknown signer":
        bad = world.certify(0, keys=[*world.validators[:2], world.outsider])
    elif case == "a signer twice":
        sigs = window.certificate.signatures
        bad = replace(window, certificate=replace(window.certificate,
                                                  signatures=(sigs[0], sigs[0], sigs[1])))
    elif case == "a changed reading":
        body = window.readings[2].body.replace(b"\x19\x03\xe8", b"\x19\x03\xe9")  # power_w
        assert body != window.readings[2].body
        bad = world.with_reading(window, 2, SignedReading(body, window.readings[2].signature))
    elif case == "an inflated quantity":
        bad = world.certify(0, quantity=att.quantity * 10, co2e_mg=att.co2e_mg * 10)
    elif case == "off the project's grid":
        bad = world.certify(0, window_seconds=1800)
    else:
        bad = world.certify(0, model_hash=b"\x33" * 32)
    outcome = ledger.on_certificate(bad.to_wire())
    assert (outcome.result, outcome.reason) == ("refused", reason)
    assert store.head()[0] == 0
    assert ledger.certificates[f"refused:{reason}"] == 1
    assert ledger.on_certificate(window.to_wire()).result == "appended"  # the good one still


def test_a_reading_counted_in_one_window_is_refused_in_another(world: World, ledger: Ledger,
                                                               store: LedgerStore) -> None:
    """A device that signs two readings under one sequence number (a bug or an attack) and
    validators that certify both windows: the ledger counts the reading once."""
    assert ledger.on_certificate(world.certify(0).to_wire()).result == "appended"
    second = world.window_readings(1)
    second[0] = world.reading(3, T0 + HOUR + 10)  # seq 3 again, read in the next window
    second = sorted(second, key=lambda r: r.seq)
    outcome = ledger.on_certificate(world.certify(1, second).to_wire())
    assert (outcome.result, outcome.reason) == ("refused", "reading_counted")
    assert store.head()[0] == 1 and store.verify_log().ok


def test_the_boundary_reading_credits_the_later_window_without_counting_twice(
        world: World, ledger: Ledger, store: LedgerStore) -> None:
    first = world.window_readings(0)
    assert ledger.on_certificate(world.certify(0, first).to_wire()).result == "appended"
    second = world.certify(1, boundary=first[-1])
    assert second.attestation.quantity == 600  # 6 increments: one across the boundary
    assert ledger.on_certificate(second.to_wire()).result == "appended"
    assert store.verify_log().ok


def test_a_conflicting_certificate_for_a_logged_window_changes_nothing(
        world: World, ledger: Ledger, store: LedgerStore) -> None:
    assert ledger.on_certificate(world.certify(0).to_wire()).result == "appended"
    head = store.head()
    # the same window, certified again with another (valid) rejected count
    other = ledger.on_certificate(world.certify(0, rejected=4).to_wire())
    assert (other.result, other.index) == ("conflicting", 0)
    assert store.head() == head and store.verify_log().ok


def test_a_certificate_before_its_registry_record_is_appended_when_it_arrives(
        world: World, store: LedgerStore) -> None:
    ledger = Ledger(world.network, store)
    window = world.certify(0)
    assert ledger.on_certificate(window.to_wire()).result == "pending"
    assert ledger.on_certificate(window.to_wire()).result == "pending"  # kept once
    assert store.pending_count() == 1 and store.head()[0] == 0
    # the ledger restarts before the record comes: nothing is lost
    restarted = Ledger(world.network, store)
    restarted.start()
    assert restarted.on_registry(world.record().to_wire(), world.device) == "applied"
    assert store.head()[0] == 1 and store.pending_count() == 0
    assert restarted.certificates["appended"] == 1


def test_registry_records_are_checked_and_kept(world: World, store: LedgerStore,
                                               tmp_path: Path) -> None:
    from senken_core.keys import DeviceKey

    ledger = Ledger(world.network, store)
    forged = world.record(owner=DeviceKey(b"\x06" * 32))
    assert ledger.on_registry(forged.to_wire(), world.device) == "refused:bad_signature"
    assert ledger.on_registry(world.record().to_wire(), "pv-7-meter-2") == \
        "refused:topic_mismatch"
    assert ledger.on_registry(b"\x01garbage") == "refused:malformed"
    assert ledger.on_registry(b"") == "cleared"
    assert ledger.on_registry(world.record().to_wire()) == "applied"
    assert ledger.on_registry(world.record(2, revoked=True).to_wire()) == "applied"
    assert store.registry_record(world.device) == world.record(2, revoked=True).to_wire()
    # a revoked device's windows certified before still verify under its registered key
    assert ledger.on_certificate(world.certify(0).to_wire()).result == "appended"
    again = Ledger(world.network, store)
    again.start()
    assert again.registry.lookup(world.device) is not None


def test_tampering_with_a_row_is_reported_at_its_index(world: World, ledger: Ledger,
                                                       store: LedgerStore,
                                                       tmp_path: Path) -> None:
    for hour in range(3):
        ledger.on_certificate(world.certify(hour).to_wire())
    assert store.verify_log().ok
    db = sqlite3.connect(tmp_path / "ledger.db")
    try:
        db.execute("UPDATE ledger_attestation SET co2e_mg = co2e_mg * 2 WHERE log_index = 2")
        db.commit()
        report = store.verify_log()
        assert (report.first_bad_index, report.reason) == (
            2, "the attestation row differs from the evidence")
        evidence = db.execute("SELECT evidence FROM ledger_log WHERE \"index\" = 1").fetchone()[0]
        db.execute("UPDATE ledger_log SET evidence = ? WHERE \"index\" = 1",
                   (evidence[:-1] + b"\x00",))
        db.commit()
        report = store.verify_log()
        assert report.first_bad_index == 1 and not report.ok
        assert "entry_hash" in (report.reason or "")
        db.execute("DELETE FROM ledger_log WHERE \"index\" = 0")
        db.commit()
        assert store.verify_log().first_bad_index == 0
    finally:
        db.close()


def test_the_chain_is_the_documented_hash(world: World, ledger: Ledger,
                                          store: LedgerStore, tmp_path: Path) -> None:
    from hashlib import sha256

    for hour in range(2):
        ledger.on_certificate(world.certify(hour).to_wire())
    db = sqlite3.connect(tmp_path / "ledger.db")
    rows = db.execute("SELECT \"index\", prev_hash, entry_hash, evidence FROM ledger_log "
                      "ORDER BY \"index\"").fetchall()
    db.close()
    prev = bytes(32)
    for index, prev_hash, digest, evidence in rows:
        assert prev_hash == prev
        assert digest == sha256(prev + index.to_bytes(8, "big") + sha256(evidence).digest()
                                ).digest()
        prev = digest
    assert store.head() == (2, prev)


payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(canonical.encode, st.recursive(
        st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1) | st.text(max_size=20)
        | st.binary(max_size=70),
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["v", "attestation", "signatures", "readings",
                                           "boundary", "x"]), inner, max_size=6),
        max_leaves=12)),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads)
def test_garbage_certificates_are_counted_refusals_never_exceptions(
        ledger: Ledger, payload: bytes) -> None:
    outcome = ledger.on_certificate(payload)
    assert (outcome.result, outcome.reason) == ("refused", "malformed")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_damaged_certificate_is_refused_never_appended(
        world: World, ledger: Ledger, store: LedgerStore, data: st.DataObject) -> None:
    original = world.certify(5).to_wire()
    wire = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] ^= data.draw(st.integers(1, 255))
    assume(bytes(wire) != original)  # two flips of one byte can undo each other
    outcome = ledger.on_certificate(bytes(wire))
    assert outcome.result in ("refused", "pending"), outcome  # pending: the device id changed
    assert store.head()[0] == 0


def test_two_appenders_on_one_sqlite_file_keep_one_chain(world: World, tmp_path: Path) -> None:
    import threading

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    stores = [LedgerStore.open(url) for _ in range(2)]
    windows = [world.certify(h) for h in range(8)]
    barrier = threading.Barrier(2)
    results: list[list[bool]] = [[], []]

    def work(i: int) -> None:
        barrier.wait()
        for w in windows if i == 0 else reversed(windows):
            results[i].append(stores[i].append(w).appended)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(results[0]) + sum(results[1]) == 8
    report = stores[0].verify_log()
    assert report.ok and report.entries == 8
    for s in stores:
        s.close()


def test_a_certificate_for_a_window_not_ended_yet_is_refused_and_not_kept(
        world: World, store: LedgerStore) -> None:
    """Validators attest a window once it has ended: one that ends more than
    MAX_WINDOW_AHEAD_S from now is forged or from a wrong clock, refused, never kept waiting
    (it could otherwise fill the waiting table with far-future windows)."""
    window = world.certify(0)
    end = window.attestation.window_start + window.attestation.window_seconds
    now = [end - MAX_WINDOW_AHEAD_S - 60.0]
    led = Ledger(world.network, store, clock=lambda: now[0])
    outcome = led.on_certificate(window.to_wire())  # before its record: it would wait
    assert (outcome.result, outcome.reason) == ("refused", "future_window")
    assert list(store.pending(None)) == []
    now[0] = end  # the window has ended
    assert led.on_certificate(window.to_wire()).result == "pending"  # the record is missing
    assert led.on_registry(world.record().to_wire(), world.device) == "applied"
    assert store.head()[0] == 1
