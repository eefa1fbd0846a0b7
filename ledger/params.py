"""Parsing the API's path and query parameters (pure).

Every parser takes the raw text (or None when absent) and returns the value or raises
:class:`ParamError` with a message for the caller; nothing else, whatever the input (a
hypothesis test holds them to that).
"""

from __future__ import annotations

from senken_core.errors import SenkenError
from senken_core.reading import DEVICE_ID_PATTERN

__all__ = ["MAX_LIMIT", "ParamError", "parse_attestation_id", "parse_identifier", "parse_int",
           "parse_limit"]

MAX_LIMIT = 1000
_HEX = frozenset("0123456789abcdefABCDEF")
_I63 = 2**63


class ParamError(SenkenError):
    """A path or query parameter that is not acceptable; the message says what is expected."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def parse_attestation_id(text: str) -> bytes:
    """64 hex digits (either case, ``0x`` allowed) -> the 32-byte attestation id."""
    raw = text[2:] if text[:2] in ("0x", "0X") else text
    if len(raw) != 64 or not set(raw) <= _HEX:
        raise ParamError("attestation id", "must be 64 hex digits (32 bytes)")
    return bytes.fromhex(raw)


def parse_identifier(text: str | None, name: str) -> str | None:
    """A project or device id (3-63 characters of a-z, 0-9 and '-'), or None if absent."""
    if text is None:
        return None
    if not DEVICE_ID_PATTERN.match(text):
        raise ParamError(name, "must be 3-63 characters of a-z, 0-9 and '-'")
    return text


def parse_int(text: str | None, name: str, *, minimum: int = 0,
              maximum: int = _I63 - 1) -> int | None:
    """A decimal integer in ``minimum .. maximum``, or None if absent."""
    if text is None:
        return None
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] in ("-", "+") else stripped
    if not digits or len(digits) > 19 or not digits.isascii() or not digits.isdigit():
        raise ParamError(name, f"must be a whole number in {minimum} .. {maximum}")
    value = int(stripped)
    if not minimum <= value <= maximum:
        raise ParamError(name, f"must be a whole number in {minimum} .. {maximum}")
    return value


def parse_limit(text: str | None, default: int = 100) -> int:
    """How many items to return: 1 .. MAX_LIMIT, ``default`` if absent."""
    value = parse_int(text, "limit", minimum=1, maximum=MAX_LIMIT)
    return default if value is None else value
