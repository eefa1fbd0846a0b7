"""One validator as a pure state machine: MQTT messages and a clock in, messages out.

The runner (validator/app.py) owns the broker connection and the timer; this class owns every
decision. Nothing here does I/O or reads the wall clock, so a test drives several nodes through
a simulated network and clock (tests/unit/test_validator_agreement.py).

    runner ──(topic, payload, now)──▶ on_message ─┐
    runner ──(now)──────────────────▶ tick ───────┼──▶ [Outbound(topic, payload, qos, retain)]
                                                  │
    runner ◀── next_deadline() (when to tick next)┘     stats: NodeStats (metrics)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NodeStats", "Outbound"]


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
