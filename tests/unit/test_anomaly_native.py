"""The model's post-processing in C (``_batchsign.stream_finish``, ``append_windows``) gives
exactly what the Python reference gives: the same floats, bit for bit, and the same state.

Validators replay a device's stream and must reproduce its agent's scores exactly, and either
side may run with or without the extension, so the two paths are held to each other here on
arbitrary model outputs and states (including the warm-up, the horizon switch and alarms).
"""

from __future__ import annotations

import struct
from array import array
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core import anomaly
from senken_core.anomaly import AnomalyModel, ModelParams, StreamScorer

NATIVE = anomaly._STREAM_FINISH


def test_the_native_post_processing_is_built_here() -> None:
    assert anomaly._STREAM_FINISH is not None and anomaly._APPEND_WINDOWS is not None


@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    return AnomalyModel.load()


def bits(values: list[float]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]


def state_of(s: StreamScorer) -> tuple[object, ...]:
    return (struct.pack("<d", s._mean), struct.pack("<d", s._var), s._n_raw, s._index,
            s._last_alarm)


float32s = st.floats(width=32, allow_nan=False) | st.sampled_from(
    [0.0, 0.5, 0.999999, 1.0, 1.5, -0.0, -1.0, 0.25, 0.75, 0.9])


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(st.tuples(st.lists(float32s, max_size=40), st.integers(0, 5)),
                  min_size=1, max_size=6),
    warmup=st.integers(0, 8), horizon=st.integers(1, 12), suppress=st.integers(0, 6),
    threshold=st.sampled_from([0.5, 0.1, 0.9]), scale=st.sampled_from([3.0, 0.5, 1e-3]),
    raw_cap=st.sampled_from([1e6, 10.0, 0.5]),
)
def test_native_finish_is_the_python_finish(model: AnomalyModel, runs: list[tuple[list[float],
                                            int]], warmup: int, horizon: int, suppress: int,
                                            threshold: float, scale: float,
                                            raw_cap: float) -> None:
    params = ModelParams(name="p", window=model.window, query=model.params.query,
                         horizon=horizon, warmup=warmup, scale=scale, suppress=suppress,
                         threshold=threshold, raw_cap=raw_cap)
    native, python = StreamScorer(model), StreamScorer(model)
    native._p = python._p = params
    for raw, n_lead in runs:
        assert bits(native._finish(list(raw), n_lead)) == bits(
            python._finish_python(list(raw), n_lead))
        assert state_of(native) == state_of(python)
    assert isinstance(native._mean, float) and isinstance(native._n_raw, int)


@settings(max_examples=100, deadline=None)
@given(chunks=st.lists(st.lists(st.integers(-(2**62), 2**62), max_size=30), max_size=8),
       cumulative=st.booleans())
def test_native_windows_are_the_python_windows(model: AnomalyModel, chunks: list[list[int]],
                                               cumulative: bool) -> None:
    native, python = StreamScorer(model, cumulative), StreamScorer(model, cumulative)
    for values in chunks:
        out_native, out_python = array("q"), array("q")
        got = native._prepare(values, out_native)
        # not a stand-in for anything: switching the optional C helper off runs the Python
        # loop that machines without a compiler use, so both are held to the same windows
        with mock.patch.object(anomaly, "_APPEND_WINDOWS", None):
            want = python._prepare(values, out_python)
        assert got == want and out_native == out_python
        assert native._history == python._history


def test_real_scores_agree_on_a_long_stream(model: AnomalyModel) -> None:
    """The packaged model end to end over a stream with spikes: same scores both ways."""
    values = [1000 + (i * 7919) % 37 + (5000 if i % 401 == 0 else 0) for i in range(1500)]
    native, python = StreamScorer(model), StreamScorer(model)
    scores: list[float] = []
    for start in range(0, len(values), 97):
        flat = array("q")
        _, n_lead = native._prepare(values[start:start + 97], flat)
        python._prepare(values[start:start + 97], array("q"))
        raw = model.infer_flat(flat) if flat else []
        got, want = native._finish(raw, n_lead), python._finish_python(raw, n_lead)
        assert bits(got) == bits(want)
        scores += got
    assert state_of(native) == state_of(python)
    assert max(scores) >= 0.5  # the spikes raise alarms: the alarm path was compared too
