"""Fault script parsing: good scripts, bad scripts with clear errors, and property tests."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_sim.faults import (
    FAULT_PARAMS,
    FAULT_TYPES,
    Fault,
    FaultScriptError,
    check_faults,
    load_fault_script,
    parse_fault_script,
)
from senken_core.errors import SenkenError

TOML = """
[[faults]]
at_frame = 10
fault = "spike"
channel = "power_w"
factor = 5.0

[[faults]]
at_frame = 20
fault = "dropout"
frames = 3
lost = false

[[faults]]
at_frame = 30
fault = "clock_jump"
ms = -5000
"""


def test_toml_and_json_scripts_give_the_same_faults(tmp_path):
    from_toml = parse_fault_script(TOML)
    entries = [f.to_dict() for f in from_toml]
    from_json = parse_fault_script(json.dumps(entries))
    from_json_obj = parse_fault_script(json.dumps({"faults": entries}))
    assert from_toml == from_json == from_json_obj
    spike, dropout, jump = from_toml
    assert (spike.fault, spike.at_frame, spike.channel, spike.factor) == ("spike", 10, "power_w", 5)
    assert spike.frames == 1 and spike.offset == 0
    assert (dropout.frames, dropout.lost) == (3, False)
    assert jump.ms == -5000
    (tmp_path / "f.toml").write_text(TOML)
    (tmp_path / "f.json").write_text(json.dumps(entries))
    assert load_fault_script(tmp_path / "f.toml") == load_fault_script(tmp_path / "f.json")


def test_defaults_per_type():
    assert Fault(fault="spike", at_frame=0, channel="ch4_bp").factor == 10.0
    assert Fault(fault="spike", at_frame=0, channel="ch4_bp", offset=7).factor == 1.0
    assert Fault(fault="drift", at_frame=0, channel="ch4_bp", offset=100).frames == 100
    assert Fault(fault="stuck", at_frame=0).frames == 10
    assert Fault(fault="dropout", at_frame=0).lost is True
    assert Fault(fault="garbage", at_frame=0).length == 32
    assert Fault(fault="truncated", at_frame=0).line_end is False
    assert Fault(fault="unplug", at_frame=0).frames == 5
    assert Fault(fault="unplug", at_frame=0, frames=0).frames == 0
    assert set(FAULT_TYPES) == set(FAULT_PARAMS)


def test_empty_scripts_are_no_faults():
    assert parse_fault_script("") == []
    assert parse_fault_script("[]") == []
    assert parse_fault_script('{"faults": []}') == []


@pytest.mark.parametrize(
    ("script", "where", "words"),
    [
        ('[[faults]]\nat_frame = 1\nfault = "spik"\n', "faults[0].fault", "not one of"),
        ('[[faults]]\nfault = "reboot"\n', "faults[0].at_frame", "missing"),
        ('[[faults]]\nat_frame = -1\nfault = "reboot"\n', "faults[0].at_frame", "0.."),
        ('[[faults]]\nat_frame = true\nfault = "reboot"\n', "faults[0].at_frame", "integer"),
        ('[[faults]]\nat_frame = 1\nfault = "spike"\n', "faults[0].channel", "missing"),
        (
            '[[faults]]\nat_frame = 1\nfault = "spike"\nchannel = "nope"\n',
            "faults[0].channel",
            "not one of",
        ),
        (
            '[[faults]]\nat_frame = 1\nfault = "reboot"\nframes = 3\n',
            "faults[0].frames",
            "not a parameter of reboot",
        ),
        (
            '[[faults]]\nat_frame = 1\nfault = "dropout"\nlost = 1\n',
            "faults[0].lost",
            "true or false",
        ),
        (
            '[[faults]]\nat_frame = 1\nfault = "clock_jump"\nms = 1.5\n',
            "faults[0].ms",
            "integer",
        ),
        (
            '[[faults]]\nat_frame = 1\nfault = "garbage"\nlength = 100000\n',
            "faults[0].length",
            "1..200",
        ),
        (
            '[[faults]]\nat_frame = 1\nfault = "spike"\nchannel = "ch4_bp"\nkind = "soil_co2"\n',
            "faults[0].channel",
            "not a channel of soil_co2",
        ),
        ("faults = 3\n", "faults", "must be a list"),
        ("other = 3\n", "other", "unknown top-level key"),
        ("faults = [1]\n", "faults[0]", "table/object"),
        ('[{"at_frame": 1, "fault": "spike", "channel": "ch4_bp", "factor": NaN}]', ".factor", ""),
    ],
)
def test_bad_fields_name_entry_and_field(script, where, words):
    with pytest.raises(FaultScriptError) as info:
        parse_fault_script(script, source="s.toml")
    message = str(info.value)
    assert message.startswith("s.toml")
    assert where in message
    assert words in message


def test_syntax_errors_name_the_line():
    with pytest.raises(FaultScriptError) as info:
        parse_fault_script('[[faults]]\nat_frame = 1\nfault = "spike\n', source="f.toml")
    assert info.value.line == 3 and "line 3" in str(info.value)
    with pytest.raises(FaultScriptError) as info:
        parse_fault_script('[\n{"at_frame": 1,\n "fault": }]', source="f.json")
    assert info.value.line == 3 and "invalid JSON" in str(info.value)


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(FaultScriptError, match="cannot read"):
        load_fault_script(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[[faults]]")
    with pytest.raises(FaultScriptError, match="not UTF-8"):
        load_fault_script(bad)


def test_error_is_a_senken_error():
    assert issubclass(FaultScriptError, SenkenError)


def test_check_faults_filters_by_kind_and_device_and_checks_channels():
    faults = [
        Fault(fault="spike", at_frame=1, channel="power_w", kind="elec_meter"),
        Fault(fault="reboot", at_frame=2, device=1),
        Fault(fault="stuck", at_frame=3),
    ]
    assert check_faults(faults, "elec_meter", 0) == [faults[0], faults[2]]
    assert check_faults(faults, "soil_co2", 1) == [faults[1], faults[2]]
    with pytest.raises(FaultScriptError, match=r"faults\[0\]\.channel"):
        check_faults([Fault(fault="spike", at_frame=1, channel="power_w")], "soil_co2")


# -- property tests: any bad script gives FaultScriptError, never another exception -----------

_KEYS = st.sampled_from(
    [
        "fault",
        "at_frame",
        "channel",
        "frames",
        "factor",
        "offset",
        "ms",
        "length",
        "keep",
        "line_end",
        "lost",
        "kind",
        "device",
        "faults",
        "x",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([*FAULT_TYPES, "power_w", "ch4_bp", "elec_meter", "soil_co2", ""]),
    st.text(max_size=10),
)
_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=6)),
    max_leaves=20,
)


def _outcome(script: str | bytes) -> None:
    try:
        faults = parse_fault_script(script)
    except FaultScriptError as exc:
        assert str(exc)
        return
    assert all(isinstance(f, Fault) for f in faults)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text_gives_faults_or_fault_script_error(text):
    _outcome(text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_faults_or_fault_script_error(data):
    _outcome(data)


@settings(max_examples=300, deadline=None)
@given(_JSONISH)
def test_arbitrary_json_structures(data):
    _outcome(json.dumps(data, allow_nan=True))
    _outcome(json.dumps({"faults": data}, allow_nan=True))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


_TOML_ENTRY = st.dictionaries(
    _KEYS.filter(lambda k: k != "faults"), _SCALARS.filter(lambda v: v is not None), max_size=6
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TOML_ENTRY, max_size=4))
def test_arbitrary_toml_entries(entries):
    lines = []
    for entry in entries:
        lines.append("[[faults]]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in entry.items())
    _outcome("\n".join(lines))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_KEYS.filter(lambda k: k != "faults"), _SCALARS, max_size=6))
def test_programmatic_faults_raise_only_fault_script_error(kwargs):
    try:
        Fault(**kwargs)
    except FaultScriptError:
        pass
    except TypeError:
        # Python's own argument errors: an unknown keyword or a missing required one
        assert "x" in kwargs or not {"fault", "at_frame"} <= kwargs.keys()
