"""The MQTT topic scheme (see docs/protocol.md, "Topics").

Device topics are scoped by device id so that a broker ACL can confine a device to its own
subtree (``pattern write senken/v1/devices/%u/#``)::

    {prefix}/devices/{device}/readings    QoS 1, not retained: reading batches
    {prefix}/devices/{device}/status      QoS 1, retained: online/offline (last will)
    {prefix}/devices/{device}/heartbeat   QoS 0, not retained: periodic health

Validators and the gateway (docs/protocol.md, "Agreement")::

    {prefix}/registry/{device}                 QoS 1, retained: the owner-signed device record
    {prefix}/validators/{address}/agreement    QoS 1: have, propose, sign, fetch, readings
    {prefix}/validators/{address}/certificates QoS 1: certified windows, with their evidence
    {prefix}/validators/{address}/status       QoS 1, retained: online/offline (last will)

``address`` is the validator's 0x address in lower case, so that an ACL confines a validator
to its own subtree (``pattern write senken/v1/validators/%u/#`` with the address as user name).
``prefix`` defaults to ``senken/v1``; a test uses a prefix of its own.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_PREFIX",
    "HEARTBEAT_QOS",
    "READINGS_QOS",
    "STATUS_QOS",
    "device_topic",
    "parse_device_topic",
    "parse_validator_topic",
    "readings_filter",
    "registry_filter",
    "registry_topic",
    "validator_filter",
    "validator_topic",
]

DEFAULT_PREFIX: Final = "senken/v1"
READINGS_QOS: Final = 1
STATUS_QOS: Final = 1
HEARTBEAT_QOS: Final = 0
_LEAVES = frozenset({"readings", "status", "heartbeat"})
_VALIDATOR_LEAVES = frozenset({"agreement", "certificates", "status"})
_LOWER_HEX = frozenset("0123456789abcdef")


def device_topic(device: str, leaf: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The topic for ``leaf`` (readings, status, heartbeat) of ``device``."""
    if leaf not in _LEAVES:
        raise ValueError(f"unknown device topic leaf {leaf!r}")
    return f"{prefix}/devices/{device}/{leaf}"


def readings_filter(prefix: str = DEFAULT_PREFIX) -> str:
    """Subscription filter for every device's readings."""
    return f"{prefix}/devices/+/readings"


def parse_device_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, str] | None:
    """``(device, leaf)`` for a device topic under ``prefix``, else ``None``."""
    head = f"{prefix}/devices/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) != 2 or parts[1] not in _LEAVES or not parts[0]:
        return None
    return parts[0], parts[1]


def registry_topic(device: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The retained topic holding ``device``'s signed registry record."""
    return f"{prefix}/registry/{device}"


def registry_filter(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/registry/+"


def validator_topic(address: bytes, leaf: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The topic for ``leaf`` (agreement, certificates, status) of the validator at
    ``address`` (20 bytes)."""
    if leaf not in _VALIDATOR_LEAVES:
        raise ValueError(f"unknown validator topic leaf {leaf!r}")
    if len(address) != 20:
        raise ValueError("a validator address is 20 bytes")
    return f"{prefix}/validators/0x{address.hex()}/{leaf}"


def validator_filter(leaf: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Subscription filter for ``leaf`` of every validator."""
    if leaf not in _VALIDATOR_LEAVES:
        raise ValueError(f"unknown validator topic leaf {leaf!r}")
    return f"{prefix}/validators/+/{leaf}"


def parse_validator_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[bytes, str] | None:
    """``(address, leaf)`` for a validator topic under ``prefix``, else ``None``."""
    head = f"{prefix}/validators/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head):].split("/")
    if len(parts) != 2 or parts[1] not in _VALIDATOR_LEAVES:
        return None
    text = parts[0]
    if len(text) != 42 or not text.startswith("0x") or not _LOWER_HEX.issuperset(text[2:]):
        return None  # (bytes.fromhex alone would skip whitespace)
    return bytes.fromhex(text[2:]), parts[1]
