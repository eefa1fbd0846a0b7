"""What the parts of a :class:`~validator.node.ValidatorNode` share: the messages they hand back
(:class:`Outbound`), the node's counters (:class:`NodeStats`) and its clock (:class:`Clock`).

The node (validator/node.py) makes one of each and gives them to its parts (validator/intake.py,
rounds.py, settle.py); nothing here does I/O or reads the wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Clock", "NodeStats", "Outbound"]


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message the node wants published."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass
class NodeStats:
    """Counters for the metrics endpoint (monotonic unless said otherwise)."""

    readings_verified: int = 0  # readings checked (accepted + rejected; not duplicates)
    readings_accepted: int = 0
    readings_duplicate: int = 0
    readings_pending: int = 0  # gauge: waiting for earlier readings to re-run the model
    rejected: dict[str, int] = field(default_factory=dict)  # reason code -> count
    attestations_signed: int = 0
    certificates: int = 0  # certificates this node assembled (first k signatures it saw)
    quorum_latency_s: list[float] = field(default_factory=list)  # window due -> certificate;
    # drained by the runner into a histogram
    rounds_timed_out: int = 0
    messages_dropped: dict[str, int] = field(default_factory=dict)  # bad peer messages by reason
    peers_last_seen: dict[bytes, float] = field(default_factory=dict)  # address -> node time
    registry_devices: int = 0  # gauge
    registry_refused: dict[str, int] = field(default_factory=dict)
    windows_open: int = 0  # gauge
    certificates_published: int = 0  # certified windows this node published (leader or backup)
    certificates_backup: int = 0  # of which as a backup (the leader's did not appear in time)
    certificates_skipped: int = 0  # peers' certified windows for settled windows, not decoded
    schedule_epoch: int = 0  # gauge: the highest validator-set epoch this node knows
    schedules_applied: int = 0  # schedules (from the chain) that changed something
    agreements_restarted: int = 0  # windows moved to a new round by a new schedule

    def count_rejected(self, reason: str) -> None:
        """One reading rejected for ``reason`` (a reason code)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def count_dropped(self, reason: str) -> None:
        """One peer message dropped for ``reason``."""
        self.messages_dropped[reason] = self.messages_dropped.get(reason, 0) + 1


class Clock:
    """The node's time: the time of the message or tick it is handling, set by the node at each
    entry point and read by its parts (and its verifier) while they handle it."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0
