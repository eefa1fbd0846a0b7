"""Methodologies: how a window's accepted readings become a metered quantity and tCO2e.

A methodology is named, versioned and parameterised (the parameters, such as a grid emission
factor, are governed: issue 4). Everything is integer arithmetic in the smallest units, so
validators on any machine compute the same numbers (DESIGN-NOTES: floats only for display).

**CDM AMS-I.D** ("Grid connected renewable electricity generation", with the grid emission
factor of the CDM "Tool to calculate the emission factor for an electricity system", combined
margin), for ``elec_meter`` devices:

    baseline emissions BE_y = EG_y x EF_grid,CM,y;  ER_y = BE_y - PE_y - LE_y

with PE = LE = 0 for solar PV and wind (AMS-I.D paragraphs on project and leakage emissions).
Here EG is the net electricity exported in the window, in Wh, measured by the meter's
cumulative export register (``energy_export_wh``), and EF is given in g CO2/kWh, so

    co2e_mg = EG_Wh x EF_g_per_kWh          (1 Wh x 1 g/kWh = 1 mg: exact, nothing rounded)

EG is the sum of the register's increments between consecutive accepted readings, each
credited to the window of its later reading. An increment is credited only when both of its
readings scored below the anomaly threshold: energy measured across an anomalous reading is
never credited (the issue: anomalous readings are excluded, never silently included). A
register that went down (a meter reset or replacement) credits nothing for that step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from senken_core.reading import Reading

__all__ = ["GridExportAmsID", "Methodology", "WindowQuantity"]


@dataclass(frozen=True, slots=True)
class WindowQuantity:
    """A window's metered quantity (methodology unit) and emission reductions (mg CO2e), and
    how many of its readings were excluded as anomalous."""

    quantity: int
    co2e_mg: int
    anomalous: int


class Methodology(ABC):
    """Turns a device's accepted readings of one window into a :class:`WindowQuantity`."""

    name: str
    version: int
    kind: str  # the sensor kind it meters

    @abstractmethod
    def window_quantity(
        self, readings: Sequence[Reading], previous: Reading | None
    ) -> WindowQuantity:
        """``readings``: the window's accepted readings of one device in sequence order;
        ``previous``: that device's last accepted reading before the window (None if none)."""


@dataclass(frozen=True, slots=True)
class GridExportAmsID(Methodology):
    """CDM AMS-I.D, grid-connected renewable electricity (see the module docstring)."""

    grid_ef_g_per_kwh: int  # combined-margin grid emission factor, governed
    version: int = 1
    anomaly_threshold_ppm: int = 500_000  # the model's threshold (docs/model.md)
    name: str = "CDM AMS-I.D"
    kind: str = "elec_meter"

    def __post_init__(self) -> None:
        if not 0 <= self.grid_ef_g_per_kwh <= 10_000:
            raise ValueError("grid emission factor must be 0 .. 10000 g CO2/kWh")
        if not 0 < self.anomaly_threshold_ppm <= 1_000_000:
            raise ValueError("anomaly threshold must be 1 .. 1000000 ppm")

    def window_quantity(
        self, readings: Sequence[Reading], previous: Reading | None
    ) -> WindowQuantity:
        threshold = self.anomaly_threshold_ppm
        anomalous = sum(r.anomaly_ppm >= threshold for r in readings)
        exported = 0
        before = previous
        for reading in readings:
            if before is not None and before.anomaly_ppm < threshold \
                    and reading.anomaly_ppm < threshold:
                step = _register(reading) - _register(before)
                if step > 0:
                    exported += step
            before = reading
        return WindowQuantity(exported, exported * self.grid_ef_g_per_kwh, anomalous)


def _register(reading: Reading) -> int:
    for name, value in reading.values:
        if name == "energy_export_wh":
            return value
    raise ValueError(f"reading {reading.seq} of {reading.device} has no energy_export_wh")
