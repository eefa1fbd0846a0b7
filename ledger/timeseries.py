"""The ledger's time-series exporter: outbox lines to VictoriaMetrics (or InfluxDB).

The ledger fills an outbox of InfluxDB line-protocol lines in the same transaction that stores
readings and attestations (:func:`reading_line`, :func:`attestation_line`). A
:class:`TimeSeriesExporter` ships them to the store's InfluxDB v2 write endpoint
(``/api/v2/write``), in batches of up to ``batch_size`` lines, and moves the outbox cursor only
after a batch was written::

    PointSource (the ledger's outbox)        TimeSeriesExporter.run                   store
    points_after(cursor, limit) ──────────►  lines ──► influxdb-client WriteApi ──► /api/v2/write
    save_cursor(after)          ◄──────────  only after a 2xx    (SYNCHRONOUS, in a thread)

Delivery is at least once: a batch whose write failed, or whose cursor was not saved, is
written again. That doubles nothing as long as the store keeps one sample per series and
timestamp: InfluxDB overwrites the point; VictoriaMetrics must run with
``-dedup.minScrapeInterval=1ms`` (:data:`VICTORIA_METRICS_FLAGS`), without which it keeps every
copy (measured on VictoriaMetrics 1.79). One consequence either way: two readings of one device
and kind in the same millisecond are one point in the store (the ledger keeps both).

VictoriaMetrics names series ``<measurement>_<field>`` (``reading_power_w``,
``attestation_co2e_mg``) and ignores the bucket; it stores numbers as float64, so integers
above 2**53 are rounded there (not in the ledger, which is the record).

Errors: every failure of the store (refused or reset connection, timeout, HTTP error status)
surfaces as :class:`TimeSeriesUnavailable`, a :class:`~senken_core.errors.SenkenError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Protocol

import urllib3
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from senken_core.attestation import Attestation
from senken_core.errors import SenkenError
from senken_core.reading import Reading

__all__ = [
    "VICTORIA_METRICS_FLAGS",
    "PointSource",
    "TimeSeriesExporter",
    "TimeSeriesUnavailable",
    "attestation_line",
    "reading_line",
]

_log = logging.getLogger(__name__)

# What the exporter relies on from a VictoriaMetrics it writes to (the deployment and the test
# fixture both start it with these): one sample per series and millisecond, so a batch written
# twice counts once; and a retention long enough for readings replayed from a device's backlog
# (the default, one month, silently drops older points).
VICTORIA_METRICS_FLAGS = ("-dedup.minScrapeInterval=1ms", "-retentionPeriod=100y")

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BACKOFF_BASE_S = 0.25
# the client's enum is a class of str constants, annotated as the class
_PRECISION_MS: WritePrecision = WritePrecision.MS  # type: ignore[assignment]

# Line protocol, "Special characters" (InfluxDB v2 reference): in measurements escape commas and
# spaces; in tag keys, tag values and field keys escape commas, equals signs and spaces; two
# backslashes read as one, so a literal backslash is doubled (else a value ending in "\" would
# swallow the separator after it). Newlines cannot be carried at all: written as the two
# characters "\n" (as influxdb-client's Point does), so a line stays one line.
_ESCAPE_TAG = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ ",
                             "\n": "\\n", "\r": "\\r"})


class TimeSeriesUnavailable(SenkenError):
    """The time-series store did not take a write: down, unreachable, slow or refusing.

    ``url`` is the store's address, ``status`` the HTTP status if it answered (else None).
    The points are still in the outbox; the exporter writes them when the store is back.
    """

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"time-series store at {url} unavailable: {reason}; the points stay "
                         "in the outbox and are written when it answers (is VictoriaMetrics "
                         "running, and is the URL right?)")
        self.url = url
        self.reason = reason
        self.status = status


class PointSource(Protocol):
    """The outbox of line-protocol lines, in the order they were committed.

    The exporter calls these from worker threads (``asyncio.to_thread``), one call at a time.
    """

    def points_after(self, cursor: int, limit: int) -> tuple[list[str], int]:
        """Up to ``limit`` lines after ``cursor``, oldest first, and the cursor after them
        (``cursor`` itself when there are none)."""
        ...

    def load_cursor(self) -> int:
        """The cursor saved last (the start of the outbox if none was)."""
        ...

    def save_cursor(self, cursor: int) -> None:
        """Remember that every line up to ``cursor`` is in the store (durably)."""
        ...


def _tag(value: str, name: str) -> str:
    if not value:
        raise ValueError(f"tag {name} is empty: the line protocol has no empty tag values")
    return value.translate(_ESCAPE_TAG)


def _int64(value: int, name: str) -> str:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"field {name}={value} does not fit the line protocol's int64")
    return f"{value}i"


def reading_line(reading: Reading, project: str, attestation_id: bytes) -> str:
    """One line: measurement ``reading``, tags device, kind, project, one integer field per
    channel plus ``anomaly_ppm``, timestamp ``ts_ms`` (write precision ms).

    ``attestation_id`` (the window's attestation) is not written: as a tag it would start a new
    series every window, and VictoriaMetrics turns a string field into a series of zeros.
    Pure and deterministic. Raises ValueError for what no validator accepts (a channel named
    ``anomaly_ppm`` or empty, an empty kind or project, a value outside int64).
    """
    del attestation_id  # see the docstring
    fields = []
    for channel, value in reading.values:
        if not channel or channel == "anomaly_ppm":
            raise ValueError(f"reading {reading.device}/{reading.seq}: channel name "
                             f"{channel!r} cannot be a field")
        fields.append(f"{channel.translate(_ESCAPE_TAG)}={_int64(value, channel)}")
    fields.append(f"anomaly_ppm={_int64(reading.anomaly_ppm, 'anomaly_ppm')}")
    # tags sorted by key, as InfluxDB asks of writers ("sort tags by key" for write performance)
    return (f"reading,device={_tag(reading.device, 'device')},kind={_tag(reading.kind, 'kind')},"
            f"project={_tag(project, 'project')} {','.join(fields)} {reading.ts_ms}")


def attestation_line(att: Attestation, appended_at_ms: int) -> str:
    """One line: measurement ``attestation``, tags device, methodology, project; integer fields
    readings_accepted, readings_rejected, window_start (Unix s), appended_at_ms (when the ledger
    recorded it: its delay after the window is a field too), and the two uint64 quantities
    quantity and co2e_mg as unsigned integers (suffix u); timestamp the window's end in ms.

    Pure and deterministic; :class:`Attestation` has checked every value already.
    """
    end_ms = (att.window_start + att.window_seconds) * 1000
    return (f"attestation,device={_tag(att.device, 'device')},"
            f"methodology={_tag(att.methodology, 'methodology')},"
            f"project={_tag(att.project, 'project')} "
            f"readings_accepted={att.readings_accepted}i,"
            f"readings_rejected={att.readings_rejected}i,"
            f"quantity={att.quantity}u,co2e_mg={att.co2e_mg}u,"
            f"window_start={att.window_start}i,"
            f"appended_at_ms={_int64(appended_at_ms, 'appended_at_ms')} {end_ms}")


class TimeSeriesExporter:
    """Ships a :class:`PointSource` to the store; see the module docstring for the contract.

    ``url``, ``token``, ``org``, ``bucket``: the InfluxDB v2 write API (VictoriaMetrics ignores
    all but ``url``). ``batch_size`` lines per write; after a failure the exporter waits a
    capped exponential backoff with jitter, at most ``retry_max_s``; when the outbox is empty
    it looks again every ``poll_s``. Every request gives up after ``timeout_s``.
    Call :meth:`close` when done.
    """

    def __init__(self, source: PointSource, url: str, token: str, org: str, bucket: str, *,
                 batch_size: int = 5000, retry_max_s: float = 30.0, poll_s: float = 1.0,
                 timeout_s: float = 10.0) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if retry_max_s <= 0 or poll_s <= 0 or timeout_s <= 0:
            raise ValueError("retry_max_s, poll_s and timeout_s must be positive")
        self._source = source
        self._url = url
        self._org = org
        self._bucket = bucket
        self._batch_size = batch_size
        self._retry_max_s = retry_max_s
        self._poll_s = poll_s
        # retries=False: the exporter retries itself, with its own backoff, and moves nothing
        # until the write succeeded; timeout in ms covers connect and read.
        self._client = InfluxDBClient(url=url, token=token, org=org,
                                      timeout=max(1, round(timeout_s * 1000)), retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._lock = asyncio.Lock()  # one batch at a time, whoever calls export_once
        self._cursor: int | None = None
        self._written = 0
        self._lag = 0
        self._last_error: str | None = None
        self._last_success_ms: int | None = None
        self._store_up: bool | None = None

    def close(self) -> None:
        """Release the HTTP connections. Idempotent."""
        self._write_api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]

    def status(self) -> dict[str, object]:
        """``written``: points written since start; ``lag``: points read from the outbox and
        not yet written (at most ``batch_size``: the exporter reads one batch ahead);
        ``last_error``: the last failure's message or None; ``last_success_ms``: Unix ms of the
        last write or None; ``store_up``: whether the last write succeeded (None before one)."""
        return {"written": self._written, "lag": self._lag, "last_error": self._last_error,
                "last_success_ms": self._last_success_ms, "store_up": self._store_up}

    async def export_once(self) -> int:
        """Write the next batch, if any, and only then move the cursor past it.

        Returns the number of points written (0: the outbox was empty). Raises
        :class:`TimeSeriesUnavailable` when the store did not take the batch (the cursor stays);
        errors of the source propagate as they are. Safe to call again after any failure:
        the same lines are written again, which the store deduplicates.
        """
        async with self._lock:
            if self._cursor is None:
                self._cursor = await asyncio.to_thread(self._source.load_cursor)
            lines, after = await asyncio.to_thread(self._source.points_after, self._cursor,
                                                   self._batch_size)
            self._lag = len(lines)
            if not lines:
                return 0
            try:
                await asyncio.to_thread(self._write, lines)
            except TimeSeriesUnavailable as exc:
                self._store_up = False
                self._last_error = str(exc)
                raise
            self._store_up = True
            self._last_success_ms = int(time.time() * 1000)
            self._written += len(lines)
            self._lag = 0
            await asyncio.to_thread(self._source.save_cursor, after)
            self._cursor = after
            return len(lines)

    async def run(self, stop: asyncio.Event) -> None:
        """Export until ``stop`` is set. Never raises because the store (or the outbox) fails:
        it logs, waits a capped exponential backoff with jitter and tries again."""
        failures = 0
        while not stop.is_set():
            try:
                written = await self.export_once()
            except TimeSeriesUnavailable as exc:
                failures += 1
                if failures == 1:
                    _log.warning("%s", exc)
                else:
                    _log.debug("time-series store still down (attempt %d): %s", failures, exc)
                delay = self._backoff_s(failures)
            except Exception as exc:  # the outbox failed: one bad moment never ends the loop
                failures += 1
                self._last_error = f"outbox: {exc!r}"
                _log.exception("time-series export: reading or saving the outbox failed")
                delay = self._backoff_s(failures)
            else:
                if failures and self._store_up:
                    _log.info("time-series store at %s answers again", self._url)
                failures = 0
                if written >= self._batch_size:
                    continue  # more is waiting: no pause
                delay = self._poll_s
            await _wait(stop, delay)

    def _backoff_s(self, failures: int) -> float:
        # "equal jitter": half the capped exponential delay, plus up to as much again at random,
        # so exporters that lost the store together do not all come back in the same instant
        cap = min(self._retry_max_s, _BACKOFF_BASE_S * 2.0 ** min(failures - 1, 30))
        return cap / 2 + random.uniform(0, cap / 2)

    def _write(self, lines: Sequence[str]) -> None:
        """The blocking write (run in a thread); library errors mapped here, nowhere else."""
        body = "\n".join(lines).encode()
        try:
            self._write_api.write(bucket=self._bucket, org=self._org, record=body,
                                  write_precision=_PRECISION_MS)
        except InfluxDBError as exc:  # ApiException: the store answered with an error status
            status = getattr(exc, "status", None)
            raise TimeSeriesUnavailable(self._url, f"HTTP {status}: {exc.message}",
                                        status if isinstance(status, int) else None) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # refused, reset, timed out
            raise TimeSeriesUnavailable(self._url, f"{type(exc).__name__}: {exc}") from exc


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` unless ``stop`` is set first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
