"""Canonical bytes: a deterministic CBOR subset (RFC 8949 section 4.2.1, core deterministic
encoding).

Everything Senken signs or hashes is encoded here, and only here. The subset:

* unsigned and negative integers within 64 bits (major types 0 and 1), in the shortest form;
* byte strings (2) and UTF-8 text strings (3), definite length, shortest length form;
* arrays (4) and maps (5) of definite length; map keys are text strings, sorted by the
  bytewise order of their encodings, no duplicates;
* ``false``, ``true`` and ``null`` (simple values 20, 21, 22).

No floats, tags or indefinite lengths: a quantity is an integer in its smallest unit.
:func:`decode` is strict: it accepts exactly the bytes :func:`encode` produces, so for every
accepted input ``encode(decode(b)) == b``. That property lets a verifier check a signature over
the received bytes and trust the decoded value to be the only reading those bytes can mean.
"""

from __future__ import annotations

import struct

from senken_core.errors import EncodingError

__all__ = ["MAX_DEPTH", "Value", "decode", "encode", "encode_head"]

Value = int | bool | None | bytes | str | list["Value"] | tuple["Value", ...] | dict[str, "Value"]

MAX_DEPTH = 16
_U64 = 2**64


def encode_head(major: int, n: int) -> bytes:
    """The shortest head for major type ``major`` with argument ``n`` (for fast paths)."""
    if n < 24:
        return _SMALL_HEADS[major][n]
    return _head(major, n)


def _head(major: int, n: int) -> bytes:
    mt = major << 5
    if n < 24:
        return bytes((mt | n,))
    if n < 0x100:
        return bytes((mt | 24, n))
    if n < 0x10000:
        return struct.pack(">BH", mt | 25, n)
    if n < 0x100000000:
        return struct.pack(">BI", mt | 26, n)
    return struct.pack(">BQ", mt | 27, n)


_SMALL_HEADS = tuple(tuple(bytes(((major << 5) | n,)) for n in range(24)) for major in range(8))


def _enc(value: Value, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise EncodingError(f"nesting deeper than {MAX_DEPTH}")
    if value is True:
        out.append(b"\xf5")
    elif value is False:
        out.append(b"\xf4")
    elif value is None:
        out.append(b"\xf6")
    elif isinstance(value, int):
        if 0 <= value < _U64:
            out.append(_head(0, value))
        elif -_U64 <= value < 0:
            out.append(_head(1, -1 - value))
        else:
            raise EncodingError(f"integer {value} does not fit in 64 bits")
    elif isinstance(value, bytes):
        out.append(_head(2, len(value)))
        out.append(value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(_head(3, len(raw)))
        out.append(raw)
    elif isinstance(value, list | tuple):
        out.append(_head(4, len(value)))
        for item in value:
            _enc(item, out, depth + 1)
    elif isinstance(value, dict):
        items: list[tuple[bytes, Value]] = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError(f"map key {key!r} is not a text string")
            items.append((encode(key), item))
        items.sort(key=lambda kv: kv[0])
        out.append(_head(5, len(items)))
        for key_bytes, item in items:
            out.append(key_bytes)
            _enc(item, out, depth + 1)
    else:
        raise EncodingError(f"type {type(value).__name__} has no canonical encoding")


def encode(value: Value) -> bytes:
    """Return the one canonical encoding of ``value``.

    Raises :class:`EncodingError` for a value outside the subset (a float, a non-text map key,
    an integer beyond 64 bits, nesting deeper than :data:`MAX_DEPTH`).
    """
    out: list[bytes] = []
    _enc(value, out, 0)
    return b"".join(out)


class _Decoder:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise EncodingError(f"truncated at byte {self.pos}: need {n} more")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def _arg(self, info: int) -> int:
        if info < 24:
            return info
        if info == 24:
            n = self._take(1)[0]
            minimum = 24
        elif info == 25:
            n = struct.unpack(">H", self._take(2))[0]
            minimum = 0x100
        elif info == 26:
            n = struct.unpack(">I", self._take(4))[0]
            minimum = 0x10000
        elif info == 27:
            n = struct.unpack(">Q", self._take(8))[0]
            minimum = 0x100000000
        else:
            raise EncodingError(f"indefinite or reserved length (info {info}) at byte {self.pos}")
        if n < minimum:
            raise EncodingError(f"non-shortest integer or length at byte {self.pos}")
        return int(n)

    def value(self, depth: int) -> Value:
        if depth > MAX_DEPTH:
            raise EncodingError(f"nesting deeper than {MAX_DEPTH}")
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            if info == 20:
                return False
            if info == 21:
                return True
            if info == 22:
                return None
            raise EncodingError(f"unsupported simple value or float (0x{initial:02x})")
        n = self._arg(info)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2:
            return self._take(n)
        if major == 3:
            try:
                return self._take(n).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise EncodingError("text string is not valid UTF-8") from exc
        if major == 4:
            if n > len(self.data) - self.pos:
                raise EncodingError("array longer than the remaining input")
            return [self.value(depth + 1) for _ in range(n)]
        if major == 5:
            if n > len(self.data) - self.pos:
                raise EncodingError("map longer than the remaining input")
            result: dict[str, Value] = {}
            previous = b""
            for _ in range(n):
                start = self.pos
                key = self.value(depth + 1)
                if not isinstance(key, str):
                    raise EncodingError("map key is not a text string")
                key_bytes = self.data[start : self.pos]
                if key_bytes <= previous:
                    raise EncodingError(f"map keys not in canonical order at {key!r}")
                previous = key_bytes
                result[key] = self.value(depth + 1)
            return result
        raise EncodingError(f"unsupported major type {major} (tags are not allowed)")


def decode(data: bytes) -> Value:
    """Decode canonical bytes; the exact inverse of :func:`encode`.

    Raises :class:`EncodingError` for anything :func:`encode` could not have produced: truncation,
    trailing bytes, non-shortest forms, unsorted or duplicate map keys, floats, tags.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EncodingError(f"expected bytes, got {type(data).__name__}")
    decoder = _Decoder(bytes(data))
    value = decoder.value(0)
    if decoder.pos != len(decoder.data):
        raise EncodingError(f"{len(decoder.data) - decoder.pos} trailing bytes")
    return value
