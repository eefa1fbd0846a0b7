"""The gateway's store on PostgreSQL (a fresh database per test): the enrollment flow, one-time
tokens under concurrent requests, and the unpublished flag the publisher relies on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.client import approve_enrollments, revoke_device
from gateway.store import GatewayStore, make_engine
from tests.support.gateway import Harness, postgres_database, service_harness

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]
PROJECT = "pv-plant-7"


@pytest.fixture
def database_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def h(database_url: str) -> Iterator[Harness]:
    with service_harness(database_url) as harness:
        yield harness


def test_enrollment_flow_on_postgresql(h: Harness, database_url: str) -> None:
    owner, api_token = h.register()
    tokens = h.tokens(PROJECT, api_token, count=3)
    enrollments = {f"meter-{i}": h.enroll(t, f"meter-{i}")[1] for i, t in enumerate(tokens)}
    pending = h.client(api_token).enrollments(PROJECT)
    assert sorted(e.device for e, _status in pending) == ["meter-0", "meter-1", "meter-2"]
    records, _answer = approve_enrollments(h.client(api_token), PROJECT, owner,
                                           lambda e: e.device != "meter-2")
    assert sorted(r.device for r in records) == ["meter-0", "meter-1"]
    assert [h.poll(e)["status"] for e in enrollments.values()] == [
        "approved", "approved", "pending"]
    assert {"meter-0", "meter-1"} <= set(h.broker.users) and "meter-2" not in h.broker.users
    revoke_device(h.client(), "meter-0", owner, lambda p: api_token)
    assert "meter-0" not in h.broker.users

    # a second gateway process on the same database sees the same state
    store = GatewayStore(make_engine(database_url), h.clock)
    try:
        store.create_tables()  # idempotent
        latest = store.latest_record("meter-0")
        assert latest is not None and (latest.version, latest.revoked) == (2, True)
        unpublished = store.unpublished()
        assert [(r.device, r.version) for r in unpublished] == [("meter-1", 1), ("meter-0", 2)]
        store.mark_published("meter-0", 2)
        assert [r.device for r in store.unpublished()] == ["meter-1"]
    finally:
        store.engine.dispose()


def test_a_token_enrolls_one_device_however_many_try_at_once(h: Harness) -> None:
    _owner, api_token = h.register()
    token = h.tokens(PROJECT, api_token)[0]
    start = threading.Barrier(8)

    def attempt(i: int) -> int:
        start.wait(timeout=10)
        return int(h.http.post("/v1/enrollments", json={
            "token": token, "device": f"racer-{i}", "public_key": f"{i:02x}" * 32,
            "kind": "soil_co2"}).status_code)

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(attempt, range(8)))
    assert sorted(codes) == [201] + [409] * 7, codes
    assert len(h.client(api_token).enrollments(PROJECT)) == 1


def test_one_device_id_is_enrolled_once_however_many_try_at_once(h: Harness) -> None:
    _owner, api_token = h.register()
    tokens = h.tokens(PROJECT, api_token, count=6)
    start = threading.Barrier(6)

    def attempt(token: str) -> int:
        start.wait(timeout=10)
        return int(h.http.post("/v1/enrollments", json={
            "token": token, "device": "contested", "public_key": "ab" * 32,
            "kind": "soil_co2"}).status_code)

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(attempt, tokens))
    assert sorted(codes) == [201] + [409] * 5, codes
    # the losers' tokens were not used up
    winners = [t for t in tokens if h.http.post("/v1/enrollments", json={
        "token": t, "device": f"other-{t[-6:].lower().replace('_', '-')}x",
        "public_key": "cd" * 32, "kind": "soil_co2"}).status_code == 201]
    assert len(winners) == 5
