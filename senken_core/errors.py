"""The project's exception tree.

Every error Senken raises on purpose derives from :class:`SenkenError`; library errors are
mapped to one of these where they enter (``raise ... from exc``). Errors carry fields, not
only text, and their message says what was wrong and what to do.

    SenkenError
    ├── EncodingError          canonical bytes that are malformed or not canonical
    ├── FrameError             a serial frame that fails parsing or validation (.reason)
    ├── SignatureError         a signature that does not verify
    ├── KeyFileError           a device key file missing, unreadable or with unsafe permissions
    ├── ConfigError            a config file or environment value that is invalid (.problems)
    ├── PayloadError           an MQTT payload that cannot be decoded
    ├── ModelError             the anomaly model cannot be loaded or does not match its hash
    ├── Eip712Error            a value that cannot be EIP-712 encoded (senken_core.eip712)
    └── MerkleProofError       an inclusion proof that is malformed or does not lead to the
                               root (senken_core.merkle)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "ConfigError",
    "EncodingError",
    "FrameError",
    "KeyFileError",
    "ModelError",
    "PayloadError",
    "SenkenError",
    "SignatureError",
]


class SenkenError(Exception):
    """Root of every error Senken raises on purpose."""


class EncodingError(SenkenError):
    """Bytes that are not a valid canonical encoding."""


class FrameError(SenkenError):
    """A serial frame that cannot be accepted.

    ``reason`` is a short stable code (``checksum``, ``syntax``, ``range``, ...) used for counters.
    """

    def __init__(self, reason: str, message: str, raw: bytes = b"") -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.raw = raw


class SignatureError(SenkenError):
    """A signature that does not verify against the expected key."""


class KeyFileError(SenkenError):
    """A key file that is missing, unreadable or readable by others."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"key file {path}: {message}")
        self.path = path


class ConfigError(SenkenError):
    """Invalid configuration; ``problems`` lists one line per bad field."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")
        self.source = source
        self.problems = list(problems)


class PayloadError(SenkenError):
    """An MQTT payload that cannot be decoded into signed readings."""


class ModelError(SenkenError):
    """The anomaly model cannot be loaded, or its file does not match the expected hash."""
