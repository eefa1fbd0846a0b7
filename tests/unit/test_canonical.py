"""Canonical encoding: round trip, strictness, and that any changed byte breaks a signature."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core import canonical
from senken_core.errors import EncodingError, SignatureError
from senken_core.keys import READING_TAG, DeviceKey, verify_signature
from senken_core.reading import Reading

ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
scalars = st.one_of(ints, st.booleans(), st.none(), st.binary(max_size=40), st.text(max_size=20))
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@given(values)
def test_round_trip(value: canonical.Value) -> None:
    data = canonical.encode(value)
    assert canonical.decode(data) == value
    assert canonical.encode(canonical.decode(data)) == data


@given(st.binary(max_size=64))
def test_decode_accepts_only_canonical_bytes(data: bytes) -> None:
    try:
        value = canonical.decode(data)
    except EncodingError:
        return
    assert canonical.encode(value) == data


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x18\x05", "non-shortest integer"),
        (b"\xa2\x61b\x01\x61a\x02", "unsorted map keys"),
        (b"\xa2\x61a\x01\x61a\x02", "duplicate key"),
        (b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00", "float"),
        (b"\x9f\x01\xff", "indefinite array"),
        (b"\xc1\x01", "tag"),
        (b"\x01\x02", "trailing bytes"),
        (b"\x62a", "truncated text"),
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "huge array length"),
    ],
)
def test_decode_rejects(data: bytes, why: str) -> None:
    with pytest.raises(EncodingError):
        canonical.decode(data)


def test_encode_rejects_values_outside_the_subset() -> None:
    for bad in (1.5, 2**64, {1: 2}, object()):
        with pytest.raises(EncodingError):
            canonical.encode(bad)  # type: ignore[arg-type]


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    seq = draw(st.integers(0, 2**63 - 1))
    return Reading(
        device=draw(st.from_regex(r"[a-z0-9][a-z0-9-]{2,20}", fullmatch=True)),
        seq=seq,
        ts_ms=draw(st.integers(0, 2**63 - 1)),
        kind=draw(st.sampled_from(["elec_meter", "biogas_flare", "soil_co2", "other_kind"])),
        frame_counter=draw(st.integers(0, 2**32 - 1)),
        device_ms=draw(st.integers(0, 2**63 - 1)),
        values=tuple(draw(st.dictionaries(
            st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
            st.integers(-(2**62), 2**62), min_size=1, max_size=4,
        )).items()),
        model_sha256=draw(st.binary(min_size=32, max_size=32)),
        anomaly_ppm=draw(st.integers(0, 1_000_000)),
        scored_since_seq=draw(st.integers(0, seq)),
    )


@given(readings())
def test_reading_fast_encoder_equals_generic_encoder(reading: Reading) -> None:
    generic = canonical.encode(
        {
            "v": 1, "device": reading.device, "seq": reading.seq, "ts_ms": reading.ts_ms,
            "kind": reading.kind, "frame_counter": reading.frame_counter,
            "device_ms": reading.device_ms, "values": dict(reading.values),
            "model_sha256": reading.model_sha256, "anomaly_ppm": reading.anomaly_ppm,
            "scored_since_seq": reading.scored_since_seq,
        }
    )
    assert reading.canonical() == generic
    decoded = Reading.from_canonical(generic)
    assert dict(decoded.values) == dict(reading.values)
    assert decoded.canonical() == generic


KEY = DeviceKey(bytes(range(32)))


@settings(max_examples=200)
@given(readings(), st.data())
def test_any_changed_byte_breaks_the_signature(reading: Reading, data: st.DataObject) -> None:
    signed = reading.sign(KEY)
    assert signed.verify(KEY.public_key) == Reading.from_canonical(signed.body)
    i = data.draw(st.integers(0, len(signed.body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = bytearray(signed.body)
    tampered[i] ^= flip
    with pytest.raises(SignatureError):
        verify_signature(KEY.public_key, READING_TAG, bytes(tampered), signed.signature)


def test_signature_is_domain_separated() -> None:
    reading = Reading("dev-1", 1, 2, "elec_meter", 3, 4, (("power_w", 5),), b"\0" * 32, 0, 0)
    body = reading.canonical()
    sig = KEY.sign(READING_TAG, body)
    with pytest.raises(SignatureError):
        verify_signature(KEY.public_key, b"senken/other/v1\x00", body, sig)
    other = DeviceKey(bytes(32))
    with pytest.raises(SignatureError):
        verify_signature(other.public_key, READING_TAG, body, sig)


@given(readings())
def test_reading_encoder_equals_reading_canonical(reading: Reading) -> None:
    from senken_core.reading import ReadingEncoder

    names = [name for name, _ in reading.values]
    encoder = ReadingEncoder(reading.device, reading.kind, names, reading.model_sha256,
                             reading.scored_since_seq)
    body = encoder.encode(reading.seq, reading.ts_ms, reading.frame_counter, reading.device_ms,
                          [v for _, v in reading.values], reading.anomaly_ppm)
    assert body == reading.canonical()


def test_scored_since_seq_cannot_exceed_seq() -> None:
    reading = Reading("dev-1", 5, 2, "elec_meter", 3, 4, (("power_w", 5),), b"\0" * 32, 0, 6)
    with pytest.raises(EncodingError, match="scored_since_seq"):
        Reading.from_canonical(reading.canonical())
