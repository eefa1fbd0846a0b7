"""The anomaly-model runtime (senken_core.anomaly) and the deterministic model build."""

from __future__ import annotations

import hashlib
import json
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


def test_infer_shapes_and_range(model: AnomalyModel) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, model.window)).astype(np.float32)
    out = model.infer(x)
    assert out.shape == (7,) and out.dtype == np.float32
    assert np.all((out >= 0.0) & (out <= 1.0))
    assert np.array_equal(model.infer(x[:3]), out[:3])  # per-row result independent of B
    big = rng.normal(size=(300, model.window)).astype(np.float32)
    whole = model.infer(big)  # above the padded sizes: runs at B = 300
    for b in (1, 2, 5, 17, 129, 256):
        assert np.array_equal(model.infer(big[:b]), whole[:b])
    assert model.infer(np.zeros((0, model.window), dtype=np.float32)).shape == (0,)
    with pytest.raises(ValueError):
        model.infer(np.zeros((2, model.window + 1), dtype=np.float32))


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
