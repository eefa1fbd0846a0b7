"""What the gateway's service needs from the outside world, as small protocols.

Adapters: :class:`gateway.broker.MosquittoBroker` (files + reload) and
:class:`gateway.publisher.RegistryPublisher` (paho-mqtt); the unit tests pass fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.broker_files import BrokerAccount

__all__ = ["BrokerControl", "BrokerSync", "RecordPublisher"]


@dataclass(frozen=True, slots=True)
class BrokerSync:
    """The outcome of writing the broker's files: ``reloaded`` False when the broker could not
    be told (it reads the files when it next starts)."""

    written: bool
    reloaded: bool
    message: str = ""


class BrokerControl(Protocol):
    def sync(self, accounts: Sequence[BrokerAccount]) -> BrokerSync:
        """Write the password and ACL files for exactly ``accounts`` and make the broker
        reload them. Never raises for a broker that is down: says so in the result."""
        ...


class RecordPublisher(Protocol):
    def wake(self) -> None:
        """New unpublished records are in the store: publish them soon (never blocks)."""
        ...
