"""NAB (Numenta Anomaly Benchmark) data loading, runner and a faithful reimplementation of its
scorer, standard profile.

Scoring rules (as in numenta/NAB ``nab/sweeper.py``, reimplemented, not copied):

* the first ``min(floor(0.15 * n), 0.15 * 5000)`` rows of each file are probationary: ignored;
* a window (labelled from ``combined_windows.json``; rows whose timestamp is within
  ``[start, end]``) scores its earliest detection ``i`` as
  ``scaled_sigmoid(-(right - i + 1) / width) * tp_weight / scaled_sigmoid(-1)``, later detections
  in the same window add nothing, and a window without detection scores ``-fn_weight``;
* a detection outside every window scores ``fp_weight * scaled_sigmoid(|prev_right - i| /
  (prev_width - 1))`` if a window precedes it in the file, else ``-fp_weight``;
* one threshold is optimised over all files at once by sweeping the sorted scores (a row is a
  detection when its score is ``>=`` the threshold);
* normalised score ``100 * (S - S_null) / (S_perfect - S_null)``, where the null detector detects
  nothing (every window ``-fn_weight``) and the perfect one scores ``tp_weight`` per window.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

__all__ = [
    "STANDARD",
    "CostProfile",
    "NabDataError",
    "NabSeries",
    "SeriesScore",
    "find_series",
    "load_series",
    "load_windows",
    "normalised_score",
    "optimise_threshold",
    "probationary_length",
    "random_detector",
    "scaled_sigmoid",
    "score_corpus",
    "windowed_gaussian_detector",
]

PROBATION_PERCENT = 0.15


class NabDataError(Exception):
    """NAB input that cannot be read: the message names the file (and line)."""


@dataclass(frozen=True)
class CostProfile:
    tp_weight: float = 1.0
    fn_weight: float = 1.0
    fp_weight: float = 0.11


STANDARD = CostProfile()


def scaled_sigmoid(x: float) -> float:
    """NAB's scaled sigmoid: ``2 / (1 + exp(5x)) - 1``, and ``-1`` from 3 on (as NAB: ``>= 3``)."""
    if x >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def probationary_length(n_rows: int) -> float:
    return min(math.floor(PROBATION_PERCENT * n_rows), PROBATION_PERCENT * 5000)


@dataclass
class NabSeries:
    """One NAB file: ``name`` is its path relative to the data dir (``category/file.csv``)."""

    name: str
    timestamps: list[datetime]
    values: np.ndarray  # float64
    windows: list[tuple[int, int]] = field(default_factory=list)  # inclusive row indices
    raw: list[str] = field(default_factory=list)  # value column as written in the file

    @property
    def labels(self) -> np.ndarray:
        lab = np.zeros(len(self.values), dtype=np.int8)
        for a, b in self.windows:
            lab[a : b + 1] = 1
        return lab


def _parse_ts(text: object) -> datetime:
    """A NAB timestamp; raises ValueError for anything else (JSON may hold any type)."""
    if not isinstance(text, str):
        raise ValueError(f"timestamp {text!r} is not text")
    return datetime.fromisoformat(text.strip())


def load_series(path: Path, name: str) -> tuple[list[datetime], np.ndarray, list[str]]:
    """Read a ``timestamp,value`` CSV; returns timestamps, float values and the raw value text."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise NabDataError(f"{path}: cannot open: {exc.strerror}") from None
    timestamps: list[datetime] = []
    raw: list[str] = []
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise NabDataError(f"{path}: empty file (expected header timestamp,value)") from None
        if [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            raise NabDataError(f"{path}:1: header is {header!r}, expected timestamp,value")
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) < 2:
                raise NabDataError(f"{path}:{line}: expected 2 columns, got {len(row)}")
            try:
                ts = _parse_ts(row[0])
            except ValueError:
                raise NabDataError(f"{path}:{line}: bad timestamp {row[0]!r}") from None
            try:
                v = float(row[1])
            except ValueError:
                raise NabDataError(f"{path}:{line}: bad value {row[1]!r}") from None
            if not math.isfinite(v):
                raise NabDataError(f"{path}:{line}: value {row[1]!r} is not finite")
            timestamps.append(ts)
            raw.append(row[1].strip())
    if not timestamps:
        raise NabDataError(f"{path}: no data rows")
    return timestamps, np.array([float(r) for r in raw], dtype=np.float64), raw


def load_windows(path: Path) -> dict[str, list[tuple[datetime, datetime]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise NabDataError(f"{path}: cannot read windows file: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise NabDataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise NabDataError(f"{path}: expected an object mapping file names to windows")
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    for key, wins in data.items():
        try:
            out[key] = [(_parse_ts(a), _parse_ts(b)) for a, b in wins]
        except (ValueError, TypeError):
            raise NabDataError(
                f"{path}: bad window list for {key!r}: expected [[start, end], ...] timestamps"
            ) from None
    return out


def windows_to_rows(
    timestamps: Sequence[datetime], windows: Sequence[tuple[datetime, datetime]]
) -> list[tuple[int, int]]:
    """Rows whose timestamp lies within ``[start, end]``, as inclusive index pairs."""
    ts = np.array(timestamps, dtype="datetime64[us]")
    rows: list[tuple[int, int]] = []
    for start, end in windows:
        idx = np.nonzero((ts >= np.datetime64(start, "us")) & (ts <= np.datetime64(end, "us")))[0]
        if len(idx):
            rows.append((int(idx[0]), int(idx[-1])))
    return rows


def find_series(
    data_dir: Path, windows: dict[str, list[tuple[datetime, datetime]]] | None = None
) -> Iterator[NabSeries]:
    """Every ``*.csv`` under ``data_dir`` (sorted), with its windows as row indices."""
    if not data_dir.is_dir():
        raise NabDataError(f"{data_dir}: not a directory")
    for path in sorted(data_dir.rglob("*.csv")):
        name = path.relative_to(data_dir).as_posix()
        timestamps, values, raw = load_series(path, name)
        rows = windows_to_rows(timestamps, windows.get(name, [])) if windows else []
        yield NabSeries(name, timestamps, values, rows, raw)


# ---------------------------------------------------------------------------------- scoring


@dataclass
class _Prepared:
    """Per-file sweep data: sweep score of each row and its window id (-1 outside, -2 probation)."""

    sweep: np.ndarray
    window_id: np.ndarray
    n_windows: int


def _prepare(n: int, windows: Sequence[tuple[int, int]], profile: CostProfile) -> _Prepared:
    sweep = np.empty(n, dtype=np.float64)
    wid = np.full(n, -1, dtype=np.int64)
    max_tp = scaled_sigmoid(-1.0)
    prev_right: int | None = None
    prev_width = 0.0
    cur = 0
    wins = sorted(windows)
    i = 0
    while i < n:
        if cur < len(wins) and i == wins[cur][0]:
            left, right = wins[cur]
            width = float(right - left + 1)
            for j in range(left, right + 1):
                sweep[j] = scaled_sigmoid(-(right - j + 1) / width) * profile.tp_weight / max_tp
                wid[j] = cur
            prev_right, prev_width = right, width
            cur += 1
            i = right + 1
            continue
        if prev_right is None:
            pos = 3.0
        else:
            pos = abs(prev_right - i) / (prev_width - 1) if prev_width > 1 else 3.0
        sweep[i] = scaled_sigmoid(pos) * profile.fp_weight
        i += 1
    prob = math.ceil(probationary_length(n))  # rows i < probationary length
    wid[:prob] = -2
    return _Prepared(sweep, wid, len(wins))


def _events(
    scores: np.ndarray, prep: _Prepared, profile: CostProfile
) -> tuple[list[float], list[float], float]:
    """Threshold events (score level, score delta) for one file, and its score with no detection."""
    thr: list[float] = []
    delta: list[float] = []
    fp = prep.window_id == -1
    thr.extend(scores[fp].tolist())
    delta.extend(prep.sweep[fp].tolist())
    live = set(prep.window_id[prep.window_id >= 0].tolist())
    base = -profile.fn_weight * len(live)
    for w in sorted(live):
        idx = np.nonzero(prep.window_id == w)[0]
        s = scores[idx]
        # records: rows whose score beats every earlier row of the window
        prefix = np.maximum.accumulate(s)
        is_rec = np.ones(len(s), dtype=bool)
        is_rec[1:] = s[1:] > prefix[:-1]
        rec = np.nonzero(is_rec)[0]
        prev_val = -profile.fn_weight
        for r in rec[::-1]:  # highest score (rightmost record) first
            val = float(prep.sweep[idx[r]])
            thr.append(float(s[r]))
            delta.append(val - prev_val)
            prev_val = val
    return thr, delta, base


@dataclass(frozen=True)
class SeriesScore:
    name: str
    score: float
    tp: int
    fp: int
    fn: int
    windows: int


@dataclass(frozen=True)
class CorpusResult:
    threshold: float
    raw: float
    null: float
    perfect: float
    per_file: tuple[SeriesScore, ...]

    @property
    def normalised(self) -> float:
        return normalised_score(self.raw, self.null, self.perfect)


def normalised_score(raw: float, null: float, perfect: float) -> float:
    return 100.0 * (raw - null) / (perfect - null)


def optimise_threshold(
    items: Sequence[tuple[np.ndarray, Sequence[tuple[int, int]]]], profile: CostProfile = STANDARD
) -> tuple[float, float]:
    """The threshold maximising the summed raw score over all files, and that score.

    Ties go to the highest threshold (the first maximum met when sweeping down, as NAB).
    """
    thr: list[float] = []
    delta: list[float] = []
    base = 0.0
    for scores, windows in items:
        prep = _prepare(len(scores), windows, profile)
        t, d, b = _events(np.asarray(scores, dtype=np.float64), prep, profile)
        thr.extend(t)
        delta.extend(d)
        base += b
    if not thr:
        return 1.1, base
    t_arr = np.array(thr)
    d_arr = np.array(delta)
    order = np.argsort(-t_arr, kind="stable")
    t_arr, d_arr = t_arr[order], d_arr[order]
    cum = base + np.cumsum(d_arr)
    # the score at threshold t counts every event with level >= t: last event of each level
    last = np.ones(len(t_arr), dtype=bool)
    last[:-1] = t_arr[1:] != t_arr[:-1]
    levels, vals = t_arr[last], cum[last]
    best = int(np.argmax(vals))
    if vals[best] <= base:
        return 1.1, base
    return float(levels[best]), float(vals[best])


def score_file(
    name: str,
    scores: np.ndarray,
    windows: Sequence[tuple[int, int]],
    threshold: float,
    profile: CostProfile = STANDARD,
) -> SeriesScore:
    prep = _prepare(len(scores), windows, profile)
    det = np.asarray(scores) >= threshold
    fp_mask = det & (prep.window_id == -1)
    total = float(prep.sweep[fp_mask].sum())
    tp = fn = 0
    live = sorted(set(prep.window_id[prep.window_id >= 0].tolist()))
    for w in live:
        idx = np.nonzero((prep.window_id == w) & det)[0]
        if len(idx):
            total += float(prep.sweep[idx[0]])
            tp += 1
        else:
            total -= profile.fn_weight
            fn += 1
    return SeriesScore(name, total, tp, int(fp_mask.sum()), fn, len(live))


def score_corpus(
    results: Sequence[tuple[str, np.ndarray, Sequence[tuple[int, int]]]],
    profile: CostProfile = STANDARD,
    threshold: float | None = None,
) -> CorpusResult:
    """Optimise one threshold over all files (unless given) and score each file with it."""
    if threshold is None:
        threshold, _ = optimise_threshold([(s, w) for _, s, w in results], profile)
    per = tuple(score_file(n, s, w, threshold, profile) for n, s, w in results)
    raw = sum(p.score for p in per)
    null = sum(score_file(n, np.zeros(len(s)), w, 1.1, profile).score for n, s, w in results)
    perfect = profile.tp_weight * sum(len(w) for _, _, w in results)
    return CorpusResult(threshold, raw, null, perfect, per)


# ------------------------------------------------------------------- reference detectors


def random_detector(values: np.ndarray, seed: int = 42) -> np.ndarray:
    """NAB's "random" detector: ``random.uniform(0, 1)`` per row, reseeded with 42 per file."""
    rng = random.Random(seed)
    return np.array([rng.uniform(0, 1) for _ in range(len(values))], dtype=np.float64)


def _q_tail(z: float) -> float:
    """One-sided normal tail at ``|z|`` rounded to 0.1 sigma, 0 beyond 7 sigma (nupic's table)."""
    zs = round(10.0 * abs(z))
    if zs > 70:
        return 0.0
    return 0.5 * math.erfc(zs / 10.0 / math.sqrt(2.0))


def windowed_gaussian_detector(values: np.ndarray, window: int = 1000) -> np.ndarray:
    """NAB's "windowed gaussian": ``1 - Q(|x - mean| / std)`` over the previous ``window`` rows."""
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros(len(v), dtype=np.float64)
    for i in range(1, len(v)):
        win = v[max(0, i - window) : i]
        mean = float(np.mean(win))
        std = float(np.std(win))
        if std == 0.0:
            std = 0.000001
        out[i] = 1.0 - _q_tail((v[i] - mean) / std)
    return out


# ------------------------------------------------------------------ running the deployed model

MAX_EXACT = 2**53
CHUNK = 256  # rows per ReadingScorer call: what a busy edge agent batches


def integer_scale(raw: Sequence[str]) -> int:
    """The power of ten that makes a file's values integers (Senken channels are integers).

    ``k`` = the largest number of decimals written in the file, lowered until the largest
    magnitude times ``10**k`` stays below 2**53; values are then ``round(value * 10**k)``, exact
    (via :class:`decimal.Decimal`) unless ``k`` had to be lowered.
    """
    decimals = 0
    biggest = Decimal(0)
    for text in raw:
        try:
            d = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"bad value {text!r}") from None
        exp = d.as_tuple().exponent
        if isinstance(exp, int) and -exp > decimals:
            decimals = -exp
        biggest = max(biggest, abs(d))
    while decimals > 0 and biggest * (Decimal(10) ** decimals) >= MAX_EXACT:
        decimals -= 1
    return decimals


def to_integers(raw: Sequence[str], decimals: int) -> list[int]:
    q = Decimal(10) ** decimals
    return [int((Decimal(t) * q).to_integral_value()) for t in raw]


def senken_detector(model_path: Path | None = None) -> Callable[[NabSeries], np.ndarray]:
    """The deployed pipeline: one ReadingScorer with one plain channel per NAB file."""
    from senken_core.anomaly import AnomalyModel, ReadingScorer
    from senken_core.sensors import Channel

    model = AnomalyModel.load(model_path)
    channel = Channel("value", "1", -(2**53), 2**53, "NAB value, scaled to an integer")

    def run(series: NabSeries) -> np.ndarray:
        ints = to_integers(series.raw, integer_scale(series.raw))
        scorer = ReadingScorer(model, [channel])
        out: list[int] = []
        for i in range(0, len(ints), CHUNK):
            out.extend(scorer.score([[v] for v in ints[i : i + CHUNK]]))
        return np.array(out, dtype=np.float64) / 1_000_000

    return run


def reference_detector(name: str) -> Callable[[NabSeries], np.ndarray]:
    if name == "random":
        return lambda s: random_detector(s.values)
    if name == "windowed_gaussian":
        return lambda s: windowed_gaussian_detector(s.values)
    raise ValueError(f"unknown detector {name!r}")


def evaluate_model(data_dir: Path, model_path: Path | None = None) -> dict[str, object]:
    """NAB standard-profile result of the deployed model on ``data_dir`` (for the metadata)."""
    windows = load_windows(data_dir / "combined_windows.json")
    run = senken_detector(model_path)
    results = [(s.name, run(s), s.windows) for s in find_series(data_dir, windows)]
    best = score_corpus(results)
    fixed = score_corpus(results, threshold=0.5)
    return {
        "data": f"NAB subset, data/nab ({len(results)} files, {int(best.perfect)} windows)",
        "profile": "standard (tp 1.0, fn 1.0, fp 0.11)",
        "score_optimised_threshold": round(best.normalised, 2),
        "optimised_threshold": round(best.threshold, 6),
        "score_at_model_threshold": round(fixed.normalised, 2),
        "detected_windows": sum(p.tp for p in fixed.per_file),
        "false_positives": sum(p.fp for p in fixed.per_file),
    }


def reference_scores(data_dir: Path) -> dict[str, float]:
    """Normalised standard scores of NAB's random and windowed-gaussian detectors on data_dir."""
    windows = load_windows(data_dir / "combined_windows.json")
    series = list(find_series(data_dir, windows))
    out: dict[str, float] = {}
    for name in ("random", "windowed_gaussian"):
        run = reference_detector(name)
        res = score_corpus([(s.name, run(s), s.windows) for s in series])
        out[name] = round(res.normalised, 2)
    return out
