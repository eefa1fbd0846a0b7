"""The NAB scorer (edge_agent.model.nab) and the `senken model` CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.model import nab
from edge_agent.model.cli import model_group

REPO = Path(__file__).resolve().parents[2]
NAB_DIR = REPO / "data" / "nab"


# ------------------------------------------------------------------------ hand-computed score


def test_scaled_sigmoid_reference_points() -> None:
    assert nab.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert nab.scaled_sigmoid(0.0) == 0.0
    assert nab.scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(3.0) == -1.0
    assert nab.scaled_sigmoid(7.0) == -1.0


def test_probationary_length() -> None:
    assert nab.probationary_length(40) == 6
    assert nab.probationary_length(4032) == 604
    assert nab.probationary_length(100_000) == 750


def _tiny_case() -> tuple[np.ndarray, list[tuple[int, int]]]:
    # 40 rows: probation = floor(0.15 * 40) = 6 rows; one window, rows 20..24 (width 5)
    scores = np.zeros(40)
    scores[3] = 1.0  # inside the probationary period: ignored
    scores[10] = 1.0  # FP before any window: -0.11
    scores[22] = 1.0  # first detection in the window, 3rd of 5 rows
    scores[23] = 1.0  # later detection in the same window: adds nothing
    scores[30] = 1.0  # FP 6 rows after the window's right edge
    return scores, [(20, 24)]


def test_hand_computed_score() -> None:
    scores, windows = _tiny_case()
    res = nab.score_corpus([("tiny.csv", scores, windows)], threshold=0.5)
    # TP: scaledSigmoid(-(24 - 22 + 1) / 5) / scaledSigmoid(-1)
    #     = (2 / (1 + e^-3) - 1) / (2 / (1 + e^-5) - 1) = 0.905148 / 0.986614 = 0.917429
    # FP before:  -0.11
    # FP after:   0.11 * scaledSigmoid(|24 - 30| / (5 - 1)) = 0.11 * (2 / (1 + e^7.5) - 1)
    #           = 0.11 * -0.998894 = -0.109878
    expected = 0.917429 - 0.11 - 0.109878
    assert res.raw == pytest.approx(expected, abs=1e-5)
    assert res.null == -1.0
    assert res.perfect == 1.0
    assert res.normalised == pytest.approx(100 * (expected + 1) / 2, abs=1e-3)
    f = res.per_file[0]
    assert (f.tp, f.fp, f.fn) == (1, 2, 0)
    # optimising the threshold over {0, 1} picks 1.0: detecting everything is far worse
    best = nab.score_corpus([("tiny.csv", scores, windows)])
    assert best.threshold == 1.0
    assert best.raw == pytest.approx(expected, abs=1e-5)


def test_missed_window_and_probation_only_fp() -> None:
    scores = np.zeros(40)
    scores[2] = 1.0  # probation only
    res = nab.score_corpus([("t.csv", scores, [(20, 24)])], threshold=0.5)
    assert res.raw == -1.0
    assert res.normalised == 0.0


def test_windows_map_timestamps_to_rows() -> None:
    t0 = datetime(2020, 1, 1)
    ts = [t0 + timedelta(minutes=5 * i) for i in range(10)]
    rows = nab.windows_to_rows(ts, [(ts[2], ts[4]), (t0 + timedelta(minutes=31), ts[9])])
    assert rows == [(2, 4), (7, 9)]


# ------------------------------------------------------------------------ property-based


@st.composite
def corpora(draw: st.DrawFn) -> list[tuple[str, np.ndarray, list[tuple[int, int]]]]:
    out = []
    for f in range(draw(st.integers(1, 3))):
        n = draw(st.integers(20, 80))
        prob = math.ceil(nab.probationary_length(n))
        wins: list[tuple[int, int]] = []
        pos = prob + draw(st.integers(0, 5))
        while pos < n - 1 and draw(st.booleans()):
            end = min(n - 1, pos + draw(st.integers(1, 8)))
            wins.append((pos, end))
            pos = end + 1 + draw(st.integers(1, 6))
        levels = draw(st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0]), min_size=n, max_size=n))
        out.append((f"f{f}.csv", np.array(levels), wins))
    return out


@settings(max_examples=60, deadline=None)
@given(corpora())
def test_normalised_score_bounds(
    corpus: list[tuple[str, np.ndarray, list[tuple[int, int]]]],
) -> None:
    if not any(w for _, _, w in corpus):
        return
    perfect = []
    for name, s, wins in corpus:
        p = np.zeros(len(s))
        for a, _ in wins:
            p[a] = 1.0
        perfect.append((name, p, wins))
    assert nab.score_corpus(perfect).normalised == pytest.approx(100.0)
    null = [(n, np.zeros(len(s)), w) for n, s, w in corpus]
    assert nab.score_corpus(null, threshold=0.5).normalised == pytest.approx(0.0)  # detects nothing
    res = nab.score_corpus(corpus)
    assert res.normalised <= 100.0 + 1e-9
    assert res.normalised >= -1e-9  # the optimiser can always fall back to detecting nothing
    # the optimised threshold is the best of all thresholds (brute force)
    levels = sorted({float(x) for _, s, _ in corpus for x in s} | {1.1}, reverse=True)
    brute = max(nab.score_corpus(corpus, threshold=t).raw for t in levels)
    assert res.raw == pytest.approx(brute)


# ------------------------------------------------------------------------ reference detectors


def test_reference_detectors_are_deterministic() -> None:
    v = np.sin(np.arange(300) / 5.0)
    a, b = nab.random_detector(v), nab.random_detector(v)
    assert np.array_equal(a, b) and a.min() >= 0.0 and a.max() < 1.0
    g = nab.windowed_gaussian_detector(np.concatenate([v, [50.0]]))
    assert g[-1] == 1.0  # far beyond 7 sigma
    assert g[10:-1].max() < 1.0


def test_integer_scale() -> None:
    assert nab.integer_scale(["1", "20", "3"]) == 0
    assert nab.integer_scale(["0.5", "1.25"]) == 2
    assert nab.to_integers(["0.5", "1.25", "-2"], 2) == [50, 125, -200]
    assert nab.integer_scale(["123456789.123456789"]) < 9  # capped below 2**53


# ------------------------------------------------------------------------ CLI


def _small_copy(tmp_path: Path, rows: int = 900) -> Path:
    src = NAB_DIR / "realKnownCause" / "ec2_request_latency_system_failure.csv"
    data = tmp_path / "nab"
    (data / "realKnownCause").mkdir(parents=True)
    with src.open() as fh:
        lines = fh.readlines()[: rows + 1]
    (data / "realKnownCause" / src.name).write_text("".join(lines))
    first, last = lines[1].split(",")[0], lines[-1].split(",")[0]
    mid = lines[rows // 2 + 1].split(",")[0]
    mid_end = lines[rows // 2 + 40].split(",")[0]
    art = data / "artificialNoAnomaly"
    art.mkdir()
    shutil.copy(NAB_DIR / "artificialNoAnomaly" / "art_flatline.csv", art / "art_flatline.csv")
    windows = {
        f"realKnownCause/{src.name}": [[mid + ".000000", mid_end + ".000000"]],
        "artificialNoAnomaly/art_flatline.csv": [],
    }
    (data / "combined_windows.json").write_text(json.dumps(windows))
    assert first < last
    return data


def test_cli_nab_writes_results(tmp_path: Path) -> None:
    data = _small_copy(tmp_path)
    out = tmp_path / "results"
    res = CliRunner().invoke(model_group, ["nab", str(data), str(out)])
    assert res.exit_code == 0, res.output
    assert "NAB standard profile: score" in res.output
    assert "[1/2]" in res.output and "[2/2]" in res.output
    f = out / "senken" / "realKnownCause" / "senken_ec2_request_latency_system_failure.csv"
    with f.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["timestamp", "value", "anomaly_score", "label"]
    assert len(rows) == 901
    labels = [int(r[3]) for r in rows[1:]]
    assert sum(labels) == 40 and labels[450] == 1 and labels[0] == 0
    assert all(0.0 <= float(r[2]) <= 1.0 for r in rows[1:])
    assert (out / "senken" / "artificialNoAnomaly" / "senken_art_flatline.csv").is_file()


def test_cli_nab_without_windows_labels_zero(tmp_path: Path) -> None:
    data = _small_copy(tmp_path, rows=400)
    (data / "combined_windows.json").unlink()
    out = tmp_path / "results"
    res = CliRunner().invoke(model_group, ["nab", str(data), str(out), "--detector", "random"])
    assert res.exit_code == 0, res.output
    assert "NAB standard profile" not in res.output
    f = out / "random" / "artificialNoAnomaly" / "random_art_flatline.csv"
    with f.open() as fh:
        assert {r[3] for r in list(csv.reader(fh))[1:]} == {"0"}


def test_cli_nab_bad_input(tmp_path: Path) -> None:
    res = CliRunner().invoke(model_group, ["nab", str(tmp_path / "nope"), str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "not found" in res.output and "Traceback" not in res.output
    data = tmp_path / "bad"
    data.mkdir()
    (data / "x.csv").write_text("timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00,abc\n")
    res = CliRunner().invoke(model_group, ["nab", str(data), str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "x.csv:3" in res.output and "abc" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_cli_info() -> None:
    res = CliRunner().invoke(model_group, ["info"])
    assert res.exit_code == 0, res.output
    meta = json.loads((REPO / "senken_core" / "models" / "anomaly-v2.json").read_text())
    assert meta["sha256"] in res.output
    assert f"window:    {meta['window']}" in res.output
