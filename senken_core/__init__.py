"""Senken's shared core: wire format, canonical encoding, keys and signatures, topics, config
and errors. It imports no component (edge_agent, gateway, validator, ledger, market,
firmware_sim); every component imports from here.
"""

from senken_core.canonical import decode, encode
from senken_core.errors import (
    ConfigError,
    EncodingError,
    FrameError,
    KeyFileError,
    ModelError,
    PayloadError,
    SenkenError,
    SignatureError,
)
from senken_core.frame import Frame, encode_frame, parse_frame, validate_frame
from senken_core.keys import READING_TAG, DeviceKey, verify_signature
from senken_core.reading import Reading, SignedReading, decode_batch, encode_batch
from senken_core.sensors import SENSOR_KINDS, Channel, SensorKind, sensor_kind

__all__ = [
    "READING_TAG",
    "SENSOR_KINDS",
    "Channel",
    "ConfigError",
    "DeviceKey",
    "EncodingError",
    "Frame",
    "FrameError",
    "KeyFileError",
    "ModelError",
    "PayloadError",
    "Reading",
    "SenkenError",
    "SensorKind",
    "SignatureError",
    "SignedReading",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "encode_frame",
    "parse_frame",
    "sensor_kind",
    "validate_frame",
    "verify_signature",
]
