"""The log as the time-series exporter's point source: whole entries, a durable cursor."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.points import LedgerPointSource
from ledger.service import Ledger
from ledger.store import LedgerStore
from senken_core.attestation import Attestation
from senken_core.reading import Reading
from tests.unit.test_ledger_support import DEVICE, PROJECT, World


def fake_reading_line(reading: Reading, project: str, attestation_id: bytes) -> str:
    return f"r {project} {reading.device} {reading.seq} {attestation_id.hex()[:8]}"


def fake_attestation_line(att: Attestation, appended_at_ms: int) -> str:
    return f"a {att.device} {att.window_start}"


@pytest.fixture
def store(tmp_path: Path) -> LedgerStore:
    world = World()
    s = LedgerStore.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = Ledger(world.network, s)
    ledger.on_registry(world.record().to_wire())
    for hour in range(3):
        ledger.on_certificate(world.certify(hour).to_wire())
    yield s  # type: ignore[misc]
    s.close()


def test_points_come_in_whole_entries_after_the_cursor(store: LedgerStore) -> None:
    source = LedgerPointSource(store, reading_line=fake_reading_line,
                               attestation_line=fake_attestation_line)
    assert source.load_cursor() == 0
    lines, cursor = source.points_after(0, 10)  # one entry is 7 lines: the second won't fit
    assert cursor == 1 and len(lines) == 7
    assert lines[0].startswith(f"r {PROJECT} {DEVICE} 0 ") and lines[-1].startswith("a ")
    lines, cursor = source.points_after(1, 3)  # at least one whole entry, whatever the limit
    assert cursor == 2 and len(lines) == 7 and lines[0].split()[3] == "6"
    lines, cursor = source.points_after(1, 5000)
    assert cursor == 3 and len(lines) == 14
    assert source.points_after(3, 5000) == ([], 3)
    source.save_cursor(3)
    assert LedgerPointSource(store).load_cursor() == 3  # durable, in the ledger database


def test_the_real_line_builders_make_influx_lines(store: LedgerStore) -> None:
    lines, cursor = LedgerPointSource(store).points_after(0, 100)
    assert cursor == 3 and len(lines) == 21
    assert lines[0].startswith("reading,") and f"device={DEVICE}" in lines[0]
    assert lines[6].startswith("attestation,")
