"""The ledger's time-series exporter against a real VictoriaMetrics.

What an operator would notice: readings and attestations show up in VictoriaMetrics with their
values and timestamps; when VictoriaMetrics goes away and comes back, not one point is lost or
counted twice, the exporter says the store is down meanwhile, and its loop never dies.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ledger.timeseries import (
    TimeSeriesExporter,
    TimeSeriesUnavailable,
    attestation_line,
    reading_line,
)
from senken_core.attestation import Attestation
from senken_core.reading import Reading
from tests.support.victoria import VictoriaMetrics, victoria

pytestmark = pytest.mark.integration
victoria = victoria  # the fixture (tests.support.victoria)

ATT_ID = b"\xaa" * 32
DEVICES = ("pv-7-meter-1", "pv-7-meter-2", "pv-7-meter-3")


class ListSource:
    """An outbox in memory: the lines in commit order, and the saved cursor (an index)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.cursor = 0
        self.saved: list[int] = []  # every cursor saved, in order
        self.reads = 0
        self._lock = threading.Lock()

    def add(self, lines: list[str]) -> None:
        with self._lock:
            self.lines.extend(lines)

    def points_after(self, cursor: int, limit: int) -> tuple[list[str], int]:
        with self._lock:
            self.reads += 1
            batch = self.lines[cursor:cursor + limit]
        return batch, cursor + len(batch)

    def load_cursor(self) -> int:
        return self.cursor

    def save_cursor(self, cursor: int) -> None:
        self.cursor = cursor
        self.saved.append(cursor)


def reading(device: str, seq: int, ts_ms: int) -> Reading:
    return Reading(device=device, seq=seq, ts_ms=ts_ms, kind="elec_meter", frame_counter=seq,
                   device_ms=seq * 20,
                   values=(("energy_export_wh", 1000 + seq), ("power_w", seq * 7 - 50),
                           ("voltage_dv", 2300)),
                   model_sha256=b"\x11" * 32, anomaly_ppm=seq % 1000, scored_since_seq=0)


def reading_lines(start: int, count: int, base_ms: int) -> list[str]:
    """``count`` readings numbered from ``start``, round-robin over DEVICES, 1 ms apart."""
    return [reading_line(reading(DEVICES[i % 3], i, base_ms + i), "pv-plant-7", ATT_ID)
            for i in range(start, start + count)]


@contextmanager
def exporter(source: ListSource, url: str, **options: Any) -> Iterator[TimeSeriesExporter]:
    exp = TimeSeriesExporter(source, url, "token", "senken", "readings", **options)
    try:
        yield exp
    finally:
        exp.close()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """``wait_until`` for a test running an event loop (the exporter runs on it meanwhile)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


def test_lines_appear_with_their_values_and_timestamps(victoria: VictoriaMetrics) -> None:
    base_ms = int(time.time() * 1000) - 3_600_000
    source = ListSource()
    source.add(reading_lines(0, 30, base_ms))
    att = Attestation(project="pv-plant-7", device="pv-7-meter-1", window_start=1_795_003_200,
                      window_seconds=3600, methodology="CDM AMS-I.D", methodology_version=1,
                      readings_accepted=3598, readings_rejected=2, quantity=1_250_000,
                      co2e_mg=812_500, readings_root=bytes(32), model_hash=b"\x11" * 32)
    source.add([attestation_line(att, appended_at_ms=1_795_006_812_345)])

    with exporter(source, victoria.url) as exp:
        assert asyncio.run(exp.export_once()) == 31
        assert asyncio.run(exp.export_once()) == 0  # nothing left
        status = exp.status()
    assert source.saved == [31]
    assert status["written"] == 31 and status["lag"] == 0 and status["store_up"] is True
    assert status["last_error"] is None and isinstance(status["last_success_ms"], int)

    power = victoria.samples('reading_power_w{device="pv-7-meter-2"}')
    labels = (("__name__", "reading_power_w"), ("device", "pv-7-meter-2"),
              ("kind", "elec_meter"), ("project", "pv-plant-7"))
    assert power == {labels: [(base_ms + i, i * 7 - 50) for i in range(1, 30, 3)]}
    names = {s["metric"]["__name__"] for s in victoria.export('{__name__=~"reading_.*"}')}
    assert names == {"reading_energy_export_wh", "reading_power_w", "reading_voltage_dv",
                     "reading_anomaly_ppm"}

    [co2e] = victoria.export("attestation_co2e_mg")
    assert co2e["metric"] == {"__name__": "attestation_co2e_mg", "device": "pv-7-meter-1",
                              "methodology": "CDM AMS-I.D", "project": "pv-plant-7"}
    assert (co2e["timestamps"], co2e["values"]) == ([1_795_006_800_000], [812_500])
    [accepted] = victoria.export("attestation_readings_accepted")
    assert accepted["values"] == [3598]


def test_an_outage_loses_nothing_and_doubles_nothing(victoria: VictoriaMetrics) -> None:
    base_ms = int(time.time() * 1000) - 3_600_000
    source = ListSource()

    async def scenario(exp: TimeSeriesExporter) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(exp.run(stop))
        source.add(reading_lines(0, 200, base_ms))
        await until(lambda: exp.status()["written"] == 200, 10, "the first 200 points")
        assert exp.status()["store_up"] is True

        await asyncio.to_thread(victoria.stop)
        source.add(reading_lines(200, 150, base_ms))
        await until(lambda: exp.status()["store_up"] is False, 10, "the exporter to notice")
        source.add(reading_lines(350, 150, base_ms))  # points keep arriving while it is down
        await until(lambda: exp.status()["lag"] == 50, 10, "the lag to show a full batch")
        reads = source.reads
        await until(lambda: source.reads >= reads + 3 or task.done(), 10, "three more retries")
        assert not task.done(), "the loop must not end while the store is down"
        assert "unavailable" in str(exp.status()["last_error"])
        assert source.cursor == 200 and source.saved[-1] == 200, "cursor moved on a failure"
        assert exp.status()["written"] == 200

        await asyncio.to_thread(victoria.start)
        source.add(reading_lines(500, 100, base_ms))
        await until(lambda: exp.status()["written"] == 600, 15, "the backlog to drain")
        status = exp.status()
        assert status["store_up"] is True and status["lag"] == 0
        stop.set()
        await asyncio.wait_for(task, 5)

    with exporter(source, victoria.url, batch_size=50, retry_max_s=0.2, poll_s=0.02) as exp:
        asyncio.run(scenario(exp))
    assert source.cursor == 600
    assert all(b - a <= 50 for a, b in zip([0, *source.saved], source.saved, strict=False))

    series = victoria.export('{__name__=~"reading_.*"}')
    assert len(series) == 4 * len(DEVICES)
    for s in series:  # each point exactly once, at its own timestamp
        i0 = DEVICES.index(s["metric"]["device"])
        assert s["timestamps"] == [base_ms + i for i in range(i0, 600, 3)], s["metric"]


def test_a_batch_written_twice_counts_once(victoria: VictoriaMetrics) -> None:
    """At least once is enough: the cursor was not saved (a crash right after the write), so
    the same batch goes again, and VictoriaMetrics (with the ledger's flags) keeps one copy."""
    base_ms = int(time.time() * 1000) - 3_600_000
    source = ListSource()
    source.add(reading_lines(0, 90, base_ms))
    with exporter(source, victoria.url) as exp:
        assert asyncio.run(exp.export_once()) == 90
    source.cursor = 0  # the save never happened
    with exporter(source, victoria.url) as exp:
        assert asyncio.run(exp.export_once()) == 90
    series = victoria.export("reading_anomaly_ppm")
    assert sorted(len(s["timestamps"]) for s in series) == [30, 30, 30]


def test_export_once_fails_cleanly_and_keeps_the_cursor(victoria: VictoriaMetrics) -> None:
    source = ListSource()
    source.add(reading_lines(0, 10, int(time.time() * 1000)))
    victoria.stop()
    with exporter(source, victoria.url, timeout_s=2) as exp:
        with pytest.raises(TimeSeriesUnavailable) as down:
            asyncio.run(exp.export_once())
        status = exp.status()
    assert down.value.url == victoria.url and down.value.status is None
    assert "is VictoriaMetrics running" in str(down.value)
    assert source.saved == [] and source.cursor == 0
    assert status["store_up"] is False and status["lag"] == 10 and status["written"] == 0
    assert status["last_error"] == str(down.value)

    victoria.start()
    with (exporter(source, victoria.url + "/no/such/prefix") as exp,  # answers 400
          pytest.raises(TimeSeriesUnavailable) as refused):
        asyncio.run(exp.export_once())
    assert refused.value.status == 400 and source.saved == []


def test_a_store_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        source = ListSource()
        source.add(["reading,device=d-1 v=1i 1"])
        with exporter(source, url, timeout_s=0.3) as exp:
            started = time.monotonic()
            with pytest.raises(TimeSeriesUnavailable, match="unavailable"):
                asyncio.run(exp.export_once())
    assert time.monotonic() - started < 5
    assert source.saved == []


class FlakySource(ListSource):
    """An outbox whose database fails now and then."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def points_after(self, cursor: int, limit: int) -> tuple[list[str], int]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database is locked")
        return super().points_after(cursor, limit)


def test_an_outbox_failure_never_ends_the_loop(victoria: VictoriaMetrics) -> None:
    source = FlakySource(failures=3)
    source.add(reading_lines(0, 12, int(time.time() * 1000) - 60_000))

    async def scenario(exp: TimeSeriesExporter) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(exp.run(stop))
        await until(lambda: exp.status()["written"] == 12, 10, "the points after the failures")
        assert "database is locked" in str(exp.status()["last_error"])
        stop.set()
        await asyncio.wait_for(task, 5)

    with exporter(source, victoria.url, retry_max_s=0.1, poll_s=0.02) as exp:
        asyncio.run(scenario(exp))
    assert source.cursor == 12
