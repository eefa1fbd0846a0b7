"""The serial frame parser: round trip, and every malformed line gives a FrameError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from senken_core.errors import FrameError
from senken_core.frame import Frame, encode_frame, parse_frame, validate_frame
from senken_core.sensors import SENSOR_KINDS


@st.composite
def valid_frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.sampled_from(sorted(SENSOR_KINDS.values(), key=lambda k: k.name)))
    values = tuple(
        (c.name, draw(st.integers(c.minimum, c.maximum))) for c in kind.channels
    )
    return Frame(draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**45)), kind.name, values)


@given(valid_frames())
def test_round_trip(frame: Frame) -> None:
    line = encode_frame(frame)
    assert parse_frame(line) == frame
    assert validate_frame(parse_frame(line)).name == frame.kind


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(line: bytes) -> None:
    try:
        frame = parse_frame(line)
    except FrameError as exc:
        assert exc.reason in {"too_long", "syntax", "checksum", "version"}
        return
    try:
        validate_frame(frame)
    except FrameError as exc:
        assert exc.reason in {"unknown_kind", "channels", "range"}


@given(valid_frames(), st.data())
def test_any_changed_byte_is_detected(frame: Frame, data: st.DataObject) -> None:
    line = bytearray(encode_frame(frame))
    i = data.draw(st.integers(1, len(line) - 3))  # between '$' and the line end
    new = data.draw(st.integers(0, 255).filter(lambda b: b != line[i]))
    line[i] = new
    with pytest.raises(FrameError):
        parsed = parse_frame(bytes(line))
        validate_frame(parsed)
        assert parsed == frame  # pragma: no cover - a surviving frame must differ


@given(valid_frames(), st.integers(1, 60))
def test_truncated_frames_are_rejected(frame: Frame, cut: int) -> None:
    line = encode_frame(frame)
    with pytest.raises(FrameError):
        parse_frame(line[: max(1, len(line) - 2 - cut)])


def test_reasons() -> None:
    good = encode_frame(Frame(1, 2, "soil_co2", (("co2_flux_nmol_m2_s", 1000),
                                                   ("soil_temp_dc", 150), ("soil_vwc_pm", 300))))
    with pytest.raises(FrameError, match="checksum"):
        parse_frame(good.replace(b"1000", b"1001"))
    with pytest.raises(FrameError) as info:
        validate_frame(parse_frame(encode_frame(Frame(1, 2, "soil_co2", (("soil_vwc_pm", 2000),
                                                                           ("x", 1))))))
    assert info.value.reason == "channels"
    with pytest.raises(FrameError) as info:
        validate_frame(parse_frame(encode_frame(Frame(1, 2, "soil_co2", (
            ("co2_flux_nmol_m2_s", 1000), ("soil_temp_dc", 150), ("soil_vwc_pm", 2000))))))
    assert info.value.reason == "range"
    with pytest.raises(FrameError) as info:
        parse_frame(b"$" + b"A" * 300 + b"\r\n")
    assert info.value.reason == "too_long"
