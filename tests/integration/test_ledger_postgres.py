"""The ledger on a real PostgreSQL (a fresh database per test): one chain under concurrent
appenders, idempotence, tampering found, certificates kept across a restart."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from ledger.service import Ledger
from ledger.store import LedgerStore
from tests.support.postgres import fresh_database
from tests.unit.test_ledger_support import World

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database("ledger") as url:
        yield url


def _dsn(url: str) -> str:
    u = make_url(url)
    return f"host={u.host} port={u.port} user={u.username} dbname={u.database}"


def test_concurrent_appenders_keep_one_chain(pg_url: str) -> None:
    """Two ledgers (two engines, as two processes would have) append the same windows at
    once, in different orders, plus windows of their own: every window is logged once, at
    consecutive indices, and the chain verifies."""
    world = World()
    shared = [world.certify(h).to_wire() for h in range(12)]
    own = [[world.certify(h).to_wire() for h in range(12 + 6 * i, 18 + 6 * i)]
           for i in range(2)]
    stores = [LedgerStore.open(pg_url) for _ in range(2)]
    ledgers = [Ledger(world.network, s) for s in stores]
    for ledger in ledgers:
        ledger.on_registry(world.record().to_wire())
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        payloads = shared + own[i]
        random.Random(i).shuffle(payloads)
        barrier.wait()
        try:
            for payload in payloads:
                ledgers[i].on_certificate(payload)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    appended = sum(led.certificates["appended"] for led in ledgers)
    duplicates = sum(led.certificates["duplicate"] for led in ledgers)
    assert (appended, duplicates) == (24, 12)
    report = stores[0].verify_log()
    assert report.ok and report.entries == 24, report
    with psycopg.connect(_dsn(pg_url)) as conn:
        indices = [r[0] for r in conn.execute('SELECT "index" FROM ledger_log ORDER BY 1')]
        assert indices == list(range(24))
        assert conn.execute("SELECT count(*) FROM ledger_reading").fetchone()[0] == 24 * 6
    for s in stores:
        s.close()


def test_idempotence_and_tampering_on_postgres(pg_url: str) -> None:
    world = World()
    store = LedgerStore.open(pg_url)
    ledger = Ledger(world.network, store)
    ledger.on_registry(world.record().to_wire())
    window = world.certify(0)
    assert ledger.on_certificate(window.to_wire()).result == "appended"
    assert ledger.on_certificate(window.to_wire()).result == "duplicate"
    for hour in range(1, 4):
        ledger.on_certificate(world.certify(hour).to_wire())
    assert store.verify_log().ok and store.head()[0] == 4
    with psycopg.connect(_dsn(pg_url), autocommit=True) as conn:
        conn.execute("UPDATE ledger_reading SET body = body || '\\x00'::bytea "
                     "WHERE device = %s AND seq = 20", (world.device,))
    report = store.verify_log()
    assert (report.first_bad_index, report.reason) == (
        3, "the reading rows differ from the evidence")
    store.close()


def test_pending_certificates_survive_a_restart(pg_url: str) -> None:
    world = World()
    store = LedgerStore.open(pg_url)
    assert Ledger(world.network, store).on_certificate(world.certify(0).to_wire()).result \
        == "pending"
    store.close()
    store = LedgerStore.open(pg_url)
    ledger = Ledger(world.network, store)
    ledger.start()
    assert store.pending_count() == 1
    assert ledger.on_registry(world.record().to_wire()) == "applied"
    assert store.head()[0] == 1 and store.pending_count() == 0
    store.close()
