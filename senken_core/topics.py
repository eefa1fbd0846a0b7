"""The MQTT topic scheme (see docs/protocol.md, "Topics").

Device topics are scoped by device id so that a broker ACL can confine a device to its own
subtree (``pattern write senken/v1/devices/%u/#``)::

    {prefix}/devices/{device}/readings    QoS 1, not retained: reading batches
    {prefix}/devices/{device}/status      QoS 1, retained: online/offline (last will)
    {prefix}/devices/{device}/heartbeat   QoS 0, not retained: periodic health

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
    "readings_filter",
]

DEFAULT_PREFIX: Final = "senken/v1"
READINGS_QOS: Final = 1
STATUS_QOS: Final = 1
HEARTBEAT_QOS: Final = 0
_LEAVES = frozenset({"readings", "status", "heartbeat"})


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
