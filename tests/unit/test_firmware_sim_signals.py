"""Value generators and replay mapping (no pty involved)."""

from __future__ import annotations

import csv
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.replay import (
    DATA_DIR,
    Replayer,
    ReplayError,
    ReplaySpec,
    bundled_series,
    load_series,
)
from firmware_sim.signals import TYPICAL_RANGES, clamp, make_generator
from senken_core.frame import Frame, encode_frame, parse_frame, validate_frame
from senken_core.sensors import SENSOR_KINDS

DAY0 = 1_750_000_000 - 1_750_000_000 % 86_400


def test_every_kind_has_a_generator_and_every_channel_a_typical_band():
    for kind in SENSOR_KINDS.values():
        assert make_generator(kind.name).kind is kind
        for channel in kind.channels:
            low, high = TYPICAL_RANGES[channel.name]
            assert channel.minimum <= low < high <= channel.maximum
    with pytest.raises(KeyError, match="known kinds"):
        make_generator("toaster")


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(sorted(SENSOR_KINDS)),
    seed=st.integers(0, 2**32),
    start=st.floats(0, 4e9),
    step=st.floats(0, 10_000),
)
def test_values_are_integers_in_range_and_frames_validate(kind, seed, start, step):
    gen = make_generator(kind, seed)
    for i in range(50):
        t = start + i * step
        values = gen.values(t, step)
        assert all(isinstance(v, int) for _, v in values)
        frame = Frame(i, int(t * 1000), kind, values)
        assert validate_frame(parse_frame(encode_frame(frame))).name == kind


def test_solar_curve_peaks_at_noon_and_draws_power_at_night():
    gen = make_generator("elec_meter", 1)
    power = {h: dict(gen.values(DAY0 + h * 3600, 3600))["power_w"] for h in range(24)}
    assert all(power[h] < 0 for h in (0, 3, 20, 23))
    assert power[12] > power[9] > power[7] > 0
    assert 300_000 <= power[12] <= 1_000_000


def test_soil_flux_follows_temperature_through_the_day():
    gen = make_generator("soil_co2", 2)
    day = [dict(gen.values(DAY0 + h * 3600, 3600)) for h in range(24)]
    assert day[14]["soil_temp_dc"] > day[2]["soil_temp_dc"]
    assert day[14]["co2_flux_nmol_m2_s"] > day[2]["co2_flux_nmol_m2_s"]


def test_clamp():
    channel = SENSOR_KINDS["biogas_flare"].channels[1]  # ch4_bp 0..10000
    assert clamp(channel, 12.6) == 13
    assert clamp(channel, -5) == 0
    assert clamp(channel, 10**12) == 10_000
    assert clamp(channel, math.inf) == 10_000
    assert clamp(channel, -math.inf) == 0
    assert clamp(channel, math.nan) == 0


# -- replay -----------------------------------------------------------------------------------


def test_bundled_series_have_licence_and_readme():
    assert bundled_series() == [
        "nab/ec2_request_latency_system_failure.csv",
        "nab/machine_temperature_system_failure.csv",
        "nab/nyc_taxi.csv",
    ]
    assert "Numenta" in (DATA_DIR / "nab" / "LICENSE.txt").read_text()
    assert "MIT" in (DATA_DIR / "nab" / "README.md").read_text()


@pytest.mark.parametrize("name", ["nab/nyc_taxi.csv", "nyc_taxi.csv", "nyc_taxi"])
def test_bundled_names(name):
    assert len(load_series(name)) == 10_320


def test_replay_maps_the_bundled_csv_linearly():
    with (DATA_DIR / "nab" / "machine_temperature_system_failure.csv").open() as fh:
        xs = [float(row["value"]) for row in csv.DictReader(fh)]
    spec = ReplaySpec("machine_temperature_system_failure", "flare_temp_dc", low=8000, high=10_000)
    replayer = Replayer.load(spec, "biogas_flare")
    lo, hi = min(xs), max(xs)
    for slot in (0, 1, 2, 500, 22_694):
        assert replayer.value(slot) == round(8000 + (xs[slot] - lo) / (hi - lo) * 2000)
    assert replayer.value(len(xs)) == replayer.value(0)  # loops
    assert {replayer.value(i) for i in range(len(xs))} >= {8000, 10_000}


def test_replay_defaults_to_the_typical_band_and_start_shifts():
    spec = ReplaySpec("nyc_taxi", "ch4_bp", start=3)
    replayer = Replayer.load(spec, "biogas_flare")
    assert (replayer.low, replayer.high) == TYPICAL_RANGES["ch4_bp"]
    assert replayer.value(0) == replayer.map(replayer.series[3])


def test_constant_series_maps_to_low(tmp_path):
    path = tmp_path / "flat.csv"
    path.write_text("t,v\n1,5\n2,5\n")
    assert Replayer.load(ReplaySpec(path, "ch4_bp", 100, 200), "biogas_flare").value(1) == 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nab/nyc_taxi.csv:power_w", ReplaySpec("nab/nyc_taxi.csv", "power_w")),
        ("a.csv:ch4_bp:5000:7000", ReplaySpec("a.csv", "ch4_bp", 5000, 7000)),
        ("c:/x/a.csv:ch4_bp", ReplaySpec("c:/x/a.csv", "ch4_bp")),
    ],
)
def test_replay_spec_parse(text, expected):
    assert ReplaySpec.parse(text) == expected


@pytest.mark.parametrize("text", ["", "nochannel", ":power_w", "a.csv:"])
def test_replay_spec_parse_errors(text):
    with pytest.raises(ReplayError):
        ReplaySpec.parse(text)


def test_replay_errors(tmp_path):
    with pytest.raises(ReplayError, match="not found"):
        Replayer.load(ReplaySpec(tmp_path / "missing.csv", "power_w"), "elec_meter")
    with pytest.raises(ReplayError, match="not a channel of elec_meter"):
        Replayer.load(ReplaySpec("nyc_taxi", "ch4_bp"), "elec_meter")
    with pytest.raises(ReplayError, match="cumulative"):
        Replayer.load(ReplaySpec("nyc_taxi", "energy_export_wh"), "elec_meter")
    bad = tmp_path / "bad.csv"
    bad.write_text("t,v\n1,2\n2,oops\n")
    with pytest.raises(ReplayError, match=r"bad.csv:3"):
        load_series(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("t,v\n")
    with pytest.raises(ReplayError, match="no values"):
        load_series(empty)
