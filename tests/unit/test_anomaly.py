"""The anomaly-model runtime (senken_core.anomaly) and the deterministic model build."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.model.train import build_model
from senken_core.anomaly import DEFAULT_MODEL_PATH, AnomalyModel, ReadingScorer, StreamScorer
from senken_core.errors import ModelError
from senken_core.sensors import sensor_kind

META = DEFAULT_MODEL_PATH.with_suffix(".json")


@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    return AnomalyModel.load()


def _noise(n: int, seed: int = 1, level: float = 10_000.0, sd: float = 50.0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(v) for v in np.round(level + rng.normal(0.0, sd, n))]


def test_packaged_model_matches_metadata(model: AnomalyModel) -> None:
    meta = json.loads(META.read_text())
    assert model.sha256 == bytes.fromhex(meta["sha256"])
    assert len(model.sha256) == 32
    assert model.size == meta["bytes"] == DEFAULT_MODEL_PATH.stat().st_size
    assert model.window == meta["window"]
    assert model.threshold == meta["threshold"]
    assert 0.0 < model.threshold < 1.0


def test_build_is_deterministic_and_matches_packaged_file() -> None:
    a, b = build_model(), build_model()
    assert a == b
    assert hashlib.sha256(a).digest() == hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).digest()


def test_load_with_expected_hash(model: AnomalyModel) -> None:
    again = AnomalyModel.load(DEFAULT_MODEL_PATH, expected_sha256=model.sha256)
    assert again.sha256 == model.sha256
    with pytest.raises(ModelError, match="sha256"):
        AnomalyModel.load(DEFAULT_MODEL_PATH, expected_sha256=b"\x00" * 32)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        AnomalyModel.load(tmp_path / "missing.tflite")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is not a flatbuffer at all")
    with pytest.raises(ModelError):
        AnomalyModel.load(junk)


def _reference_ratio(window: np.ndarray, query: int) -> np.ndarray:
    """docs/model.md's formula in numpy: a / (a + sigma) per window (rows of ints)."""
    x = (window - window[:, -1:]).astype(np.float32)  # minus the newest value, as float32
    n = x.shape[1]
    q = x[:, n - query :]
    cands = np.stack([x[:, j : j + query] for j in range(n - 2 * query + 1)], axis=1)
    a = np.sqrt(((cands - q[:, None, :]) ** 2).sum(axis=2).min(axis=1) / query)
    sigma = x[:, : n - query].std(axis=1)
    return a / (a + sigma + np.float32(1e-30))


def test_infer_computes_the_documented_ratio(model: AnomalyModel) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-10**9, 10**9, size=(7, model.window))
    x[3] = 5  # a flat window: no spread, no distance
    out = model.infer(x.tolist())
    assert len(out) == 7 and all(isinstance(v, float) and 0.0 <= v < 1.0 for v in out)
    assert out[3] == 0.0
    assert np.allclose(out, _reference_ratio(x, model.params.query), rtol=2e-5, atol=1e-6)


def test_infer_rows_independent_of_batch_size(model: AnomalyModel) -> None:
    rng = np.random.default_rng(1)
    big = rng.integers(0, 10**6, size=(300, model.window)).tolist()
    whole = model.infer(big)
    assert len(whole) == 300
    for b in (1, 2, 3, 4, 5, 17, 64, 65, 129, 256):  # every signature, padded or full
        assert model.infer(big[:b]) == whole[:b]
        assert model.infer(big[300 - b :]) == whole[300 - b :]
    measured = dict(model.costs)
    try:  # whichever mix of signatures the costs pick, the same results
        for costs, used in (({4: 1.0, 16: 1.0, 64: 1.0}, {"b64"}),  # fewest invokes
                            ({4: 1.0, 16: 9.0, 64: 99.0}, {"b4"}),
                            ({4: 9.0, 16: 10.0, 64: 99.0}, {"b16"})):
            model.costs.update(costs)
            model._plans.clear()
            assert model.infer(big) == whole
            assert {sig.key for _s, _n, sig in model.plan(300)} == used
    finally:
        model.costs.update(measured)
        model._plans.clear()


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 16, 17, 63, 64, 65, 150, 300, 1536])
def test_a_plan_covers_every_row_once_within_its_signatures(model: AnomalyModel,
                                                            rows: int) -> None:
    plan = model.plan(rows)
    assert [start for start, _n, _sig in plan] == list(
        itertools.accumulate([n for _s, n, _sig in plan], initial=0))[:-1]
    assert sum(n for _s, n, _sig in plan) == rows
    assert all(0 < n <= int(sig.key[1:]) for _s, n, sig in plan)
    assert model.infer([]) == []
    with pytest.raises(ValueError, match="windows of 320"):
        model.infer([[0] * (model.window + 1)])


def test_infer_extreme_values_are_exact_differences(model: AnomalyModel) -> None:
    # values near the top of every channel range (2**53): the graph subtracts in int64, so a
    # window that only varies by a few units far from zero still sees that variation
    base = 2**53 - 1000
    row = [base + (i % 7) for i in range(model.window)]
    assert model.infer([row]) == model.infer([[i % 7 for i in range(model.window)]])
    # beyond +-2**62 values are clamped, never an overflow
    assert model.infer([[2**70] * model.window]) == [0.0]


def test_spike_scores_far_above_normal_points(model: AnomalyModel) -> None:
    values = _noise(1500)
    values[1200] += 600  # a 12-sigma spike
    scores = StreamScorer(model).score_many(values)
    assert len(scores) == 1500
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[: model.window] == [0.0] * model.window  # warm-up
    normal = np.array(scores[600:1200])
    assert scores[1200] >= model.threshold
    assert np.median(normal) < 0.1
    assert scores[1200] > np.percentile(normal, 99) + 0.3
    assert int(np.argmax(scores)) == 1200


def test_same_sequence_same_ppm_batched_or_not(model: AnomalyModel) -> None:
    kind = sensor_kind("elec_meter")
    rng = np.random.default_rng(7)
    energy = np.cumsum(rng.integers(900, 1100, 900)) + 10**12  # cumulative register
    power = _noise(900, seed=3, level=250_000, sd=2_000)
    volt = _noise(900, seed=4, level=2_300, sd=5)
    power[700] += 40_000
    rows = [[int(e), p, v] for e, p, v in zip(energy, power, volt, strict=True)]
    batched = ReadingScorer(model, kind.channels).score(rows)
    one = ReadingScorer(model, kind.channels)
    single = [one.score([r])[0] for r in rows]
    mixed_scorer = ReadingScorer(model, kind.channels)
    mixed: list[int] = []
    for start, size in [(0, 1), (1, 255), (256, 256), (512, 37), (549, 351)]:
        mixed.extend(mixed_scorer.score(rows[start : start + size]))
    assert batched == single == mixed
    assert all(isinstance(v, int) and 0 <= v <= 1_000_000 for v in batched)
    assert batched[700] >= model.threshold * 1_000_000
    again = ReadingScorer(model, kind.channels).score(rows)
    assert again == batched


def test_stream_scorer_batch_equals_single(model: AnomalyModel) -> None:
    values = _noise(700, seed=11)
    whole = StreamScorer(model).score_many(values)
    s = StreamScorer(model)
    assert [s.score_many([v])[0] for v in values] == whole


def test_cumulative_channel_scores_increments(model: AnomalyModel) -> None:
    rng = np.random.default_rng(5)
    inc = rng.integers(95, 106, 1200)
    inc[1000] = 400  # one reading with four times the usual energy
    register = [int(v) for v in np.cumsum(inc) + 5 * 10**13]
    scores = StreamScorer(model, cumulative=True).score_many(register)
    assert scores[0] == 0.0
    assert scores[1000] >= model.threshold
    assert int(np.argmax(scores)) == 1000


def test_scale_free(model: AnomalyModel) -> None:
    values = _noise(900, seed=2, level=3_000, sd=40)
    values[800] -= 500
    small = np.array(StreamScorer(model).score_many(values))
    big = np.array(StreamScorer(model).score_many([v * 100_000 for v in values]))
    assert np.allclose(small, big, atol=1e-3)


def test_reading_scorer_rejects_wrong_row_length(model: AnomalyModel) -> None:
    scorer = ReadingScorer(model, sensor_kind("soil_co2").channels)
    with pytest.raises(ValueError, match="expected 3"):
        scorer.score([[1, 2]])
    assert scorer.score([]) == []


def test_model_without_batch_signatures_is_refused(tmp_path: Path) -> None:
    blob = build_model(batch_sizes=(4,))
    path = tmp_path / "renamed.tflite"
    path.write_bytes(blob.replace(b"b4\x00", b"x4\x00"))  # the signature key, renamed
    with pytest.raises(ModelError, match="signature"):
        AnomalyModel.load(path)


def test_agent_never_imports_numpy_or_pydantic() -> None:
    # the agent's memory budget (40 MB) has no room for numpy (~20 MB resident) or pydantic
    # (~10 MB with the config models): bench/README.md
    code = (
        "import sys\n"
        "import edge_agent.app\n"
        "from senken_core.anomaly import AnomalyModel, ReadingScorer\n"
        "from senken_core.sensors import sensor_kind\n"
        "m = AnomalyModel.load()\n"
        "s = ReadingScorer(m, sensor_kind('elec_meter').channels)\n"
        "s.score([[i, 5, 7] for i in range(400)])\n"
        "assert 'numpy' not in sys.modules, 'numpy was imported'\n"
        "assert 'pydantic' not in sys.modules, 'pydantic was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
