"""The hot path's batch calls give exactly what the one-at-a-time reference code gives.

``DeviceKey.sign_many`` and ``ReadingEncoder.encode_many`` run natively where the optional C
extension (senken_core/_batchsign.c) is built, which it is wherever the tests run (.ci/run
installs a compiler); each is checked against the Python code it replaces.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.outbox import Outbox
from senken_core import canonical
from senken_core.keys import NATIVE_BATCH_SIGNING, READING_TAG, DeviceKey, verify_signature
from senken_core.reading import _ENCODE_MANY, ReadingEncoder

KEY = DeviceKey(b"\x07" * 32)
CHANNELS = ["energy_export_wh", "power_w", "voltage_dv"]


def test_the_native_extension_is_built_here() -> None:
    # CI must measure and test the native path; a device without a compiler falls back
    assert NATIVE_BATCH_SIGNING and _ENCODE_MANY is not None


@settings(max_examples=60)
@given(st.lists(st.binary(max_size=300), max_size=40))
def test_sign_many_equals_sign_and_verifies(bodies: list[bytes]) -> None:
    signatures = KEY.sign_many(READING_TAG, bodies)
    assert signatures == [KEY.sign(READING_TAG, body) for body in bodies]
    for body, sig in zip(bodies, signatures, strict=True):
        verify_signature(KEY.public_key, READING_TAG, body, sig)


def test_sign_many_refuses_what_is_not_bytes() -> None:
    with pytest.raises(TypeError, match=r"bodies\[1\]"):
        KEY.sign_many(READING_TAG, [b"ok", "text"])  # type: ignore[list-item]
    assert KEY.sign_many(READING_TAG, []) == []


def test_sign_many_on_threads_at_once() -> None:
    bodies = [bytes([i]) * 50 for i in range(200)]
    expected = [KEY.sign(READING_TAG, b) for b in bodies]
    results: list[list[bytes]] = []

    def work() -> None:
        results.append(KEY.sign_many(READING_TAG, bodies))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [expected] * 4


ints = st.integers(-(2**63), 2**63 - 1) | st.sampled_from(
    [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53, -1, -24, -25, -256, -257])
readings = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**50),
                     st.lists(ints, min_size=3, max_size=3), st.integers(0, 1_000_000))


@settings(max_examples=100)
@given(st.integers(0, 2**40), st.integers(0, 2**50), st.lists(readings, max_size=20))
def test_encode_many_equals_encode_and_canonical(
    first_seq: int, ts_ms: int, batch: list[tuple[int, int, list[int], int]]
) -> None:
    enc = ReadingEncoder("dev-1", "elec_meter", CHANNELS, b"\x11" * 32, 3)
    bodies = enc.encode_many(first_seq, ts_ms, batch)
    assert bodies == [enc.encode(first_seq + i, ts_ms, c, d, v, p)
                      for i, (c, d, v, p) in enumerate(batch)]
    for body in bodies:
        assert canonical.encode(canonical.decode(body)) == body


def test_encode_many_beyond_int64_falls_back_to_python() -> None:
    enc = ReadingEncoder("dev-1", "elec_meter", CHANNELS, b"\x11" * 32, 3)
    batch = [(1, 2, [2**64 - 1, -(2**64), 5], 7)]
    assert enc.encode_many(9, 10, batch) == [enc.encode(9, 10, 1, 2, [2**64 - 1, -(2**64), 5], 7)]


def test_outbox_append_of_more_rows_than_one_insert_statement(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    rows = [(seq, bytes([seq % 256]) * 40, b"s" * 64) for seq in range(700)]
    box.append(rows, 699)
    assert box.depth == 700
    assert box.peek(-1, 1000) == rows
    assert box.last_frame_counter() == 699
    box.close()
