"""Signed readings: the unit of evidence, from the device to the chain.

A :class:`Reading` is encoded to canonical bytes (:mod:`senken_core.canonical`, a CBOR map)
and signed by the device key over ``READING_TAG || SHA-256(body)``. The pair travels as a
:class:`SignedReading`; verifiers check the signature over the received body bytes and decode
the body strictly, so the bytes mean exactly one reading. Several signed readings travel in one
MQTT message (:func:`encode_batch`), which matters when a device drains a backlog.

The reading's identity is ``(device, seq)``: ``seq`` is the agent's sequence number, reserved
durably before signing so it is never reused, even after a crash or power cut.
"""

from __future__ import annotations

import operator
import re
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from senken_core import canonical
from senken_core.errors import EncodingError, PayloadError
from senken_core.keys import READING_TAG, DeviceKey, verify_signature
from senken_core.sensors import SENSOR_KINDS, SensorKind

# The fields of a reading in Reading's order, values as (channel, value) pairs in the body's
# (canonical) order: what the fast decoders of a body give.
_Fields = tuple[str, int, int, str, int, int, tuple[tuple[str, int], ...], bytes, int, int]

_ENCODE_MANY: Callable[[Sequence[bytes], array[int], int], list[bytes]] | None
_DECODE_READING: Callable[[bytes], _Fields | None] | None
try:  # the optional C extension (setup.py); without it, encode_many loops over encode
    from senken_core import _batchsign
except ImportError:
    _ENCODE_MANY = _DECODE_READING = None
else:
    _ENCODE_MANY = _batchsign.encode_many
    # and from_canonical's fast path runs in Python (an extension built before it had none)
    _DECODE_READING = getattr(_batchsign, "decode_reading", None)

__all__ = [
    "DEVICE_ID_PATTERN",
    "MAX_BATCH_READINGS",
    "READING_SCHEMA",
    "Reading",
    "ReadingEncoder",
    "SignedReading",
    "decode_batch",
    "decode_of_kind",
    "encode_batch",
]

READING_SCHEMA = 1
MAX_BATCH_READINGS = 512
DEVICE_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{2,62}\Z")
_U63 = 2**63
_BATCH_SCHEMA = 1
_FIELDS = frozenset(
    {
        "v",
        "device",
        "seq",
        "ts_ms",
        "kind",
        "frame_counter",
        "device_ms",
        "values",
        "model_sha256",
        "anomaly_ppm",
        "scored_since_seq",
    }
)


_UINT_HEADS = tuple(canonical.encode_head(0, n) for n in range(256))
_NINT_HEADS = tuple(canonical.encode_head(1, n) for n in range(256))
_PACK16, _PACK32, _PACK64 = (struct.Struct(f">B{c}").pack for c in "HIQ")


def _int(n: int) -> bytes:
    """``canonical.encode(n)`` for an integer in -2^64 .. 2^64-1, flattened for the hot path."""
    major, arg, heads = (0x00, n, _UINT_HEADS) if n >= 0 else (0x20, -1 - n, _NINT_HEADS)
    if arg < 0x100:
        return heads[arg]
    if arg < 0x10000:
        return _PACK16(major | 25, arg)
    if arg < 0x100000000:
        return _PACK32(major | 26, arg)
    return _PACK64(major | 27, arg)


# Keys of the reading map in canonical order (RFC 8949 4.2.1: bytewise order of encoded keys).
_READING_PREFIX = canonical.encode_head(5, len(_FIELDS)) + canonical.encode("v")
_K_SEQ, _K_KIND, _K_TS, _K_DEVICE, _K_VALUES = (
    canonical.encode(k) for k in ("seq", "kind", "ts_ms", "device", "values")
)
_K_DEVICE_MS, _K_ANOMALY, _K_MODEL, _K_FRAME_COUNTER = (
    canonical.encode(k) for k in ("device_ms", "anomaly_ppm", "model_sha256", "frame_counter")
)
_K_SCORED_SINCE = canonical.encode("scored_since_seq")
_ORDER_CACHE: dict[tuple[str, ...], tuple[tuple[bytes, str], ...]] = {}


def _value_order(names: tuple[str, ...]) -> tuple[tuple[bytes, str], ...]:
    order = _ORDER_CACHE.get(names)
    if order is None:
        if len(set(names)) != len(names):
            raise EncodingError(f"duplicate channel in {names}")
        order = tuple(sorted((canonical.encode(n), n) for n in names))
        if len(_ORDER_CACHE) < 1024:
            _ORDER_CACHE[names] = order
    return order


# --- the fast path of Reading.from_canonical -------------------------------------------------
# A body is the canonical encoding of the reading map, whose keys always come in the order
# above: the decoders below read that one layout and check every field as from_canonical does.
# They are strict by construction (shortest heads only, channel keys in canonical order, nothing
# after the map) and give up (None) on anything else, which then takes the generic path: the
# same result or the same error either way (property-tested against the generic decoder).
_FAST_HEAD = _READING_PREFIX + _int(READING_SCHEMA) + _K_SEQ
_K_MODEL_32 = _K_MODEL + canonical.encode_head(2, 32)
_NOT_HERE = (-1, 0)
_from_bytes = int.from_bytes
_device_match = DEVICE_ID_PATTERN.match


def _arg_at(b: bytes, p: int, info: int) -> tuple[int, int]:
    """The argument of a head with ``info`` (> 23) at ``p``, and where it ends; _NOT_HERE for
    a non-shortest or reserved form. Past the end of ``b`` the end is beyond ``len(b)``."""
    if info == 24:
        v, q = b[p + 1], p + 2
        return (v, q) if v >= 24 else _NOT_HERE
    if info == 25:
        v, q = _from_bytes(b[p + 1 : p + 3]), p + 3
        return (v, q) if v >= 0x100 else _NOT_HERE
    if info == 26:
        v, q = _from_bytes(b[p + 1 : p + 5]), p + 5
        return (v, q) if v >= 0x10000 else _NOT_HERE
    if info == 27:
        v, q = _from_bytes(b[p + 1 : p + 9]), p + 9
        return (v, q) if v >= 0x100000000 else _NOT_HERE
    return _NOT_HERE


def _u63_at(b: bytes, p: int) -> tuple[int, int]:
    """The non-negative 63-bit integer at ``p`` (value -1: none there)."""
    h = b[p]
    if h < 24:
        return h, p + 1
    if h < 0x20:
        v, q = _arg_at(b, p, h)
        return (v, q) if v < _U63 else _NOT_HERE
    return _NOT_HERE


def _text_at(b: bytes, p: int) -> tuple[str | None, int]:
    h = b[p]
    if 0x60 <= h < 0x78:
        q = p + 1 + h - 0x60
        return b[p + 1 : q].decode(), q
    if 0x78 <= h < 0x7C:
        n, q = _arg_at(b, p, h - 0x60)
        if q:
            return b[q : q + n].decode(), q + n
    return None, 0


def _values_at(b: bytes, p: int) -> tuple[tuple[tuple[str, int], ...] | None, int]:
    """The values map at ``p``: its pairs in body order, and where it ends."""
    h = b[p]
    if 0xA0 <= h < 0xB8:
        n, p = h - 0xA0, p + 1
    else:
        n, p = _arg_at(b, p, h - 0xA0) if 0xB8 <= h < 0xBC else _NOT_HERE
        if not p:
            return None, 0
    pairs: list[tuple[str, int]] = []
    previous = b""
    for _ in range(n):
        name, q = _text_at(b, p)
        if name is None or b[p:q] <= previous:
            return None, 0
        previous = b[p:q]
        h = b[q]
        if h < 24:
            v, p = h, q + 1
        elif h < 0x20:
            v, p = _arg_at(b, q, h)
        elif h < 0x38:
            v, p = -1 - (h - 0x20), q + 1
        elif h < 0x40:
            v, p = _arg_at(b, q, h - 0x20)
            v = -1 - v
        else:
            return None, 0
        if not p:
            return None, 0
        pairs.append((name, v))
    return tuple(pairs), p


def _decode_fields(body: bytes) -> _Fields | None:
    """The Python twin of the extension's ``decode_reading`` (same result, property-tested)."""
    b = body
    if type(b) is not bytes or not b.startswith(_FAST_HEAD):
        return None
    try:
        seq, p = _u63_at(b, len(_FAST_HEAD))
        if not p or not b.startswith(_K_KIND, p):
            return None
        kind, p = _text_at(b, p + len(_K_KIND))
        if kind is None or not b.startswith(_K_TS, p):
            return None
        ts_ms, p = _u63_at(b, p + len(_K_TS))
        if not p or not b.startswith(_K_DEVICE, p):
            return None
        device, p = _text_at(b, p + len(_K_DEVICE))
        if device is None or not _device_match(device) or not b.startswith(_K_VALUES, p):
            return None
        pairs, p = _values_at(b, p + len(_K_VALUES))
        if pairs is None or not b.startswith(_K_DEVICE_MS, p):
            return None
        device_ms, p = _u63_at(b, p + len(_K_DEVICE_MS))
        if not p or not b.startswith(_K_ANOMALY, p):
            return None
        ppm, p = _u63_at(b, p + len(_K_ANOMALY))
        if not p or ppm > 1_000_000 or not b.startswith(_K_MODEL_32, p):
            return None
        p += len(_K_MODEL_32)
        model, p = b[p : p + 32], p + 32
        if not b.startswith(_K_FRAME_COUNTER, p):
            return None
        counter, p = _u63_at(b, p + len(_K_FRAME_COUNTER))
        if not p or not b.startswith(_K_SCORED_SINCE, p):
            return None
        since, p = _u63_at(b, p + len(_K_SCORED_SINCE))
        if not p or since > seq or p != len(b):
            return None
    except (IndexError, UnicodeDecodeError):
        return None
    return device, seq, ts_ms, kind, counter, device_ms, pairs, model, ppm, since


# kind name -> (the kind, its channel names in canonical order, the kind's order as indexes,
# a function that puts pairs in canonical order into the kind's order)
_KIND_ORDER: dict[str, tuple[SensorKind, tuple[str, ...], tuple[int, ...],
                             Callable[[tuple[tuple[str, int], ...]],
                                      tuple[tuple[str, int], ...]]]] = {}
_first = operator.itemgetter(0)


def _reorder(order: tuple[int, ...]) -> Callable[[tuple[tuple[str, int], ...]],
                                                   tuple[tuple[str, int], ...]]:
    if len(order) >= 2:
        return operator.itemgetter(*order)  # a tuple, in C
    return lambda pairs: tuple([pairs[i] for i in order])


def _in_kind_order(kind_name: str, pairs: tuple[tuple[str, int], ...]
                   ) -> tuple[tuple[str, int], ...]:
    """``pairs`` (canonical order) in their kind's channel order if they are exactly its
    channels, else as they are: what from_canonical's generic path does."""
    kind = SENSOR_KINDS.get(kind_name)
    if kind is None:
        return pairs
    cached = _KIND_ORDER.get(kind_name)
    if cached is None or cached[0] is not kind:
        names = kind.channel_names
        canonical_names = tuple(name for _, name in sorted((canonical.encode(n), n)
                                                           for n in set(names)))
        order = tuple(canonical_names.index(n) for n in names)
        cached = (kind, canonical_names, order, _reorder(order))
        _KIND_ORDER[kind_name] = cached
    canonical_names, reorder = cached[1], cached[3]
    # the body's channel names are distinct and in canonical order: the same set as the
    # kind's exactly when they are the kind's names in canonical order
    if len(pairs) != len(canonical_names) or tuple(map(_first, pairs)) != canonical_names:
        return pairs
    return reorder(pairs)


def decode_of_kind(kind_name: str, bodies: Sequence[bytes]) -> list[Reading | None]:
    """Per body, ``Reading.from_canonical(body)`` if the fast path decodes it and its channels
    are exactly ``kind_name``'s (a known kind), else None: the caller then decodes that body
    with :meth:`Reading.from_canonical` for the reading or the exact error. One call for a
    batch of one device's readings (the validator's hot path)."""
    kind = SENSOR_KINDS.get(kind_name)
    if kind is None or not bodies:
        return [None] * len(bodies)
    _in_kind_order(kind_name, ())  # fills the kind's cached order
    _, canonical_names, _, reorder = _KIND_ORDER[kind_name]
    decode = _DECODE_READING if _DECODE_READING is not None else _decode_fields
    first = _first
    new = Reading
    out: list[Reading | None] = []
    append = out.append
    for body in bodies:
        f = decode(body)
        if f is None or f[3] != kind_name or tuple(map(first, f[6])) != canonical_names:
            append(None)
            continue
        append(new(f[0], f[1], f[2], kind_name, f[4], f[5], reorder(f[6]), f[7], f[8], f[9]))
    return out


@dataclass(frozen=True, slots=True)
class Reading:
    """One sensor reading as the device signs it.

    ``values`` are ``(channel, integer)`` pairs; ``anomaly_ppm`` is the model's score in
    millionths (0 = normal, 1_000_000 = certainly anomalous) from the model whose file hashes
    to ``model_sha256``. ``scored_since_seq`` (<= ``seq``) is the first sequence number the
    signing agent process scored: the model's per-stream state started empty there, so a
    verifier reproduces ``anomaly_ppm`` by replaying the device's readings from that one.
    """

    device: str
    seq: int
    ts_ms: int
    kind: str
    frame_counter: int
    device_ms: int
    values: tuple[tuple[str, int], ...]
    model_sha256: bytes
    anomaly_ppm: int
    scored_since_seq: int

    def canonical(self) -> bytes:
        """The canonical body bytes that are signed (see :class:`ReadingEncoder`)."""
        encoder = ReadingEncoder(self.device, self.kind, [name for name, _ in self.values],
                                 self.model_sha256, self.scored_since_seq)
        return encoder.encode(self.seq, self.ts_ms, self.frame_counter, self.device_ms,
                              [value for _, value in self.values], self.anomaly_ppm)

    @classmethod
    def from_canonical(cls, body: bytes) -> Reading:
        """Decode and check a body; raises :class:`EncodingError` naming the bad field.

        Bodies as the encoder makes them take a fast path (natively where the extension is
        built); the rest, and every error, the generic canonical decoder: same results."""
        if cls is not Reading:
            return cls._from_canonical_generic(body)
        fields = _DECODE_READING(body) if _DECODE_READING is not None else _decode_fields(body)
        if fields is not None:
            device, seq, ts_ms, kind, counter, device_ms, pairs, model, ppm, since = fields
            return cls(device, seq, ts_ms, kind, counter, device_ms,
                       _in_kind_order(kind, pairs), model, ppm, since)
        return cls._from_canonical_generic(body)

    @classmethod
    def _from_canonical_generic(cls, body: bytes) -> Reading:
        """from_canonical through the generic canonical decoder (the reference)."""
        obj = canonical.decode(body)
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise EncodingError("reading body is not a map with exactly the reading fields")
        if isinstance(obj["v"], bool) or obj["v"] != READING_SCHEMA:
            raise EncodingError(f"unknown reading schema {obj['v']!r}")
        device, raw_values, model, kind_name = (
            obj["device"],
            obj["values"],
            obj["model_sha256"],
            obj["kind"],
        )
        if not isinstance(device, str) or not DEVICE_ID_PATTERN.match(device):
            raise EncodingError("device is not a valid device id")
        ints: dict[str, int] = {}
        for name in ("seq", "ts_ms", "frame_counter", "device_ms", "anomaly_ppm",
                     "scored_since_seq"):
            v = obj[name]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _U63:
                raise EncodingError(f"{name} is not a non-negative 63-bit integer")
            ints[name] = v
        if ints["anomaly_ppm"] > 1_000_000:
            raise EncodingError("anomaly_ppm is not an integer in 0..1000000")
        if ints["scored_since_seq"] > ints["seq"]:
            raise EncodingError("scored_since_seq is above seq")
        if not isinstance(kind_name, str):
            raise EncodingError("kind is not a text string")
        if not isinstance(model, bytes) or len(model) != 32:
            raise EncodingError("model_sha256 is not 32 bytes")
        if not isinstance(raw_values, dict):
            raise EncodingError("values is not a map of channel to integer")
        values: dict[str, int] = {}
        for channel, v in raw_values.items():
            if isinstance(v, bool) or not isinstance(v, int):
                raise EncodingError(f"value of channel {channel!r} is not an integer")
            values[channel] = v
        kind = SENSOR_KINDS.get(kind_name)
        if kind is not None and set(values) == set(kind.channel_names):
            # Canonical order sorts channel names; restore the kind's own channel order.
            ordered = tuple((name, values[name]) for name in kind.channel_names)
        else:
            ordered = tuple(values.items())
        return cls(
            device=device,
            seq=ints["seq"],
            ts_ms=ints["ts_ms"],
            kind=kind_name,
            frame_counter=ints["frame_counter"],
            device_ms=ints["device_ms"],
            values=ordered,
            model_sha256=model,
            anomaly_ppm=ints["anomaly_ppm"],
            scored_since_seq=ints["scored_since_seq"],
        )

    def sign(self, key: DeviceKey) -> SignedReading:
        body = self.canonical()
        return SignedReading(body, key.sign(READING_TAG, body))


class ReadingEncoder:
    """Canonical bodies of one device's readings of one kind under one model, fast.

    A hand-unrolled form of ``canonical.encode`` of the reading map, for the agent's hot path:
    everything constant (keys, device, kind, model hash, the channel order) is encoded once and
    :meth:`encode` fills in the rest. Property tests check it against ``canonical.encode``.
    Values are given in ``channels`` order.
    """

    __slots__ = ("_chunks", "_p1", "_p2", "_p3", "_p4", "_p5", "_p6", "_p7", "_slots")

    def __init__(
        self,
        device: str,
        kind: str,
        channels: Sequence[str],
        model_sha256: bytes,
        scored_since_seq: int,
    ) -> None:
        head = canonical.encode_head
        order = _value_order(tuple(channels))
        index = {name: i for i, name in enumerate(channels)}
        kind_b, device_b = kind.encode("utf-8"), device.encode("utf-8")
        self._p1 = _READING_PREFIX + _int(READING_SCHEMA) + _K_SEQ
        self._p2 = _K_KIND + head(3, len(kind_b)) + kind_b + _K_TS
        self._p3 = _K_DEVICE + head(3, len(device_b)) + device_b + _K_VALUES + head(5, len(order))
        self._slots = tuple((key_bytes, index[name]) for key_bytes, name in order)
        self._p4 = _K_DEVICE_MS
        self._p5 = _K_ANOMALY
        self._p6 = _K_MODEL + head(2, len(model_sha256)) + model_sha256 + _K_FRAME_COUNTER
        self._p7 = _K_SCORED_SINCE + _int(scored_since_seq)
        # the same body as a template: constant chunks around the integers (encode_many)
        keys = [key_bytes for key_bytes, _ in self._slots]
        self._chunks = (self._p1, self._p2, self._p3 + keys[0], *keys[1:], self._p4, self._p5,
                        self._p6, self._p7) if keys else ()

    def encode(
        self,
        seq: int,
        ts_ms: int,
        frame_counter: int,
        device_ms: int,
        values: Sequence[int],
        anomaly_ppm: int,
    ) -> bytes:
        parts = [self._p1, _int(seq), self._p2, _int(ts_ms), self._p3]
        for key_bytes, i in self._slots:
            parts += (key_bytes, _int(values[i]))
        parts += (self._p4, _int(device_ms), self._p5, _int(anomaly_ppm), self._p6,
                  _int(frame_counter), self._p7)
        return b"".join(parts)

    def encode_many(
        self, first_seq: int, ts_ms: int, readings: Sequence[tuple[int, int, Sequence[int], int]]
    ) -> list[bytes]:
        """``encode`` of each ``(frame_counter, device_ms, values, anomaly_ppm)``, numbered from
        ``first_seq``: in one native call where the extension is built (same bytes: tested)."""
        if _ENCODE_MANY is not None and self._chunks:
            ints = array("q")
            slots = [i for _, i in self._slots]
            seq = first_seq
            try:
                for counter, device_ms, values, ppm in readings:
                    ints.append(seq)
                    ints.append(ts_ms)
                    ints.extend([values[i] for i in slots])
                    ints.extend((device_ms, ppm, counter))
                    seq += 1
            except OverflowError:  # a number beyond int64: the Python encoder handles it
                pass
            else:
                return _ENCODE_MANY(self._chunks, ints, len(slots) + 5)
        return [self.encode(first_seq + n, ts_ms, counter, device_ms, values, ppm)
                for n, (counter, device_ms, values, ppm) in enumerate(readings)]


@dataclass(frozen=True, slots=True)
class SignedReading:
    """Canonical reading bytes and the device's Ed25519 signature over them."""

    body: bytes
    signature: bytes

    def verify(self, public_key: bytes) -> Reading:
        """Verify the signature, then decode; raises SignatureError or EncodingError."""
        verify_signature(public_key, READING_TAG, self.body, self.signature)
        return Reading.from_canonical(self.body)


_BATCH_PREFIX = canonical.encode_head(5, 2) + canonical.encode("v") + canonical.encode(
    _BATCH_SCHEMA
) + canonical.encode("readings")
_PAIR = canonical.encode_head(4, 2)


def encode_batch(readings: Sequence[SignedReading]) -> bytes:
    """One MQTT payload carrying ``readings`` (1..MAX_BATCH_READINGS), oldest first.

    Equal to ``canonical.encode({"v": 1, "readings": [[body, signature], ...]})``, built
    directly (a backlog drains through here).
    """
    if not 1 <= len(readings) <= MAX_BATCH_READINGS:
        raise PayloadError(f"a batch holds 1..{MAX_BATCH_READINGS} readings, not {len(readings)}")
    head = canonical.encode_head
    parts = [_BATCH_PREFIX, head(4, len(readings))]
    for r in readings:
        parts += (_PAIR, head(2, len(r.body)), r.body, head(2, len(r.signature)), r.signature)
    return b"".join(parts)


_SIGNATURE_HEAD = canonical.encode_head(2, 64)


def _split_batch(payload: bytes) -> list[SignedReading] | None:
    """decode_batch's fast path: the readings of a payload as :func:`encode_batch` makes it
    (bodies under 64 KiB), else None (the generic decoder then gives the result or the error).
    Strict: shortest heads only, nothing after the array."""
    b = payload
    if type(b) is not bytes or not b.startswith(_BATCH_PREFIX):
        return None
    p = len(_BATCH_PREFIX)
    out: list[SignedReading] = []
    try:
        h = b[p]
        if 0x81 <= h < 0x98:
            n, p = h - 0x80, p + 1
        elif h == 0x98:
            n, p = b[p + 1], p + 2
            if n < 24:
                return None
        elif h == 0x99:
            n, p = _from_bytes(b[p + 1 : p + 3]), p + 3
            if not 0x100 <= n <= MAX_BATCH_READINGS:
                return None
        else:
            return None
        for _ in range(n):
            h = b[p + 1]
            if b[p] != 0x82:
                return None
            if 0x40 <= h < 0x58:
                end = p + 2 + h - 0x40
                body = b[p + 2 : end]
            elif h == 0x58 and b[p + 2] >= 24:
                end = p + 3 + b[p + 2]
                body = b[p + 3 : end]
            elif h == 0x59 and b[p + 2]:  # >= 0x100
                end = p + 4 + ((b[p + 2] << 8) | b[p + 3])
                body = b[p + 4 : end]
            else:
                return None
            if not b.startswith(_SIGNATURE_HEAD, end):
                return None
            p = end + 66
            out.append(SignedReading(body, b[end + 2 : p]))
    except IndexError:
        return None
    return out if p == len(b) else None


def decode_batch(payload: bytes) -> list[SignedReading]:
    """Split an MQTT payload into signed readings (signatures are not checked here).

    Raises :class:`PayloadError` with what is wrong; never anything else.
    """
    fast = _split_batch(payload)
    return fast if fast is not None else _decode_batch_generic(payload)


def _decode_batch_generic(payload: bytes) -> list[SignedReading]:
    """decode_batch through the generic canonical decoder (the reference)."""
    try:
        obj = canonical.decode(payload)
    except EncodingError as exc:
        raise PayloadError(f"payload is not canonical CBOR: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("v") != _BATCH_SCHEMA or set(obj) != {"v", "readings"}:
        raise PayloadError("payload is not a version-1 reading batch")
    items = obj["readings"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_READINGS:
        raise PayloadError(f"a batch holds 1..{MAX_BATCH_READINGS} readings")
    out: list[SignedReading] = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], bytes)
            or not isinstance(item[1], bytes)
            or len(item[1]) != 64
        ):
            raise PayloadError("batch entry is not [body bytes, 64-byte signature]")
        out.append(SignedReading(item[0], item[1]))
    return out
