"""On-device anomaly scoring: the TFLite window model and the per-stream state around it.

Shared by the edge agent (which scores each reading before signing it) and by validators
(which replay a device's readings and must get the same scores). The model file
``senken_core/models/anomaly-v1.tflite`` is self-contained: the graph computes, for a window of
the last ``window`` values of one channel, a *discord ratio* in ``[0, 1)`` (how far the newest
``query`` values are from their nearest match earlier in the window, relative to the window's
spread), and its ``description`` field holds, as JSON, the parameters of the small deterministic
post-processing done here in :class:`StreamScorer`:

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
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from senken_core.errors import ModelError
from senken_core.sensors import Channel

__all__ = ["DEFAULT_MODEL_PATH", "AnomalyModel", "ModelParams", "ReadingScorer", "StreamScorer"]

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "anomaly-v1.tflite"
_MAX_CACHED_BATCH_SIZES = 12
_MAX_BUCKET = 256
_PPM = 1_000_000
# 64 windows per invoke: the fastest per window here (4.7 us against 7.4 us at 256, whose
# intermediate tensors also cost 7 MB more RSS per cached interpreter).
_INFER_ROWS = 64

FloatArray = npt.NDArray[np.float32]


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


def _make_interpreter(blob: bytes) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ModuleNotFoundError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ModuleNotFoundError:
            raise ModelError(
                "no TFLite runtime: install ai-edge-litert (or tflite-runtime) to score readings"
            ) from None
    return Interpreter(model_content=blob, num_threads=1)


class AnomalyModel:
    """The loaded .tflite model: ``infer`` maps windows ``[B, window]`` to scores ``[B]``."""

    def __init__(self, path: Path, blob: bytes, params: ModelParams, interpreter: Any) -> None:
        self.path = path
        self.sha256: bytes = hashlib.sha256(blob).digest()
        self.size = len(blob)
        self.params = params
        self.window: int = params.window
        self.threshold: float = params.threshold
        self._blob = blob
        self._interpreters: OrderedDict[int, tuple[Any, int, int]] = OrderedDict()
        self._add_interpreter(1, interpreter)

    @classmethod
    def load(cls, path: Path | None = None, expected_sha256: bytes | None = None) -> AnomalyModel:
        """Load ``path`` (default: the packaged anomaly-v1.tflite), checking its sha256 if given.

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
            interp = _make_interpreter(blob)
        except ModelError:
            raise
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"anomaly model {p} cannot be loaded by TFLite: {exc}") from None
        model = cls(p, blob, params, interp)
        try:
            model.infer(np.zeros((1, params.window), dtype=np.float32))
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"anomaly model {p} does not run: {exc}") from None
        return model

    def _add_interpreter(self, batch: int, interp: Any) -> tuple[Any, int, int]:
        inp = interp.get_input_details()[0]
        out = interp.get_output_details()[0]
        shape = tuple(int(v) for v in inp["shape"])
        if len(shape) != 2 or shape[1] != self.window:
            raise ModelError(
                f"anomaly model {self.path}: input shape {shape}, expected (B, {self.window})"
            )
        if shape[0] != batch:
            interp.resize_tensor_input(inp["index"], [batch, self.window])
        interp.allocate_tensors()
        entry = (interp, int(inp["index"]), int(out["index"]))
        self._interpreters[batch] = entry
        if len(self._interpreters) > _MAX_CACHED_BATCH_SIZES:
            for key in list(self._interpreters):
                if key != 1 and key != batch:
                    del self._interpreters[key]
                    break
        return entry

    def infer(self, windows: np.ndarray) -> FloatArray:
        """Scores in ``[0, 1]`` for windows ``float32 [B, window]`` (one invoke per call).

        One TFLite interpreter is cached per batch size (B up to 256 is padded to the next
        power of two, so at most 9 sizes occur below that).
        """
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.window:
            raise ValueError(f"expected windows of shape (B, {self.window}), got {x.shape}")
        batch = int(x.shape[0])
        if batch == 0:
            return np.zeros(0, dtype=np.float32)
        # batch sizes up to 256 run padded to the next power of two, so a handful of cached
        # interpreters serve every size (rows are computed independently: padding changes
        # nothing in the real rows' scores)
        size = batch if batch > _MAX_BUCKET else 1 << (batch - 1).bit_length()
        if size != batch:
            x = np.concatenate([x, np.zeros((size - batch, self.window), dtype=np.float32)])
        entry = self._interpreters.get(size)
        if entry is None:
            entry = self._add_interpreter(size, _make_interpreter(self._blob))
        else:
            self._interpreters.move_to_end(size)
        interp, i_in, i_out = entry
        interp.set_tensor(i_in, x)
        interp.invoke()
        out: FloatArray = np.array(interp.get_tensor(i_out), dtype=np.float32).reshape(size)
        return out[:batch] if size != batch else out


class StreamScorer:
    """Scoring state of ONE channel stream of one device (see the module docstring)."""

    def __init__(self, model: AnomalyModel, cumulative: bool = False) -> None:
        self.model = model
        self.cumulative = cumulative
        p = model.params
        self._p = p
        self._history = np.zeros(0, dtype=np.float64)  # last window-1 values (or increments)
        self._last: int | None = None  # previous register value, cumulative channels
        self._n_raw = 0
        self._mean = 0.0
        self._var = 0.0
        self._index = 0  # values scored so far
        self._last_alarm = -(10**18)
        self._offsets = np.arange(-(p.window - 1), 1)

    # The two halves below let ReadingScorer batch several channels into one infer call.

    def _prepare(self, values: Sequence[int]) -> tuple[FloatArray, int]:
        """Windows for the values that have one, and how many leading values have none.

        Values without a window (warm-up, the first value of a cumulative stream) always come
        first, so the result is ``(windows, n_lead)`` with ``len(windows) == n - n_lead``.
        """
        n = len(values)
        lead = 0
        if self.cumulative:
            ints = [int(v) for v in values]
            prev = self._last
            seq = ints if prev is None else [prev, *ints]
            if ints:
                self._last = ints[-1]
            if prev is None and ints:
                lead = 1
            try:
                xs = np.diff(np.array(seq, dtype=np.int64)).astype(np.float64)
            except OverflowError:
                xs = np.array([float(b - a) for a, b in itertools.pairwise(seq)], dtype=np.float64)
        else:
            xs = np.array([int(v) for v in values], dtype=np.float64)
        w = self._p.window
        n_old = len(self._history)
        full = np.concatenate([self._history, xs]) if n_old else xs
        self._history = full[-(w - 1) :].copy()
        # xs[k] sits at position n_old + k of full; it has a window if n_old + k >= w - 1
        first = min(len(xs), max(0, w - 1 - n_old))
        if first >= len(xs):
            return np.zeros((0, w), dtype=np.float32), n
        ends = np.arange(n_old + first, len(full))  # position of each window's newest value
        view = full[ends[:, None] + self._offsets]
        windows = (view - full[ends][:, None]).astype(np.float32)
        return windows, lead + first

    def _finish(self, out: np.ndarray, n_lead: int) -> list[float]:
        p = self._p
        cap, thr, scale, warmup = p.raw_cap, p.threshold, p.scale, p.warmup
        suppress, horizon = p.suppress, p.horizon
        alpha = 1.0 / min(max(self._n_raw, 1), horizon)
        capped = thr * 0.999
        sqrt = math.sqrt
        mean, var, n_raw = self._mean, self._var, self._n_raw
        index, last_alarm = self._index, self._last_alarm
        raw = out.tolist()
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
        windows, n_lead = self._prepare(values)
        out = self.model.infer(windows) if len(windows) else np.zeros(0, dtype=np.float32)
        return self._finish(out, n_lead)


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
        parts = [s._prepare([row[c] for row in rows]) for c, s in enumerate(self.streams)]
        sizes = [len(w) for w, _ in parts]
        total = sum(sizes)
        if total:
            stacked = np.concatenate([w for w, _ in parts]) if len(parts) > 1 else parts[0][0]
            # infer calls of at most _INFER_ROWS windows: per-row results do not depend on the
            # batch size, and 64..256 rows per invoke is the fastest (cache) on x86-64
            chunks = [
                self.model.infer(stacked[i : i + _INFER_ROWS])
                for i in range(0, total, _INFER_ROWS)
            ]
            out = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        else:
            out = np.zeros(0, dtype=np.float32)
        per_channel: list[list[float]] = []
        start = 0
        for (_, n_lead), size, stream in zip(parts, sizes, self.streams, strict=True):
            per_channel.append(stream._finish(out[start : start + size], n_lead))
            start += size
        # scores are in [0, 1]; ppm = round half up (int(f * 1e6 + 0.5) == floor(...) here)
        if len(rows) <= 16:
            return [int(max(fs) * _PPM + 0.5) for fs in zip(*per_channel, strict=True)]
        best = np.max(np.array(per_channel, dtype=np.float64), axis=0)
        return [int(v) for v in np.floor(best * _PPM + 0.5)]
