"""On-device anomaly scoring: the TFLite window model and the per-stream state around it.

Shared by the edge agent (which scores each reading before signing it) and by validators
(which replay a device's readings and must get the same scores). The model file
``senken_core/models/anomaly-v2.tflite`` is self-contained: the graph computes, for a window
of the last ``window`` integer values of one channel, a *discord ratio* in ``[0, 1)`` (how far
the newest ``query`` values are from their nearest match earlier in the window, relative to the
window's spread), and its ``description`` field holds, as JSON, the parameters of the small
deterministic post-processing done here in :class:`StreamScorer`:

1. cumulative channels (energy registers) are differenced first: their increments are scored;
2. the first ``window`` values of a stream score 0 (the window is not full yet);
3. the graph output ``s`` becomes the ratio ``r = s / (1 - s)`` (capped at ``raw_cap``),
   standardised online per stream: ``z = (r - mean) / (std + 1e-6)`` with a running mean and
   variance (weight ``1/n`` for the n-th ratio, so plain averages) that turns into an
   exponential moving one of horizon ``horizon`` after ``horizon`` ratios; the first
   ``warmup`` ratios only feed the statistics and score 0;
4. the score is ``z / (z + scale)`` for ``z = max(0, standardised r)``: ``0.5`` (the threshold)
   means ``scale`` standard deviations above the stream's usual ratio;
5. after an alarm (score >= threshold), the next ``suppress`` values are capped just below the
   threshold, so one event raises one alarm.

Every step only depends on the values fed so far, in order, so replaying a stream gives the same
scores whether it is fed one value at a time or in batches. Scores are bit-identical on the same
runtime build and CPU architecture; another architecture may differ in the last float32 bits
of the graph output (see docs/model.md).

The graph runs through LiteRT's C API (:mod:`senken_core.litert`), with windows passed as int64
buffers: nothing here imports numpy, which keeps the edge agent within its memory budget.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from senken_core.errors import ModelError
from senken_core.litert import LiteRtModel, Signature
from senken_core.sensors import Channel

try:  # the optional C extension (setup.py): the post-processing loops, the same arithmetic
    from senken_core import _batchsign
except ImportError:  # pragma: no cover - the tests run with it built
    _STREAM_FINISH = _APPEND_WINDOWS = None
else:
    _STREAM_FINISH = getattr(_batchsign, "stream_finish", None)
    _APPEND_WINDOWS = getattr(_batchsign, "append_windows", None)

__all__ = ["DEFAULT_MODEL_PATH", "AnomalyModel", "ModelParams", "ReadingScorer", "StreamScorer"]

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "anomaly-v2.tflite"
_PPM = 1_000_000
# Stream values are clamped to +-2**62 so that the graph's int64 difference of two values
# (each window minus its newest value) cannot overflow. Every sensor channel's range is far
# inside it (senken_core.sensors: at most 2**53).
_LIMIT = 2**62
_SIGNATURE = re.compile(r"b([1-9][0-9]{0,5})\Z")


@dataclass(frozen=True, slots=True)
class ModelParams:
    """Post-processing parameters stored in the model file's description."""

    name: str
    window: int
    query: int
    horizon: int
    warmup: int
    scale: float
    suppress: int
    threshold: float
    raw_cap: float

    @classmethod
    def from_description(cls, text: str, path: Path) -> ModelParams:
        try:
            data = json.loads(text)
            params = cls(
                name=str(data["name"]),
                window=int(data["window"]),
                query=int(data["query"]),
                horizon=int(data["horizon"]),
                warmup=int(data["warmup"]),
                scale=float(data["scale"]),
                suppress=int(data["suppress"]),
                threshold=float(data["threshold"]),
                raw_cap=float(data["raw_cap"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(
                f"anomaly model {path}: its description does not hold the Senken model "
                f"parameters ({exc}); rebuild it with `python -m edge_agent.model.train`"
            ) from None
        if params.window < 2 or params.horizon < 1 or params.scale <= 0 or params.warmup < 1:
            raise ModelError(f"anomaly model {path}: invalid parameters {data!r}")
        return params


def _read_description(blob: bytes, path: Path) -> str:
    """The flatbuffer's ``description`` string (TFLite ``Model`` table, field 3)."""
    try:
        if blob[4:8] != b"TFL3":
            raise ValueError("no TFL3 file identifier")

        def u32(pos: int) -> int:
            if pos < 0 or pos + 4 > len(blob):
                raise ValueError("offset out of range")
            return int.from_bytes(blob[pos : pos + 4], "little")

        root = u32(0)
        vtable = root - int.from_bytes(blob[root : root + 4], "little", signed=True)
        vt_len = int.from_bytes(blob[vtable : vtable + 2], "little")
        slot = 4 + 2 * 3  # vtable entry of field 3 (description)
        off = (
            int.from_bytes(blob[vtable + slot : vtable + slot + 2], "little")
            if vt_len > slot
            else 0
        )
        if off == 0:
            raise ValueError("no description")
        pos = root + off
        spos = pos + u32(pos)
        n = u32(spos)
        if spos + 4 + n > len(blob):
            raise ValueError("description out of range")
        return blob[spos + 4 : spos + 4 + n].decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"anomaly model {path}: not a valid Senken TFLite model ({exc})") from None


def _clamp(v: int) -> int:
    return -_LIMIT if v < -_LIMIT else _LIMIT if v > _LIMIT else v


def _int64s(values: Sequence[int]) -> array[int]:
    """``values`` (integers) as an int64 array, each clamped to +-2**62."""
    if not values:
        return array("q")
    if min(values) >= -_LIMIT and max(values) <= _LIMIT:
        return array("q", values)  # the usual case: one C loop
    return array("q", [_clamp(int(v)) for v in values])


class AnomalyModel:
    """The loaded .tflite model: ``infer`` maps integer windows to discord ratios.

    The model holds one signature ``b<B>`` per fixed batch size B. A call of n windows runs
    the mix of signatures that costs least, by each one's time per invoke measured at load
    (a larger batch is not always cheaper per window: on a 2-vCPU x86 VM b64 took 6.7 us a
    window against 5.8 for b16, whose intermediates stay in cache). Rows are computed
    independently, so which batch size ran a window (and what filled the rest of the batch)
    never changes its result (tested).
    Not thread-safe: one scoring thread per model.
    """

    def __init__(self, path: Path, blob: bytes, params: ModelParams) -> None:
        self.path = path
        self.sha256: bytes = hashlib.sha256(blob).digest()
        self.size = len(blob)
        self.params = params
        self.window: int = params.window
        self.threshold: float = params.threshold
        row = params.window * 8

        def sizes(key: str) -> tuple[int, int] | None:
            m = _SIGNATURE.match(key)
            return None if m is None else (int(m[1]) * row, int(m[1]) * 4)

        self._runtime = LiteRtModel(blob, sizes)
        by_size = {int(k[1:]): sig for k, sig in self._runtime.signatures.items()}
        if not by_size:
            raise ModelError(f"anomaly model {path}: no b<batch> signature")
        self._sizes = sorted(by_size)
        self._sigs: list[Signature] = [by_size[b] for b in self._sizes]
        self.max_batch: int = self._sizes[-1]
        self.costs: dict[int, float] = {b: self._time_invoke(by_size[b]) for b in self._sizes}
        self._plans: dict[int, tuple[tuple[int, int, Signature], ...]] = {}

    def _time_invoke(self, sig: Signature, runs: int = 3) -> float:
        """Seconds per invoke of ``sig`` (best of ``runs``, after one warm-up run)."""
        self._runtime.run(sig)
        best = math.inf
        for _ in range(runs):
            start = time.perf_counter()
            self._runtime.run(sig)
            best = min(best, time.perf_counter() - start)
        return best

    def plan(self, rows: int) -> tuple[tuple[int, int, Signature], ...]:
        """``(first row, rows, signature)`` per invoke for ``rows`` windows: the cheapest mix by
        :attr:`costs` (memoised per ``rows``)."""
        cached = self._plans.get(rows)
        if cached is not None:
            return cached
        sizes = self._sizes
        best = [0.0] + [math.inf] * rows  # best[i]: cheapest cost of i rows
        choice = [0] * (rows + 1)
        for i in range(1, rows + 1):
            for b in sizes:
                cost = best[max(0, i - b)] + self.costs[b]
                if cost < best[i]:
                    best[i], choice[i] = cost, b
        pieces: list[int] = []
        i = rows
        while i > 0:
            pieces.append(min(choice[i], i))
            i -= choice[i]
        by_size = dict(zip(sizes, self._sigs, strict=True))
        plan: list[tuple[int, int, Signature]] = []
        start = 0
        for n in sorted(pieces, reverse=True):
            b = next(size for size in sizes if size >= n)
            plan.append((start, n, by_size[b]))
            start += n
        out = tuple(plan)
        if len(self._plans) < 4096:
            self._plans[rows] = out
        return out

    @classmethod
    def load(cls, path: Path | None = None, expected_sha256: bytes | None = None) -> AnomalyModel:
        """Load ``path`` (default: the packaged anomaly-v2.tflite), checking its sha256 if given.

        Raises :class:`ModelError` if the file is missing, unreadable, not a valid model, or its
        hash differs from ``expected_sha256``.
        """
        p = Path(path) if path is not None else DEFAULT_MODEL_PATH
        try:
            blob = p.read_bytes()
        except FileNotFoundError:
            raise ModelError(
                f"anomaly model {p} not found; build it with `python -m edge_agent.model.train`"
            ) from None
        except OSError as exc:
            raise ModelError(f"anomaly model {p} cannot be read: {exc.strerror}") from None
        digest = hashlib.sha256(blob).digest()
        if expected_sha256 is not None and digest != expected_sha256:
            raise ModelError(
                f"anomaly model {p} has sha256 {digest.hex()}, expected "
                f"{expected_sha256.hex()}: wrong or corrupted model file"
            )
        if len(blob) < 8:
            raise ModelError(f"anomaly model {p}: file too short to be a TFLite model")
        params = ModelParams.from_description(_read_description(blob, p), p)
        try:
            model = cls(p, blob, params)
        except ModelError as exc:
            raise ModelError(f"anomaly model {p} cannot be loaded: {exc}") from None
        model.infer([[0] * params.window])
        return model

    def infer(self, windows: Sequence[Sequence[int]]) -> list[float]:
        """Discord ratios in ``[0, 1)`` for integer windows of ``window`` values, newest last.

        Raises ``ValueError`` for a row of another length; values are clamped to +-2**62.
        """
        flat = array("q")
        for row in windows:
            if len(row) != self.window:
                raise ValueError(f"expected windows of {self.window} values, got {len(row)}")
            flat.extend(_clamp(int(v)) for v in row)
        return self.infer_flat(flat)

    def infer_flat(self, flat: array[int]) -> list[float]:
        """Like :meth:`infer` for windows laid end to end in one int64 array (no copies made
        but the one into the model's input buffer)."""
        w = self.window
        rows = len(flat) // w
        if rows * w != len(flat):
            raise ValueError(f"expected a multiple of {w} values, got {len(flat)}")
        src = memoryview(flat).cast("B")
        out: list[float] = []
        row_bytes = w * 8
        for start, n, sig in self.plan(rows):
            sig.input[: n * row_bytes] = src[start * row_bytes : (start + n) * row_bytes]
            self._runtime.run(sig)
            out += sig.output[: n * 4].cast("f").tolist()
        return out


class StreamScorer:
    """Scoring state of ONE channel stream of one device (see the module docstring)."""

    def __init__(self, model: AnomalyModel, cumulative: bool = False) -> None:
        self.model = model
        self.cumulative = cumulative
        p = model.params
        self._p = p
        self._history = array("q")  # last window-1 values (or increments)
        self._last: int | None = None  # previous register value, cumulative channels
        self._n_raw = 0
        self._mean = 0.0
        self._var = 0.0
        self._index = 0  # values scored so far
        self._last_alarm = -(10**18)

    # The two halves below let ReadingScorer batch several channels into one infer call.

    def _prepare(self, values: Sequence[int], out: array[int]) -> tuple[int, int]:
        """Append to ``out`` the windows of the values that have one; return how many, and how
        many leading values have none.

        Values without a window (warm-up, the first value of a cumulative stream) always come
        first, so ``n_windows + n_lead == len(values)``.
        """
        n = len(values)
        lead = 0
        if self.cumulative:
            prev = self._last
            seq = list(values) if prev is None else [prev, *values]
            if prev is None and seq:
                lead = 1
            if seq:
                self._last = seq[-1]
            xs = _int64s(list(map(operator.sub, seq[1:], seq[:-1])))
        else:
            xs = _int64s(values)
        w = self._p.window
        n_old = len(self._history)
        full = self._history + xs if n_old else xs
        self._history = full[-(w - 1) :]
        # xs[k] sits at position n_old + k of full; it has a window if n_old + k >= w - 1
        first = min(len(xs), max(0, w - 1 - n_old))
        if first >= len(xs):
            return 0, n
        if _APPEND_WINDOWS is not None:
            _APPEND_WINDOWS(out, full, n_old + first, w)
        else:
            raw = memoryview(full).cast("B")
            size = full.itemsize
            for end in range(n_old + first, len(full)):
                out.frombytes(raw[(end - w + 1) * size : (end + 1) * size])
        return len(xs) - first, lead + first

    def _finish(self, raw: Sequence[float], n_lead: int) -> list[float]:
        if _STREAM_FINISH is not None and type(raw) is list:
            state = [self._mean, self._var, self._n_raw, self._index, self._last_alarm]
            p = self._p
            scores: list[float] = _STREAM_FINISH(
                raw, n_lead, state, (p.raw_cap, p.threshold, p.scale, p.warmup, p.suppress,
                                     p.horizon))
            mean, var, n_raw, index, last_alarm = state
            self._mean, self._var = float(mean), float(var)
            self._n_raw, self._index, self._last_alarm = int(n_raw), int(index), int(last_alarm)
            return scores
        return self._finish_python(raw, n_lead)

    def _finish_python(self, raw: Sequence[float], n_lead: int) -> list[float]:
        """:meth:`_finish` where the extension is not built (and its reference)."""
        p = self._p
        cap, thr, scale, warmup = p.raw_cap, p.threshold, p.scale, p.warmup
        suppress, horizon = p.suppress, p.horizon
        alpha = 1.0 / min(max(self._n_raw, 1), horizon)
        capped = thr * 0.999
        sqrt = math.sqrt
        mean, var, n_raw = self._mean, self._var, self._n_raw
        index, last_alarm = self._index, self._last_alarm
        scores: list[float] = [0.0] * n_lead
        index += n_lead
        for s in raw:
            index += 1
            r = cap if s >= 1.0 else s / (1.0 - s)
            if r > cap:
                r = cap
            d = r - mean
            if n_raw < warmup:  # plain running mean/variance, score 0
                n_raw += 1
                mean += d / n_raw
                var += (d * (r - mean) - var) / n_raw
                scores.append(0.0)
                continue
            z = d / (sqrt(var) + 1e-6)
            if n_raw < horizon:  # running average until `horizon` ratios, then exponential
                n_raw += 1
                alpha = 1.0 / n_raw
            mean += alpha * d
            var = (1.0 - alpha) * (var + alpha * d * d)
            f = z / (z + scale) if z > 0.0 else 0.0
            if f >= thr:
                if index - last_alarm <= suppress:
                    f = capped
                else:
                    last_alarm = index
            scores.append(f)
        self._mean, self._var, self._n_raw = mean, var, n_raw
        self._index, self._last_alarm = index, last_alarm
        return scores

    def score_many(self, values: Sequence[int]) -> list[float]:
        """Feed ``values`` in order; one score in ``[0, 1]`` per value (one infer call)."""
        flat = array("q")
        _, n_lead = self._prepare(values, flat)
        return self._finish(self.model.infer_flat(flat), n_lead)


class ReadingScorer:
    """One per device: a :class:`StreamScorer` per channel, scores in ppm (max over channels)."""

    def __init__(self, model: AnomalyModel, channels: Sequence[Channel]) -> None:
        self.model = model
        self.channels = tuple(channels)
        self.streams = [StreamScorer(model, cumulative=c.cumulative) for c in self.channels]

    def score(self, rows: Sequence[Sequence[int]]) -> list[int]:
        """Per reading (channel values in channel order) its anomaly score in ppm, 0..1_000_000."""
        n_ch = len(self.channels)
        for i, row in enumerate(rows):
            if len(row) != n_ch:
                raise ValueError(f"reading {i} has {len(row)} values, expected {n_ch} channels")
        if not rows:
            return []
        # all channels' windows in one array, so that one reading's channels share one invoke
        flat = array("q")
        parts = [s._prepare([row[c] for row in rows], flat) for c, s in enumerate(self.streams)]
        out = self.model.infer_flat(flat) if flat else []
        per_channel: list[list[float]] = []
        start = 0
        for (size, n_lead), stream in zip(parts, self.streams, strict=True):
            per_channel.append(stream._finish(out[start : start + size], n_lead))
            start += size
        # scores are in [0, 1]; ppm = round half up (int(f * 1e6 + 0.5) == floor(...) here)
        return [int(max(fs) * _PPM + 0.5) for fs in zip(*per_channel, strict=True)]
