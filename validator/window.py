"""Per device and time window: collect accepted readings, then state the window's attestation.

Pure logic, fed by the verifier's verdicts and a clock. A window is ``[start, start +
window_seconds)`` on the project's grid, by the agent's timestamp (``ts_ms``) of each reading.
When a window has been closed for ``grace_s`` (late readings from an agent's backlog still
land in it), :meth:`WindowBook.close` states its :class:`Attestation`:

* the accepted readings, sorted by sequence number, are the Merkle leaves (their signed
  bodies): ``readings_root`` and ``readings_accepted`` (the tree size);
* ``readings_rejected`` counts the readings of that window this validator rejected;
* the methodology turns the readings into ``quantity`` and ``co2e_mg`` by
  :func:`senken_core.evidence.window_attestation`; a cumulative register pairs the window's
  first reading with the device's last accepted reading before it when that one is seq - 1.

The networked validator (validator/rounds.py) keeps its windows itself and agrees on their
contents with its peers (docs/protocol.md, section 7); this book is the single-validator view.

Two validators that accepted the same readings state the same attestation, byte for byte: the
quorum protocol's job is to make them agree on that set (docs/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from senken_core.attestation import Attestation
from senken_core.evidence import window_attestation
from senken_core.methodology import Methodology
from senken_core.reading import Reading

__all__ = ["ProjectTerms", "WindowBook"]


@dataclass(frozen=True, slots=True)
class ProjectTerms:
    """What a project's registration fixes for its attestations."""

    project: str
    window_seconds: int
    methodology: Methodology
    model_sha256: bytes


@dataclass
class _Window:
    readings: dict[int, tuple[Reading, bytes]] = field(default_factory=dict)  # seq -> (r, body)
    rejected: int = 0


class WindowBook:
    """Open windows of one project's devices. Not thread-safe."""

    def __init__(self, terms: ProjectTerms, grace_s: float = 60.0) -> None:
        if terms.window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self.terms = terms
        self.grace_ms = int(grace_s * 1000)
        self._open: dict[tuple[str, int], _Window] = {}
        self._last: dict[str, Reading] = {}  # per device: last accepted reading of a closed window
        self._closed: dict[str, int] = {}  # per device: start of the latest window closed

    def window_of(self, ts_ms: int) -> int:
        """The start (Unix seconds) of the window holding ``ts_ms``."""
        seconds = self.terms.window_seconds
        return ts_ms // 1000 // seconds * seconds

    def add(self, reading: Reading, body: bytes) -> bool:
        """Record an accepted reading (its signed body is the Merkle leaf). False if its window
        was already closed: too late to count (the runner counts it)."""
        key = (reading.device, self.window_of(reading.ts_ms))
        if self._closed.get(reading.device, -1) >= key[1]:
            return False
        self._open.setdefault(key, _Window()).readings[reading.seq] = (reading, body)
        return True

    def reject(self, device: str, ts_ms: int) -> None:
        """Count a rejected reading of ``device`` read at ``ts_ms`` (not once its window is
        closed)."""
        start = self.window_of(ts_ms)
        if self._closed.get(device, -1) < start:
            self._open.setdefault((device, start), _Window()).rejected += 1

    def due(self, now_ms: int) -> list[tuple[str, int]]:
        """Open windows whose end plus the grace period has passed, oldest first."""
        end = self.terms.window_seconds * 1000 + self.grace_ms
        return sorted((k for k in self._open if k[1] * 1000 + end <= now_ms),
                      key=lambda k: (k[1], k[0]))

    def close(self, device: str, window_start: int) -> Attestation:
        """State the window's attestation and forget the window. A window with no accepted
        reading attests zero (its rejections are still counted). Raises KeyError for a window
        that is not open."""
        window = self._open.pop((device, window_start))
        self._closed[device] = max(self._closed.get(device, -1), window_start)
        ordered = [window.readings[s] for s in sorted(window.readings)]
        terms = self.terms
        attestation = window_attestation(
            project=terms.project, device=device, window_start=window_start,
            window_seconds=terms.window_seconds, methodology=terms.methodology,
            model_hash=terms.model_sha256, readings=ordered, boundary=self._last.get(device),
            rejected=window.rejected)
        if ordered:
            self._last[device] = ordered[-1][0]
        return attestation
