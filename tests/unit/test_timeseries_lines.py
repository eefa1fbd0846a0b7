"""Line-protocol lines of readings and attestations, read back by a parser written from the spec.

The parser follows the InfluxDB v2 line-protocol reference ("Elements", "Special characters"):
``measurement[,tag=value...] field=value[,field=value...] timestamp``; a backslash escapes the
next character where it is a comma, equals sign, space or backslash, and is literal otherwise.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ledger.timeseries import attestation_line, reading_line
from senken_core.attestation import Attestation
from senken_core.reading import Reading
from senken_core.sensors import SENSOR_KINDS

_ESCAPABLE = " ,=\\"


def _split(text: str, sep: str) -> list[str]:
    """Split at ``sep`` where it is not escaped; the parts keep their escapes."""
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 2
            continue
        if text[i] == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPABLE:
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _field_value(raw: str) -> int:
    assert raw[-1] in "iu", f"not an integer field value: {raw!r}"
    value = int(raw[:-1])
    assert raw[-1] == "i" or value >= 0
    return value


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, int], int]:
    """(measurement, tags, integer fields, timestamp) of one line; AssertionError if invalid."""
    assert "\n" not in line and "\r" not in line, "a line is one line"
    key, fields_raw, timestamp = _split(line, " ")
    measurement, *tag_parts = _split(key, ",")
    tags: dict[str, str] = {}
    for part in tag_parts:
        name, value = _split(part, "=")
        assert name and value, f"empty tag key or value in {part!r}"
        assert _unescape(name) not in tags, f"duplicate tag {name!r}"
        tags[_unescape(name)] = _unescape(value)
    fields: dict[str, int] = {}
    for part in _split(fields_raw, ","):
        name, value = _split(part, "=")
        assert name, "empty field key"
        assert _unescape(name) not in fields, f"duplicate field {name!r}"
        fields[_unescape(name)] = _field_value(value)
    assert fields, "a line has at least one field"
    return _unescape(measurement), tags, fields, int(timestamp)


def make_reading(**changes: object) -> Reading:
    base = Reading(device="pv-7-meter-1", seq=41, ts_ms=1_795_003_201_250, kind="elec_meter",
                   frame_counter=7, device_ms=123_456,
                   values=(("energy_export_wh", 1_250_000), ("power_w", -420),
                           ("voltage_dv", 2301)),
                   model_sha256=b"\x11" * 32, anomaly_ppm=1234, scored_since_seq=0)
    return replace(base, **changes)  # type: ignore[arg-type]


ATT_ID = b"\xaa" * 32


def test_reading_line_is_exactly_as_specified() -> None:
    assert reading_line(make_reading(), "pv-plant-7", ATT_ID) == (
        "reading,device=pv-7-meter-1,kind=elec_meter,project=pv-plant-7 "
        "energy_export_wh=1250000i,power_w=-420i,voltage_dv=2301i,anomaly_ppm=1234i "
        "1795003201250")


def test_attestation_line_is_exactly_as_specified() -> None:
    att = Attestation(project="pv-plant-7", device="pv-7-meter-1", window_start=1_795_003_200,
                      window_seconds=3600, methodology="CDM AMS-I.D", methodology_version=1,
                      readings_accepted=3598, readings_rejected=2, quantity=1_250_000,
                      co2e_mg=812_500, readings_root=bytes(32), model_hash=b"\x11" * 32)
    line = attestation_line(att, appended_at_ms=1_795_006_812_345)
    assert line == (
        "attestation,device=pv-7-meter-1,methodology=CDM\\ AMS-I.D,project=pv-plant-7 "
        "readings_accepted=3598i,readings_rejected=2i,quantity=1250000u,co2e_mg=812500u,"
        "window_start=1795003200i,appended_at_ms=1795006812345i 1795006800000")
    assert parse_line(line) == (
        "attestation",
        {"device": "pv-7-meter-1", "methodology": "CDM AMS-I.D", "project": "pv-plant-7"},
        {"readings_accepted": 3598, "readings_rejected": 2, "quantity": 1_250_000,
         "co2e_mg": 812_500, "window_start": 1_795_003_200,
         "appended_at_ms": 1_795_006_812_345},
        1_795_006_800_000)


@pytest.mark.parametrize(("raw", "escaped"), [
    ("a b", "a\\ b"), ("a,b", "a\\,b"), ("a=b", "a\\=b"), ("a\\b", "a\\\\b"),
    ("ends\\", "ends\\\\"), ("\\ ", "\\\\\\ "), ("x=1 y,z", "x\\=1\\ y\\,z"),
])
def test_special_characters_are_escaped(raw: str, escaped: str) -> None:
    line = reading_line(make_reading(kind=raw, values=((raw, 5),)), raw, ATT_ID)
    assert line == (f"reading,device=pv-7-meter-1,kind={escaped},project={escaped} "
                    f"{escaped}=5i,anomaly_ppm=1234i 1795003201250")
    _, tags, fields, _ = parse_line(line)
    assert tags["kind"] == tags["project"] == raw
    assert fields[raw] == 5


def test_a_newline_cannot_break_the_line() -> None:
    line = reading_line(make_reading(kind="a\nb\rc"), "pv-plant-7", ATT_ID)
    assert "kind=a\\nb\\rc," in line
    assert parse_line(line)[1]["kind"] == "a\\nb\\rc"  # not carried, but one valid line


@pytest.mark.parametrize(("reading", "project", "match"), [
    (make_reading(values=(("anomaly_ppm", 1),)), "p-1", "cannot be a field"),
    (make_reading(values=(("", 1),)), "p-1", "cannot be a field"),
    (make_reading(kind=""), "p-1", "tag kind is empty"),
    (make_reading(), "", "tag project is empty"),
    (make_reading(values=(("power_w", 2**63),)), "p-1", "int64"),
    (make_reading(values=(("power_w", -(2**63) - 1),)), "p-1", "int64"),
])
def test_what_no_line_can_carry_is_refused(reading: Reading, project: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reading_line(reading, project, ATT_ID)


def test_int64_limits_are_carried() -> None:
    line = reading_line(make_reading(values=(("a", 2**63 - 1), ("b", -(2**63)))), "p-1", ATT_ID)
    assert parse_line(line)[2] == {"a": 2**63 - 1, "b": -(2**63), "anomaly_ppm": 1234}


ids = st.from_regex(r"[a-z0-9][a-z0-9-]{2,62}", fullmatch=True)
# names the line protocol can carry: anything but newlines (test_a_newline_cannot_break_the_line)
names = st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=1,
                max_size=12)
int64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    if draw(st.booleans()):
        kind = draw(st.sampled_from(sorted(SENSOR_KINDS)))
        channels = list(SENSOR_KINDS[kind].channel_names)
    else:
        kind = draw(names)
        channels = draw(st.lists(names.filter(lambda n: n != "anomaly_ppm"), min_size=1,
                                 max_size=5, unique=True))
    seq = draw(st.integers(0, 2**63 - 1))
    return Reading(device=draw(ids), seq=seq, ts_ms=draw(st.integers(0, 2**63 - 1)), kind=kind,
                   frame_counter=draw(st.integers(0, 2**32)),
                   device_ms=draw(st.integers(0, 2**32)),
                   values=tuple((c, draw(int64)) for c in channels),
                   model_sha256=draw(st.binary(min_size=32, max_size=32)),
                   anomaly_ppm=draw(st.integers(0, 1_000_000)),
                   scored_since_seq=draw(st.integers(0, seq)))


@given(readings(), ids | names, st.binary(min_size=32, max_size=32))
@example(make_reading(kind="k\\", values=(("a\\", 1), ("b\\,", 2))), "p\\ q=", ATT_ID)
def test_any_reading_parses_back(reading: Reading, project: str, att_id: bytes) -> None:
    measurement, tags, fields, timestamp = parse_line(reading_line(reading, project, att_id))
    assert measurement == "reading"
    assert tags == {"device": reading.device, "kind": reading.kind, "project": project}
    assert fields == {**dict(reading.values), "anomaly_ppm": reading.anomaly_ppm}
    assert list(fields)[:-1] == [name for name, _ in reading.values]  # the reading's order
    assert timestamp == reading.ts_ms


attestations = st.builds(
    lambda p, d, w, ws, m, a, r, q, g: Attestation(p, d, w * ws, ws, m, 1, a, r, q, g,
                                                   bytes(32), bytes(32)),
    ids, ids, st.integers(0, 2**30), st.sampled_from([60, 900, 3600, 86400]), names,
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1))


@given(attestations, st.integers(0, 2**62))
def test_any_attestation_parses_back(att: Attestation, appended_at_ms: int) -> None:
    measurement, tags, fields, timestamp = parse_line(attestation_line(att, appended_at_ms))
    assert (measurement, timestamp) == ("attestation",
                                        (att.window_start + att.window_seconds) * 1000)
    assert tags == {"device": att.device, "methodology": att.methodology, "project": att.project}
    assert fields == {"readings_accepted": att.readings_accepted,
                      "readings_rejected": att.readings_rejected, "quantity": att.quantity,
                      "co2e_mg": att.co2e_mg, "window_start": att.window_start,
                      "appended_at_ms": appended_at_ms}
