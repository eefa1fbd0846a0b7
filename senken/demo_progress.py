"""What the demo shows while it runs and at the end, all read from the services' own APIs.

* one line per certified window, from the ledger's ``/attestations``; for a window holding
  readings the on-device model scored anomalous, what they were and the energy the
  methodology left out of the credit for them (from the window's evidence,
  ``/attestations/{id}/evidence``: the device-signed readings themselves);
* now and then, each validator's ``/health`` (peers seen, readings pending) and each agent's
  counters;
* at the end: the log verified (``/log/verify``), one certificate checked offline as a buyer
  would (``senken ledger check-evidence`` on the evidence and registry record fetched from the
  API), and the project's totals (``/projects/{project}/summary``).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from senken.demo_broker import DemoError, get_bytes, get_json

__all__ = ["Flagged", "LedgerWatch", "check_offline", "health_lines", "short"]

Echo = Callable[[str], None]


def short(address: str) -> str:
    """``0x70997970...`` -> ``0x7099``: enough to tell four validators apart."""
    return address[:6]


def clock(unix_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix_s))


@dataclass(frozen=True, slots=True)
class Flagged:
    """The readings of one certified window that the model scored anomalous."""

    count: int
    worst: Any  # the Reading with the highest score
    excluded_wh: int  # register increments paired with a flagged reading: not credited


def _energy(reading: Any) -> int | None:
    return dict(reading.values).get("energy_export_wh")


def flagged_readings(evidence: bytes, threshold_ppm: int) -> Flagged | None:
    """The window's readings scoring at or above the project's threshold, and the increments
    of the export register that pair with one (the methodology credits none of them)."""
    from senken_core.evidence import CertifiedWindow
    from senken_core.reading import Reading

    window = CertifiedWindow.from_wire(evidence)
    readings = [Reading.from_canonical(r.body) for r in window.readings]
    flagged = [r for r in readings if r.anomaly_ppm >= threshold_ppm]
    if not flagged:
        return None
    chain = list(readings)
    if window.boundary is not None and readings:
        boundary = Reading.from_canonical(window.boundary.body)
        if boundary.seq == readings[0].seq - 1:
            chain.insert(0, boundary)
    excluded = 0
    for before, after in itertools.pairwise(chain):
        a, b = _energy(before), _energy(after)
        if after.seq != before.seq + 1 or a is None or b is None or b <= a:
            continue
        if max(before.anomaly_ppm, after.anomaly_ppm) >= threshold_ppm:
            excluded += b - a
    return Flagged(len(flagged), max(flagged, key=lambda r: r.anomaly_ppm), excluded)


@dataclass
class LedgerWatch:
    """Follows the ledger's log through its API and prints each newly certified window."""

    api: str
    project: str
    threshold_ppm: int
    echo: Echo
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> attestation
    flagged: dict[str, Flagged] = field(default_factory=dict)  # id -> its flagged readings
    _since: int = 0

    def poll(self) -> list[dict[str, Any]]:
        """Print and return the attestations logged since the last call, in log order."""
        found = get_json(f"{self.api}/attestations?project={self.project}&since={self._since}"
                         "&limit=1000")
        if not isinstance(found, dict):
            return []
        new = [a for a in found.get("attestations", []) if a["id"] not in self.seen]
        for att in sorted(new, key=lambda a: a["log_index"]):
            self.seen[att["id"]] = att
            self.echo(self.describe(att))
            evidence = get_bytes(f"{self.api}/attestations/{att['id']}/evidence")
            flagged = flagged_readings(evidence, self.threshold_ppm) if evidence else None
            if flagged is not None:
                self.flagged[att["id"]] = flagged
                self.echo(self.describe_flagged(flagged))
        if self.seen:  # windows are certified roughly in order; look back a little
            latest = max(a["window_start"] for a in self.seen.values())
            self._since = max(0, latest - 20 * max(a["window_seconds"]
                                                   for a in self.seen.values()))
        return new

    @staticmethod
    def describe(att: dict[str, Any]) -> str:
        signers = ", ".join(short(s) for s in att["signers"])
        return (f"  certified  {att['device']:<12} {clock(att['window_start'])} "
                f"+{att['window_seconds']}s  {att['readings_accepted']:>4} readings "
                f"({att['readings_rejected']} rejected)  {att['quantity'] / 1000:7.3f} kWh  "
                f"{att['co2e_mg'] / 1e6:7.3f} kg CO2e  signed by {signers}  "
                f"log #{att['log_index']}")

    def describe_flagged(self, flagged: Flagged) -> str:
        worst = flagged.worst
        values = ", ".join(f"{name}={value}" for name, value in worst.values)
        return (f"    ! {flagged.count} reading(s) scored anomalous by the device's model "
                f"(worst: seq {worst.seq}: {values}; score {worst.anomaly_ppm / 1e4:.1f}%): "
                f"{flagged.excluded_wh} Wh next to them not credited")

    def certified(self, device: str, window_start: int) -> bool:
        return any(a["device"] == device and a["window_start"] >= window_start
                   for a in self.seen.values())


def health_lines(elapsed: float, validators: Sequence[tuple[str, dict[str, Any] | None]],
                 agents: Sequence[tuple[str, Any]]) -> list[str]:
    """Two lines: each validator's peers seen and readings pending; each agent's counters."""
    parts = []
    for address, health in validators:
        if health is None:
            parts.append(f"{short(address)} DOWN")
        else:
            parts.append(f"{short(address)} {health.get('peers_seen')}/"
                         f"{health.get('pending')}/{health.get('certificates')}")
    counts = [f"{name} {a.stats.frames_ok}/{a.stats.readings_signed}/{a.stats.readings_acked}"
              + (f" ({a.stats.last_error})" if a.stats.last_error else "")
              for name, a in agents]
    return [f"  t={elapsed:4.0f}s   validators (peers seen/readings pending/certificates): "
            + ", ".join(parts),
            "           agents (frames read/readings signed/acknowledged by the broker): "
            + ", ".join(counts)]


def check_offline(api: str, att: dict[str, Any], network_file: Path, folder: Path,
                  echo: Echo) -> bool:
    """Fetch a window's evidence and its device's registry record from the ledger and check
    them with ``senken ledger check-evidence``, trusting only the network file; print what it
    says. True if it passed."""
    evidence = get_bytes(f"{api}/attestations/{att['id']}/evidence")
    record = get_bytes(f"{api}/attestations/{att['id']}/registry")
    if evidence is None or record is None:
        raise DemoError(f"the ledger did not serve the evidence of {att['id']}")
    folder.mkdir(parents=True, exist_ok=True)
    evidence_file = folder / f"{att['device']}-{att['window_start']}.cbor"
    record_file = folder / f"{att['device']}.registry.cbor"
    evidence_file.write_bytes(evidence)
    record_file.write_bytes(record)
    command = ["senken", "ledger", "check-evidence", str(evidence_file), "--registry",
               str(record_file), "--network", str(network_file)]
    echo(f"  $ {' '.join(command)}")
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                          timeout=60)
    for line in (done.stdout + done.stderr).strip().splitlines():
        echo(f"    {line}")
    return done.returncode == 0
