"""Anomaly-model benchmark: scoring time per reading, one at a time and in batches of 256.

    .venv/bin/python bench/model_bench.py [--readings 3000] [--reps 3] [--nab]

Measured in the same run, for comparison:
* baseline A: the same window computation in plain numpy (float64, sliding_window_view), one
  window at a time: what the graph would cost without TFLite;
* baseline B: sha256 of a 120-byte message (about one encoded reading), the floor of any
  per-reading work the agent already does.
Readings are 3-channel elec_meter readings (cumulative energy register, power, voltage): one
``ReadingScorer.score`` call scores all three channels with one TFLite invoke.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from senken_core.anomaly import AnomalyModel, ReadingScorer
from senken_core.sensors import sensor_kind


def _rows(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    energy = np.cumsum(rng.integers(900, 1100, n)) + 10**12
    power = np.round(250_000 + rng.normal(0, 2_000, n)).astype(np.int64)
    volt = np.round(2_300 + rng.normal(0, 5, n)).astype(np.int64)
    return [[int(e), int(p), int(v)] for e, p, v in zip(energy, power, volt, strict=True)]


def _numpy_window_score(window: np.ndarray, query: int) -> float:
    ref = window[: len(window) - query]
    cand = np.lib.stride_tricks.sliding_window_view(window[: len(window) - query], query)
    a = float(np.sqrt(((cand - window[-query:]) ** 2).sum(axis=1).min() / query))
    s = float(ref.std())
    return a / (a + s + 1e-30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3, help="runs per measure; the best is shown")
    ap.add_argument("--nab", action="store_true", help="also run the NAB evaluation (~5 s)")
    args = ap.parse_args()

    model = AnomalyModel.load()
    kind = sensor_kind("elec_meter")
    n = max(args.readings, 2 * model.window)
    rows = _rows(n)
    warm = model.window + model.params.warmup + 10

    body = rows[warm:]

    def one_at_a_time() -> float:
        scorer = ReadingScorer(model, kind.channels)
        scorer.score(rows[:warm])  # warm-up: afterwards every call runs the graph
        t0 = time.perf_counter()
        for r in body:
            scorer.score([r])
        return (time.perf_counter() - t0) / len(body) * 1e6

    def batched() -> float:
        scorer = ReadingScorer(model, kind.channels)
        scorer.score(rows[:warm])
        t0 = time.perf_counter()
        for i in range(0, len(body), 256):
            scorer.score(body[i : i + 256])
        return (time.perf_counter() - t0) / len(body) * 1e6

    # baseline A: plain numpy, same windows, one channel-window at a time (x3 channels)
    series = np.array([r[1] for r in rows], dtype=np.float64)

    def numpy_baseline(m: int = 300) -> float:
        t0 = time.perf_counter()
        for i in range(model.window, model.window + m):
            w = series[i - model.window : i]
            for _ in range(3):
                _numpy_window_score(w - w[-1], model.params.query)
        return (time.perf_counter() - t0) / m * 1e6

    # best of `reps` runs of each (the machine may be shared)
    single_us = min(one_at_a_time() for _ in range(args.reps))
    batch_us = min(batched() for _ in range(args.reps))
    numpy_us = min(numpy_baseline() for _ in range(args.reps))

    # baseline B: sha256 of a reading-sized message
    msg = b"x" * 120

    def sha_baseline(k: int = 20000) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            hashlib.sha256(msg).digest()
        return (time.perf_counter() - t0) / k * 1e6

    sha_us = min(sha_baseline() for _ in range(args.reps))

    print(f"model: {model.path} ({model.size} bytes, sha256 {model.sha256.hex()[:16]}...)")
    print(f"window {model.window}, query {model.params.query}, 3 channels per reading")
    print(f"one reading per call:       {single_us:8.1f} us/reading")
    print(f"256 readings per call:      {batch_us:8.1f} us/reading")
    print(
        f"baseline numpy, 1 at a time:{numpy_us:8.1f} us/reading  (single/numpy = "
        f"{single_us / numpy_us:.2f}, batched/numpy = {batch_us / numpy_us:.3f})"
    )
    print(
        f"baseline sha256(120 B):     {sha_us:8.2f} us         (batched/sha256 = "
        f"{batch_us / sha_us:.1f})"
    )
    if args.nab:
        from edge_agent.model.nab import evaluate_model

        t0 = time.perf_counter()
        res = evaluate_model(ROOT / "data" / "nab")
        print(
            f"NAB standard score (data/nab subset): {res['score_optimised_threshold']} "
            f"(at model threshold: {res['score_at_model_threshold']}; "
            f"{time.perf_counter() - t0:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
