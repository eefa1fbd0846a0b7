"""Replay a recorded series as one channel's values.

A :class:`ReplaySpec` names a CSV file (``timestamp,value`` with a header line, as in NAB; the
last column of each row is the value, blank lines are skipped) and a channel. Row ``i`` of the
series becomes the channel's value in the ``i``-th frame slot (``start`` shifts the first row);
at the end of the series replay loops back to its first row. Timestamps are ignored.

Mapping (linear, documented in docs/firmware_sim.md)::

    value = round(low + (x - x_min) / (x_max - x_min) * (high - low))

where ``x_min``/``x_max`` are the minimum and maximum of the whole series and ``low``/``high``
default to the channel's typical band (:data:`firmware_sim.signals.TYPICAL_RANGES`), clamped
into the channel's range. A constant series maps to ``low``. The result is clamped into the
channel's range.

Bundled series live in ``firmware_sim/data/nab`` (see its README.md); name them
``nab/nyc_taxi.csv``, ``nyc_taxi.csv`` or just ``nyc_taxi``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from firmware_sim.signals import TYPICAL_RANGES, clamp
from senken_core.errors import SenkenError
from senken_core.sensors import SENSOR_KINDS, Channel

__all__ = ["DATA_DIR", "ReplayError", "ReplaySpec", "Replayer", "bundled_series", "load_series"]

DATA_DIR = Path(__file__).resolve().parent / "data"


class ReplayError(SenkenError, ValueError):
    """A replay series that cannot be used (missing, unreadable, empty, wrong channel)."""


def bundled_series() -> list[str]:
    """Names of the bundled series, e.g. ``nab/nyc_taxi.csv``."""
    return sorted(p.relative_to(DATA_DIR).as_posix() for p in DATA_DIR.rglob("*.csv"))


def resolve_series(name: str | Path) -> Path:
    """The file for ``name``: an existing path, or a bundled series name."""
    path = Path(name)
    if path.is_file():
        return path
    text = str(name)
    candidates = [DATA_DIR / text, DATA_DIR / "nab" / text, DATA_DIR / "nab" / f"{text}.csv"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = ", ".join(bundled_series())
    raise ReplayError(f"replay series {text!r} not found (not a file; bundled: {known})")


def load_series(path: str | Path) -> list[float]:
    """The numeric values of a CSV series (last column; the header and blank rows skipped)."""
    file = resolve_series(path)
    values: list[float] = []
    try:
        with file.open(newline="", encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.reader(fh), start=1):
                if not row or not row[-1].strip():
                    continue
                try:
                    x = float(row[-1])
                except ValueError:
                    if lineno == 1:
                        continue  # header
                    raise ReplayError(
                        f"{file}:{lineno}: value {row[-1]!r} is not a number"
                    ) from None
                if not math.isfinite(x):
                    raise ReplayError(f"{file}:{lineno}: value {row[-1]!r} is not finite")
                values.append(x)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReplayError(f"cannot read replay series {file}: {exc}") from exc
    if not values:
        raise ReplayError(f"replay series {file} has no values")
    return values


@dataclass(frozen=True)
class ReplaySpec:
    """Replay ``series`` (a path or bundled name) as ``channel``, mapped into ``[low, high]``."""

    series: str | Path
    channel: str
    low: int | None = None
    high: int | None = None
    start: int = 0

    @classmethod
    def parse(cls, text: str) -> ReplaySpec:
        """Parse the CLI form ``CSV:CHANNEL[:LOW:HIGH]``."""
        parts = text.rsplit(":", 3)
        # a path may contain ':'; take LOW:HIGH only when both parse as integers
        if len(parts) == 4:
            try:
                low, high = int(parts[2]), int(parts[3])
            except ValueError:
                parts = text.rsplit(":", 1)
            else:
                return cls(parts[0], parts[1], low, high)
        else:
            parts = text.rsplit(":", 1)
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ReplayError(f"replay {text!r}: expected CSV:CHANNEL or CSV:CHANNEL:LOW:HIGH")
        return cls(parts[0], parts[1])


@dataclass
class Replayer:
    """A loaded :class:`ReplaySpec` bound to a channel: call :meth:`value` per frame slot."""

    spec: ReplaySpec
    channel: Channel
    series: list[float]
    low: int
    high: int
    x_min: float = field(init=False)
    x_max: float = field(init=False)

    def __post_init__(self) -> None:
        self.x_min, self.x_max = min(self.series), max(self.series)

    @classmethod
    def load(cls, spec: ReplaySpec, kind: str) -> Replayer:
        channels = {c.name: c for c in SENSOR_KINDS[kind].channels}
        if spec.channel not in channels:
            raise ReplayError(
                f"replay channel {spec.channel!r} is not a channel of {kind} "
                f"(channels: {', '.join(channels)})"
            )
        channel = channels[spec.channel]
        if channel.cumulative:
            raise ReplayError(
                f"{spec.channel} is a cumulative register; replay the quantity it integrates "
                "instead (e.g. power_w for energy_export_wh)"
            )
        typical = TYPICAL_RANGES.get(channel.name, (channel.minimum, channel.maximum))
        low = clamp(channel, spec.low if spec.low is not None else typical[0])
        high = clamp(channel, spec.high if spec.high is not None else typical[1])
        if spec.start < 0:
            raise ReplayError(f"replay start {spec.start} is negative")
        return cls(spec, channel, load_series(spec.series), low, high)

    def map(self, x: float) -> int:
        """The channel value for series value ``x`` (the documented linear mapping)."""
        span = self.x_max - self.x_min
        frac = 0.0 if span == 0 else (x - self.x_min) / span
        return clamp(self.channel, self.low + frac * (self.high - self.low))

    def value(self, slot: int) -> int:
        """The channel value in frame slot ``slot`` (loops over the series)."""
        return self.map(self.series[(self.spec.start + slot) % len(self.series)])
