"""parse_valid_frame is parse_frame + validate_frame: same frame, or the same error and reason.

So is parse_valid_frames, whose batch fast path runs natively where the C extension is built
(it is wherever the tests run): every property below checks both.
"""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core import frame as frame_module
from senken_core.errors import FrameError
from senken_core.frame import (
    Frame,
    encode_frame,
    frame_checksum,
    parse_frame,
    parse_valid_frame,
    parse_valid_frames,
    validate_frame,
)
from senken_core.sensors import SENSOR_KINDS


def slow(line: bytes) -> Frame | tuple[str, str]:
    try:
        frame = parse_frame(line)
        validate_frame(frame)
    except FrameError as exc:
        return exc.reason, str(exc)
    return frame


def fast(line: bytes) -> Frame | tuple[str, str]:
    try:
        single: Frame | tuple[str, str] = parse_valid_frame(line)
    except FrameError as exc:
        single = exc.reason, str(exc)
    batch = parse_valid_frames([line, line])[1]  # the native batch path
    as_tuple = (batch.reason, str(batch)) if isinstance(batch, FrameError) else batch
    assert as_tuple == single
    return single


@st.composite
def frames_of_known_kinds(draw: st.DrawFn) -> Frame:
    kind = SENSOR_KINDS[draw(st.sampled_from(sorted(SENSOR_KINDS)))]
    # values around and beyond the channel bounds
    values = tuple(
        (c.name, draw(st.one_of(st.integers(c.minimum, c.maximum),
                                st.sampled_from([c.minimum - 1, c.maximum + 1, 0, -1]),
                                st.integers(-(10**19), 10**19))))
        for c in kind.channels
    )
    counter = draw(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([2**32, 10**10 - 1])))
    return Frame(counter, draw(st.integers(0, 10**19)), kind.name, values)


def sealed(body: bytes, tail: bytes = b"\r\n") -> bytes:
    return b"$" + body + b"*" + frame_checksum(body).encode() + tail


@settings(max_examples=400)
@given(frames_of_known_kinds(), st.sampled_from([b"", b"\r", b"\r\n", b"\n", b"\r\r\n"]))
def test_encoded_frames_agree(frame: Frame, tail: bytes) -> None:
    line = encode_frame(frame)[:-2] + tail
    assert fast(line) == slow(line)


@settings(max_examples=400)
@given(frames_of_known_kinds(), st.data())
def test_mutated_bodies_agree(frame: Frame, data: st.DataObject) -> None:
    """Any changed, inserted or removed byte in the body, resealed with a valid checksum."""
    body = bytearray(encode_frame(frame)[1:-11])
    at = data.draw(st.integers(0, len(body) - 1))
    action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
    byte = data.draw(st.sampled_from([*b"0123456789-+=,$*_ az\r\n", 0xFF]))
    if action == "replace":
        body[at] = byte
    elif action == "insert":
        body.insert(at, byte)
    else:
        del body[at]
    prefix = data.draw(st.sampled_from([b"", b"junk", b"$", b"*"]))
    line = prefix + sealed(bytes(body))
    assert fast(line) == slow(line)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_agree(line: bytes) -> None:
    assert fast(line) == slow(line)


@pytest.mark.parametrize(
    "body",
    [
        b"SK1,1,2,elec_meter,energy_export_wh=1,power_w=-0,voltage_dv=1",
        b"SK1,01,2,elec_meter,energy_export_wh=1,power_w=0,voltage_dv=1",
        b"SK1,4294967296,2,elec_meter,energy_export_wh=1,power_w=0,voltage_dv=1",
        b"SK1,1,2,elec_meter,power_w=0,energy_export_wh=1,voltage_dv=1",
        b"SK1,1,2,elec_meter,energy_export_wh=1,power_w=0",
        b"SK1,1,2,elec_meter,energy_export_wh=1,power_w=0,voltage_dv=4000001",
        b"SK1,1,2,wind,speed=1",
        b"SK2,1,2,elec_meter,energy_export_wh=1,power_w=0,voltage_dv=1",
    ],
)
def test_edge_cases_agree(body: bytes) -> None:
    line = sealed(body)
    result = fast(line)
    assert result == slow(line) and isinstance(result, tuple)


def test_a_good_frame_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    good = sealed(b"SK1,7,1700000000000,elec_meter,energy_export_wh=1,power_w=-5,voltage_dv=2300")
    expected = slow(good)
    monkeypatch.setattr(frame_module, "parse_frame", None)  # the slow path would now fail
    assert parse_valid_frame(good) == expected


def test_a_bad_checksum_keeps_its_reason() -> None:
    body = b"SK1,7,1700000000000,elec_meter,energy_export_wh=1,power_w=-5,voltage_dv=2300"
    line = b"$" + body + b"*" + f"{zlib.crc32(body) ^ 1:08X}".encode() + b"\r\n"
    assert fast(line) == slow(line) and fast(line)[0] == "checksum"  # type: ignore[index]


def test_a_batch_mixes_native_and_python_results_in_order() -> None:
    good = [sealed(f"SK1,{i},1700000000000,elec_meter,energy_export_wh={i},power_w=-5,"
                   f"voltage_dv=2300".encode()) for i in range(5)]
    lines = [good[0], b"garbage", good[1], b"", sealed(b"SK1,9,2,wind,speed=1"), good[2]]
    out = parse_valid_frames(lines)
    assert [getattr(r, "counter", None) for r in out] == [0, None, 1, None, None, 2]
    assert [getattr(r, "reason", None) for r in out] == [None, "syntax", None, "syntax",
                                                         "unknown_kind", None]
    assert all(type(out[i]) is Frame for i in (0, 2, 5))
    with pytest.raises(AttributeError):  # frames from the native path are frozen too
        out[0].counter = 1  # type: ignore[union-attr, misc]
