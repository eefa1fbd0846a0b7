"""MQTT reading batches: the fast encoder is canonical CBOR, and the decoder only ever raises
PayloadError, whatever arrives on the topic."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from senken_core import canonical
from senken_core.errors import PayloadError
from senken_core.reading import MAX_BATCH_READINGS, SignedReading, decode_batch, encode_batch

signed = st.builds(SignedReading, st.binary(min_size=1, max_size=300),
                   st.binary(min_size=64, max_size=64))


@given(st.lists(signed, min_size=1, max_size=40))
def test_encode_batch_is_the_canonical_encoding_and_round_trips(items: list[SignedReading]) -> None:
    payload = encode_batch(items)
    assert payload == canonical.encode(
        {"v": 1, "readings": [[r.body, r.signature] for r in items]}
    )
    assert decode_batch(payload) == items


@given(st.binary(max_size=400))
def test_decode_batch_raises_only_payload_errors(payload: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode_batch(payload)


@pytest.mark.parametrize(
    "value",
    [
        {"v": 2, "readings": [[b"x", b"s" * 64]]},
        {"v": 1, "readings": []},
        {"v": 1, "readings": [[b"x", b"short"]]},
        {"v": 1, "readings": [[b"x"]]},
        {"v": 1, "readings": [["text", b"s" * 64]]},
        {"v": 1, "readings": [[b"x", b"s" * 64]], "extra": 1},
        [1, 2],
    ],
)
def test_malformed_batches(value: canonical.Value) -> None:
    with pytest.raises(PayloadError):
        decode_batch(canonical.encode(value))


def test_batch_size_limits() -> None:
    one = SignedReading(b"x", b"s" * 64)
    with pytest.raises(PayloadError):
        encode_batch([])
    with pytest.raises(PayloadError):
        encode_batch([one] * (MAX_BATCH_READINGS + 1))
