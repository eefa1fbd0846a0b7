"""Reading.from_canonical's and decode_batch's fast paths give what the generic decoder gives.

``from_canonical`` reads a body through ``_batchsign.decode_reading`` where the C extension is
built (it is wherever the tests run), else through the Python twin ``_decode_fields``; both
give up on anything unusual, which the generic canonical decoder then decodes, or refuses with
its own error. Every property compares all three paths: the same Reading, or the same error.
"""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from senken_core import canonical
from senken_core import reading as reading_module
from senken_core.errors import EncodingError, PayloadError
from senken_core.reading import (
    MAX_BATCH_READINGS,
    Reading,
    SignedReading,
    decode_batch,
    decode_of_kind,
    encode_batch,
)
from senken_core.sensors import SENSOR_KINDS

Outcome = tuple[str, object]
NATIVE = reading_module._DECODE_READING


def outcome(decode: object, body: object) -> Outcome:
    try:
        return "ok", decode(body)  # type: ignore[operator]
    except (EncodingError, ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)


def python_fast(body: bytes) -> Reading:
    """from_canonical as it runs without the extension."""
    # not a stand-in for anything: switching the optional C decoder off runs the pure-Python
    # path that machines without a compiler use, so both paths are held to the same results
    with mock.patch.object(reading_module, "_DECODE_READING", None):
        return Reading.from_canonical(body)


def all_paths(body: object) -> Outcome:
    """The generic decoder's outcome, after checking every fast path agrees with it."""
    reference = outcome(Reading._from_canonical_generic, body)
    assert outcome(Reading.from_canonical, body) == reference
    assert outcome(python_fast, body) == reference
    fields = reading_module._decode_fields(body)  # type: ignore[arg-type]
    if NATIVE is not None:
        assert NATIVE(body) == fields  # type: ignore[arg-type]
    if fields is not None:  # a fast path only ever accepts what the generic one accepts
        assert reference[0] == "ok"
    # the validator's batch decoder: the same reading, or None, for every kind it is asked for
    for kind_name, kind in SENSOR_KINDS.items():
        [of_kind] = decode_of_kind(kind_name, [body])  # type: ignore[list-item]
        if of_kind is not None:
            assert reference == ("ok", of_kind)
            assert of_kind.kind == kind_name
            assert tuple(name for name, _ in of_kind.values) == kind.channel_names
        elif reference[0] == "ok" and fields is not None:  # it takes what the fast path takes
            decoded = reference[1]
            assert isinstance(decoded, Reading)
            assert (decoded.kind != kind_name
                    or tuple(name for name, _ in decoded.values) != kind.channel_names)
    return reference


def test_the_native_decoder_is_built_here() -> None:
    assert NATIVE is not None


ints = st.integers(-(2**64), 2**64 - 1) | st.sampled_from(
    [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
     -1, -24, -25, -256, -257, -(2**32), -(2**63), -(2**63) - 1, -(2**64)])
u63 = st.integers(0, 2**63 - 1) | st.sampled_from(
    [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1])
names = st.text(max_size=30) | st.sampled_from(["", "a", "é", "\u20ac" * 9, "x" * 24])


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    kind = draw(st.sampled_from(sorted(SENSOR_KINDS)) | names)
    known = SENSOR_KINDS.get(kind)
    if known is not None and draw(st.booleans()):
        channels = list(draw(st.permutations(known.channel_names)))
    elif known is not None and draw(st.booleans()):  # the kind's channels but one
        channels = list(known.channel_names[1:]) + draw(st.lists(names, max_size=1))
    else:
        channels = draw(st.lists(names, max_size=6))
    channels = list(dict.fromkeys(channels))  # distinct, as every encoder input
    seq = draw(u63)
    return Reading(
        device=draw(st.from_regex(r"[a-z0-9][a-z0-9-]{2,62}", fullmatch=True)),
        seq=seq,
        ts_ms=draw(u63),
        kind=kind,
        frame_counter=draw(u63),
        device_ms=draw(u63),
        values=tuple((name, draw(ints)) for name in channels),
        model_sha256=draw(st.binary(min_size=32, max_size=32)),
        anomaly_ppm=draw(st.integers(0, 1_000_000) | st.sampled_from([0, 23, 24, 1_000_000])),
        scored_since_seq=draw(st.integers(0, seq)),
    )


@settings(max_examples=300)
@given(readings())
def test_valid_bodies_decode_alike_on_every_path(reading: Reading) -> None:
    body = reading.canonical()
    result = all_paths(body)
    assert result[0] == "ok"
    decoded = result[1]
    assert isinstance(decoded, Reading)
    assert decoded.canonical() == body
    assert dict(decoded.values) == dict(reading.values)
    # the fast paths take every body the encoder makes (or the speed-up silently vanishes)
    assert reading_module._decode_fields(body) is not None
    for other in (bytearray(body), memoryview(body)):  # the generic path takes these
        assert outcome(Reading.from_canonical, other) == result


mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 9)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("append"), st.integers(0, 255), st.just(0)),
)


def mutate(body: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    b = bytearray(body)
    for op, at, arg in mutations:
        i = at % (len(b) + 1)
        if op == "set" and i < len(b):
            b[i] = arg
        elif op == "insert":
            b.insert(i, arg)
        elif op == "delete":
            del b[i : i + arg]
        elif op == "truncate":
            del b[i:]
        elif op == "append":
            b.append(at)
    return bytes(b)


@settings(max_examples=1000)
@given(readings(), st.lists(mutation, min_size=1, max_size=3))
def test_mutated_bodies_are_accepted_or_refused_alike(
    reading: Reading, mutations: list[tuple[str, int, int]]
) -> None:
    all_paths(mutate(reading.canonical(), mutations))


SAMPLE = Reading("pv-7-meter-1", 300, 1_795_000_000_000, "elec_meter", 301, 9_000,
                 (("energy_export_wh", 1_000_000), ("power_w", -5), ("voltage_dv", 2300)),
                 b"\x11" * 32, 17, 0)


@pytest.mark.parametrize(("old", "new"), [
    (b"\x01cseq", b"\xf5cseq"),  # "v": true (the generic path takes it: True == 1)
    (b"\x01cseq", b"\x02cseq"),  # schema 2
    (b"cseq\x19\x01\x2c", b"cseq\x1a\x00\x00\x01\x2c"),  # seq not in its shortest form
    (b"cseq\x19\x01\x2c", b"cseq\x3b\x00\x00\x00\x00\x00\x00\x01\x2c"),  # seq negative
    (b"cseq\x19\x01\x2c", b"cseq\x1b\x80\x00\x00\x00\x00\x00\x00\x00"),  # seq 2**63
    (b"gpower_w\x24", b"gpower_w\x38\x04"),  # value not in its shortest form
    (b"gpower_w\x24", b"gpower_w\xf5"),  # value true
    (b"gpower_w\x24", b"gpower_w\x3b\xff\xff\xff\xff\xff\xff\xff\xff"),  # value -2**64
    (b"jvoltage_dv", b"jvoltage_du"),  # channel keys out of canonical order
    (b"jvoltage_dv", b"gpower_w"),  # a duplicate channel
    (b"\xa3gpower_w", b"\xa2gpower_w"),  # values map one short
    (b"\x58\x20", b"\x58\x1f"),  # a 31-byte model hash
    (b"kanomaly_ppm\x11", b"kanomaly_ppm\x1a\x00\x0f\x42\x41"),  # ppm 1000001
    (b"scored_since_seq\x00", b"scored_since_seq\x19\x01\x2d"),  # since above seq
    (b"lpv-7-meter-1", b"lpv-7-Meter-1"),  # not a device id
    (b"jelec_meter", b"jelec\xffmeter"),  # kind not UTF-8
    (b"jelec_meter", b"x\x0aelec_meter"),  # kind's length not in its shortest form
])
def test_non_canonical_and_invalid_bodies(old: bytes, new: bytes) -> None:
    body = SAMPLE.canonical()
    assert body.count(old) == 1
    all_paths(body.replace(old, new))


def test_the_sample_and_unusual_layouts() -> None:
    assert all_paths(SAMPLE.canonical()) == ("ok", SAMPLE)
    assert all_paths(SAMPLE.canonical() + b"\x00")[0] == "EncodingError"
    assert all_paths(b"")[0] == "EncodingError"
    assert all_paths("text")[0] == "EncodingError"
    many = Reading("dev-1", 5, 6, "k", 7, 8, tuple((f"c{i:02d}", i) for i in range(30)),
                   b"\x00" * 32, 0, 5)
    assert reading_module._decode_fields(many.canonical()) is not None
    assert all_paths(many.canonical()) == ("ok", many)
    long_kind = Reading("dev-1", 5, 6, "k" * 300, 7, 8, (), b"\x00" * 32, 0, 5)
    assert all_paths(long_kind.canonical()) == ("ok", long_kind)  # taken by the generic path


# --- decode_batch ----------------------------------------------------------------------------

def batch_outcome(decode: object, payload: object) -> Outcome:
    try:
        return "ok", decode(payload)  # type: ignore[operator]
    except PayloadError as exc:
        return "PayloadError", str(exc)


def batch_paths(payload: object) -> Outcome:
    reference = batch_outcome(reading_module._decode_batch_generic, payload)
    assert batch_outcome(decode_batch, payload) == reference
    if reading_module._split_batch(payload) is not None:  # type: ignore[arg-type]
        assert reference[0] == "ok"
    return reference


signed_readings = st.builds(SignedReading, st.binary(max_size=300) | st.sampled_from(
    [b"", b"\x00" * 23, b"\x00" * 24, b"\x00" * 255, b"\x00" * 256]),
    st.binary(min_size=64, max_size=64))


@settings(max_examples=200)
@given(st.lists(signed_readings, min_size=1, max_size=30))
def test_batches_split_alike(batch: list[SignedReading]) -> None:
    payload = encode_batch(batch)
    assert batch_paths(payload) == ("ok", batch)
    assert reading_module._split_batch(payload) == batch


@settings(max_examples=500)
@given(st.lists(signed_readings, min_size=1, max_size=5),
       st.lists(mutation, min_size=1, max_size=3))
@example([SignedReading(b"x", b"s" * 64)], [("set", 10, 0x98)])
@example([SignedReading(b"x", b"s" * 64)], [("set", 10, 0x80)])
def test_mutated_batches_split_alike(
    batch: list[SignedReading], mutations: list[tuple[str, int, int]]
) -> None:
    payload = mutate(encode_batch(batch), mutations)
    assume(payload != encode_batch(batch))
    batch_paths(payload)


def test_large_batches() -> None:
    batch = [SignedReading(bytes([i % 256]) * (i % 70), bytes(64))
             for i in range(MAX_BATCH_READINGS)]
    assert batch_paths(encode_batch(batch)) == ("ok", batch)
    for n in (23, 24, 255, 256):
        assert batch_paths(encode_batch(batch[:n])) == ("ok", batch[:n])
    too_many = canonical.encode({"v": 1, "readings": [[b"", bytes(64)]] * 513})
    assert batch_paths(too_many)[0] == "PayloadError"
    empty = canonical.encode({"v": 1, "readings": []})
    assert batch_paths(empty)[0] == "PayloadError"
    big_body = [SignedReading(b"\x01" * 70_000, bytes(64))]
    assert batch_paths(encode_batch(big_body)) == ("ok", big_body)  # the generic path's
    assert batch_paths(bytearray(encode_batch(batch[:3]))) == ("ok", batch[:3])
