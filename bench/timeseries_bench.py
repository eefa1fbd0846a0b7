"""Time-series export benchmark: the ledger's exporter against a VictoriaMetrics it starts.

    .venv/bin/python bench/timeseries_bench.py [--points 200000] [--batch 5000] [--devices 100]
                                               [--rounds 3]

Starts ``victoria-metrics`` (the Debian package's binary, with the ledger's flags) on a free
loopback port with its data in a temporary directory. Each round writes ``--points`` readings
(3 channels + anomaly_ppm each: 4 samples per point) of ``--devices`` devices, each method on
fresh timestamps, in this order:

1. ``lines``: ``TimeSeriesExporter.export_once`` draining an in-memory outbox of
   line-protocol strings (``reading_line``), ``--batch`` lines per write: the ledger's path,
   cursor bookkeeping and ``asyncio.to_thread`` included;
2. ``list[str]``: influxdb-client's ``WriteApi.write`` (SYNCHRONOUS) given the same lines as a
   list of ``--batch`` strings, no exporter around it;
3. ``Point`` (baseline): one ``influxdb_client.Point`` built per reading and written in lists of
   ``--batch`` points (construction included: that is what the Point path costs).

Also measures ``reading_line`` alone (lines/s: the ledger pays it inside its transaction).
Prints each round and the median points/s of each method, then checks that VictoriaMetrics
holds every sample of one device exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from ledger.timeseries import TimeSeriesExporter, reading_line
from senken_core.reading import Reading
from tests.support.victoria import VictoriaMetrics

PROJECT = "pv-plant-7"
MS: WritePrecision = WritePrecision.MS  # type: ignore[assignment]  # a str constant


class ListSource:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.cursor = 0

    def points_after(self, cursor: int, limit: int) -> tuple[list[str], int]:
        batch = self.lines[cursor:cursor + limit]
        return batch, cursor + len(batch)

    def load_cursor(self) -> int:
        return self.cursor

    def save_cursor(self, cursor: int) -> None:
        self.cursor = cursor


def readings(n: int, devices: int, base_ms: int) -> list[Reading]:
    """``n`` readings round-robin over ``devices`` devices, each device's 1 ms apart."""
    return [Reading(device=f"dev-{i % devices:04d}", seq=i, ts_ms=base_ms + i // devices,
                    kind="elec_meter", frame_counter=i, device_ms=i * 20,
                    values=(("energy_export_wh", 1_000_000 + i), ("power_w", i % 5000),
                            ("voltage_dv", 2300 + i % 7)),
                    model_sha256=b"\x11" * 32, anomaly_ppm=i % 1000, scored_since_seq=0)
            for i in range(n)]


def point(r: Reading) -> Point:
    p = (Point("reading").tag("device", r.device).tag("kind", r.kind).tag("project", PROJECT)
         .time(r.ts_ms, WritePrecision.MS))
    for name, value in r.values:
        p.field(name, value)
    return p.field("anomaly_ppm", r.anomaly_ppm)


def one_round(vm: VictoriaMetrics, n: int, batch: int, devices: int, base_ms: int,
              client: InfluxDBClient) -> dict[str, float]:
    out: dict[str, float] = {}
    span_ms = n // devices + 1
    rs = readings(n, devices, base_ms)
    start = time.perf_counter()
    lines = [reading_line(r, PROJECT, b"") for r in rs]
    out["reading_line/s"] = n / (time.perf_counter() - start)

    exporter = TimeSeriesExporter(ListSource(lines), vm.url, "t", "senken", "readings",
                                  batch_size=batch)

    async def drain() -> int:
        total = 0
        while written := await exporter.export_once():
            total += written
        return total

    start = time.perf_counter()
    assert asyncio.run(drain()) == n
    out["lines"] = n / (time.perf_counter() - start)
    exporter.close()

    write_api = client.write_api(write_options=SYNCHRONOUS)
    lines = [reading_line(r, PROJECT, b"") for r in readings(n, devices, base_ms + span_ms)]
    start = time.perf_counter()
    for i in range(0, n, batch):
        write_api.write("readings", "senken", lines[i:i + batch], MS)
    out["list[str]"] = n / (time.perf_counter() - start)

    rs = readings(n, devices, base_ms + 2 * span_ms)
    start = time.perf_counter()
    for i in range(0, n, batch):
        write_api.write("readings", "senken", [point(r) for r in rs[i:i + batch]],
                        MS)
    out["Point"] = n / (time.perf_counter() - start)
    write_api.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="senken-tsbench-") as tmp:
        vm = VictoriaMetrics(Path(tmp))
        vm.start()
        client = InfluxDBClient(url=vm.url, token="t", org="senken", timeout=30_000)
        try:
            base_ms = int(time.time() * 1000) - 86_400_000
            span_ms = args.points // args.devices + 1
            results = []
            for rnd in range(args.rounds):
                res = one_round(vm, args.points, args.batch, args.devices,
                                base_ms + rnd * 3 * span_ms, client)
                results.append(res)
                print(f"round {rnd + 1}: " + ", ".join(f"{k} {v:,.0f}" for k, v in res.items()))
            print(f"median points/s over {args.rounds} rounds ({args.points:,} points, "
                  f"batches of {args.batch:,}, {args.devices} devices, 4 samples per point):")
            for key in results[0]:
                print(f"  {key:15} {statistics.median(r[key] for r in results):>12,.0f}")
            [series] = vm.export('reading_power_w{device="dev-0000"}')
            expected = args.rounds * 3 * (args.points // args.devices)
            assert len(series["timestamps"]) == len(set(series["timestamps"])) == expected, (
                len(series["timestamps"]), expected)
            print(f"check: dev-0000 has each of its {expected:,} samples once")
        finally:
            client.close()
            vm.stop()


if __name__ == "__main__":
    main()
