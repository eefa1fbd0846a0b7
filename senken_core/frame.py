"""The serial line protocol between sensor firmware and the edge agent.

One frame per line, ASCII, at most :data:`MAX_FRAME_BYTES` bytes including the line end::

    $SK1,<counter>,<device_ms>,<kind>,<channel>=<int>,...*<CRC32>\\r\\n

* ``SK1``: protocol version 1.
* ``counter``: the firmware's frame counter, decimal, 0 .. 2^32-1; 0 after a firmware boot,
  then +1 per frame.
* ``device_ms``: the firmware's real-time clock, Unix milliseconds, decimal.
* ``kind``: a sensor kind (:mod:`senken_core.sensors`), lower case.
* ``channel=int``: every channel of that kind exactly once, in the kind's order, as a
  decimal integer (optional leading ``-``) in the channel's unit.
* ``CRC32``: CRC-32/ISO-HDLC (zlib.crc32) of the bytes strictly between ``$`` and ``*``, as
  8 upper-case hexadecimal digits.

:func:`parse_frame` checks syntax and checksum; :func:`validate_frame` checks the values
against the kind's channels. Both raise :class:`FrameError` with a stable ``reason``.
:func:`parse_valid_frame` does both, with a fast path for the common case (the agent's hot path).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from senken_core.errors import FrameError
from senken_core.sensors import SENSOR_KINDS, SensorKind

__all__ = [
    "MAX_FRAME_BYTES",
    "PROTOCOL_TAG",
    "Frame",
    "encode_frame",
    "frame_checksum",
    "parse_frame",
    "parse_valid_frame",
    "parse_valid_frames",
    "validate_frame",
]

PROTOCOL_TAG = "SK1"
MAX_FRAME_BYTES = 256
_U32 = 2**32
_TAG = PROTOCOL_TAG.encode("ascii")
_NAME = re.compile(rb"[a-z][a-z0-9_]{0,31}\Z")
_HEX8 = re.compile(rb"[0-9A-F]{8}\Z")


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed frame: ``values`` are ``(channel, value)`` pairs in frame order."""

    counter: int
    device_ms: int
    kind: str
    values: tuple[tuple[str, int], ...]


def frame_checksum(body: bytes) -> str:
    """The frame checksum of ``body`` (the bytes between ``$`` and ``*``)."""
    return f"{zlib.crc32(body) & 0xFFFFFFFF:08X}"


def encode_frame(frame: Frame) -> bytes:
    """Return the wire bytes of ``frame``, line end included."""
    fields = [PROTOCOL_TAG, str(frame.counter), str(frame.device_ms), frame.kind]
    fields.extend(f"{name}={value}" for name, value in frame.values)
    body = ",".join(fields).encode("ascii")
    return b"$" + body + b"*" + frame_checksum(body).encode("ascii") + b"\r\n"


def _uint(raw: bytes) -> int | None:
    """A decimal without sign or leading zeros (stricter than int(): no '+', '_', spaces)."""
    if raw.isdigit() and (len(raw) == 1 or raw[0] != 0x30) and len(raw) <= 19:
        return int(raw)
    return None


def _sint(raw: bytes) -> int | None:
    if raw[:1] == b"-":
        value = _uint(raw[1:])
        return None if value is None or value == 0 else -value
    return _uint(raw)


_VALID_NAMES: set[bytes] = set()


def _name_ok(name: bytes) -> bool:
    if name in _VALID_NAMES:
        return True
    if not _NAME.match(name):
        return False
    if len(_VALID_NAMES) < 4096:
        _VALID_NAMES.add(name)
    return True


def parse_frame(line: bytes) -> Frame:
    """Parse one line into a :class:`Frame`, checking syntax and checksum only.

    Raises :class:`FrameError` with reason ``too_long``, ``syntax``, ``checksum`` or ``version``.
    """
    if len(line) > MAX_FRAME_BYTES:
        raise FrameError("too_long", f"{len(line)} bytes, limit {MAX_FRAME_BYTES}", line[:64])
    text = line.rstrip(b"\r\n")
    start = text.rfind(b"$")
    if start < 0:
        raise FrameError("syntax", "no '$' start marker", line)
    star = text.rfind(b"*")
    if star < start:
        raise FrameError("syntax", "no '*' checksum marker", line)
    body, crc = text[start + 1 : star], text[star + 1 :]
    if not _HEX8.match(crc):
        raise FrameError("syntax", "checksum is not 8 upper-case hex digits", line)
    if zlib.crc32(body) != int(crc, 16):
        raise FrameError("checksum", f"checksum mismatch (frame says {crc.decode()})", line)
    fields = body.split(b",")
    if len(fields) < 5:
        raise FrameError("syntax", f"{len(fields)} fields, need at least 5", line)
    if fields[0] != _TAG:
        raise FrameError("version", f"unknown protocol {fields[0]!r}", line)
    counter = _uint(fields[1])
    if counter is None or counter >= _U32:
        raise FrameError("syntax", "counter is not an integer in 0..2^32-1", line)
    device_ms = _uint(fields[2])
    if device_ms is None:
        raise FrameError("syntax", "device_ms is not a non-negative integer", line)
    if not _name_ok(fields[3]):
        raise FrameError("syntax", "sensor kind is not a lower-case name", line)
    values: list[tuple[str, int]] = []
    for field in fields[4:]:
        name, sep, raw = field.partition(b"=")
        value = _sint(raw) if sep else None
        if value is None or not _name_ok(name):
            raise FrameError("syntax", f"channel field {field[:40]!r} is not name=integer", line)
        values.append((name.decode("ascii"), value))
    return Frame(counter, device_ms, fields[3].decode("ascii"), tuple(values))


def validate_frame(frame: Frame) -> SensorKind:
    """Check ``frame`` against its sensor kind: known kind, every channel once, values in range.

    Returns the :class:`SensorKind`; raises :class:`FrameError` with reason ``unknown_kind``,
    ``channels`` or ``range``.
    """
    kind = SENSOR_KINDS.get(frame.kind)
    if kind is None:
        raise FrameError("unknown_kind", f"sensor kind {frame.kind!r} is not known")
    names = tuple(name for name, _ in frame.values)
    if names != kind.channel_names:
        raise FrameError(
            "channels", f"{frame.kind} needs channels {kind.channel_names}, frame has {names}"
        )
    for channel, (_, value) in zip(kind.channels, frame.values, strict=True):
        if not channel.minimum <= value <= channel.maximum:
            raise FrameError(
                "range",
                f"{channel.name}={value} {channel.unit} outside "
                f"[{channel.minimum}, {channel.maximum}]",
            )
    return kind


# The fast path of parse_valid_frame: one regex for a well-formed line that starts with '$'
# (the body has no '$' or '*', so they are the last '$' and the last '*' that parse_frame finds),
# then one regex per kind for its channels in order. Numbers as _uint/_sint accept them: no
# sign on counters, no leading zeros, no "-0", at most 19 digits (the counter's 10 are checked
# against 2^32 below).
_FAST_LINE = re.compile(
    rb"\$(SK1,(0|[1-9][0-9]{0,9}),(0|[1-9][0-9]{0,18}),([a-z][a-z0-9_]{0,31}),([^$*]*))"
    rb"\*([0-9A-F]{8})[\r\n]*\Z"
)
_FAST_INT = rb"(0|-?[1-9][0-9]{0,18})"


def _fast_kind(
    kind: SensorKind,
) -> tuple[str, re.Pattern[bytes], tuple[str, ...], tuple[tuple[int, int], ...]]:
    fields = b",".join(c.name.encode("ascii") + b"=" + _FAST_INT for c in kind.channels)
    bounds = tuple((c.minimum, c.maximum) for c in kind.channels)
    return kind.name, re.compile(fields + rb"\Z"), kind.channel_names, bounds


_FAST_KINDS = {name.encode("ascii"): _fast_kind(kind) for name, kind in SENSOR_KINDS.items()}


_NATIVE_KINDS = tuple(
    (name.encode("ascii"), name,
     tuple((c.name.encode("ascii"), c.name, c.minimum, c.maximum) for c in kind.channels))
    for name, kind in SENSOR_KINDS.items()
)
_PARSE_FRAMES: (
    Callable[[Sequence[bytes], tuple[object, ...], type[Frame]], list[Frame | None]] | None
)
try:  # the optional C extension (setup.py) holds the same fast path, for whole batches
    from senken_core._batchsign import parse_frames as _PARSE_FRAMES
except ImportError:
    _PARSE_FRAMES = None


def parse_valid_frames(lines: Sequence[bytes]) -> list[Frame | FrameError]:
    """:func:`parse_valid_frame` of each line, with the error (not raised) where it fails.

    Where the native extension is built, the well-formed frames of known kinds with values in
    range are parsed in one call for the batch; every other line goes through
    :func:`parse_valid_frame`, which names the error. Same results either way (tested).
    """
    fast = _PARSE_FRAMES(lines, _NATIVE_KINDS, Frame) if _PARSE_FRAMES is not None else None
    out: list[Frame | FrameError] = []
    for i, line in enumerate(lines):
        parsed = fast[i] if fast is not None else None
        if parsed is not None:
            out.append(parsed)
            continue
        try:
            out.append(parse_valid_frame(line))
        except FrameError as exc:
            out.append(exc)
    return out


def parse_valid_frame(line: bytes) -> Frame:
    """``parse_frame(line)`` then ``validate_frame`` on it: the same frame or the same error.

    A well-formed frame of a known kind with values in range takes a fast path (two regular
    expressions); anything else goes through :func:`parse_frame` and :func:`validate_frame`,
    which raise :class:`FrameError` with their reasons.
    """
    m = _FAST_LINE.match(line) if len(line) <= MAX_FRAME_BYTES else None
    if m is not None:
        body, counter_b, device_ms_b, kind_b, values_b, crc = m.groups()
        fast = _FAST_KINDS.get(kind_b)
        counter = int(counter_b)
        if fast is not None and counter < _U32 and zlib.crc32(body) == int(crc, 16):
            name, pattern, names, bounds = fast
            vm = pattern.match(values_b)
            if vm is not None:
                values = tuple(map(int, vm.groups()))
                for (low, high), value in zip(bounds, values, strict=True):
                    if not low <= value <= high:
                        break
                else:
                    return Frame(counter, int(device_ms_b), name,
                                 tuple(zip(names, values, strict=True)))
    frame = parse_frame(line)
    validate_frame(frame)
    return frame
