"""Sensor kinds that carbon methodologies meter, and their channels.

Every channel value is an integer in the channel's smallest unit, from the serial frame to the
chain (no floats where a quantity is credited). Ranges are physical plausibility bounds a frame
must respect; methodology-level plausibility (issue 3) is stricter and lives with validators.

* ``elec_meter``: grid export meter of a renewable plant (CDM AMS-I.D / ACM0002 meter
  net electricity exported). ``energy_export_wh`` is the meter's cumulative register.
* ``biogas_flare``: biogas line to a flare (CDM AMS-III.D with the flaring tool): flow in
  normal litres per hour (1 Nm3/h = 1000 NL/h), CH4 volume fraction in basis points
  (1/10000), flare temperature in tenths of a degree Celsius.
* ``soil_co2``: soil CO2 flux chamber (e.g. for soil-carbon projects): flux in
  nanomoles CO2 per square metre per second, soil temperature, volumetric water content.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SENSOR_KINDS", "Channel", "SensorKind", "sensor_kind"]


@dataclass(frozen=True, slots=True)
class Channel:
    """One measured quantity: integer ``value`` in ``unit`` within ``[minimum, maximum]``.

    ``cumulative`` channels are registers that never decrease (an energy meter); models score
    their increments, not their level.
    """

    name: str
    unit: str
    minimum: int
    maximum: int
    description: str
    cumulative: bool = False


@dataclass(frozen=True, slots=True)
class SensorKind:
    name: str
    description: str
    channels: tuple[Channel, ...]

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)


_KINDS = (
    SensorKind(
        "elec_meter",
        "Electricity export meter at the grid connection point",
        (
            Channel("energy_export_wh", "Wh", 0, 2**53, "cumulative exported energy", True),
            Channel("power_w", "W", -1_000_000, 500_000_000, "instantaneous exported power"),
            Channel("voltage_dv", "0.1 V", 0, 4_000_000, "line voltage"),
        ),
    ),
    SensorKind(
        "biogas_flare",
        "Biogas line to an enclosed flare: flow, methane fraction, flare temperature",
        (
            Channel("flow_nl_per_h", "NL/h", 0, 100_000_000, "biogas flow, normal litres/hour"),
            Channel("ch4_bp", "1e-4 vol", 0, 10_000, "CH4 volume fraction, basis points"),
            Channel("flare_temp_dc", "0.1 degC", -500, 20_000, "flare combustion temperature"),
        ),
    ),
    SensorKind(
        "soil_co2",
        "Soil CO2 flux chamber with soil temperature and moisture",
        (
            Channel("co2_flux_nmol_m2_s", "nmol/m2/s", -100_000, 2_000_000, "soil CO2 flux"),
            Channel("soil_temp_dc", "0.1 degC", -500, 800, "soil temperature at 10 cm"),
            Channel("soil_vwc_pm", "1e-3 m3/m3", 0, 1_000, "volumetric water content"),
        ),
    ),
)

SENSOR_KINDS: dict[str, SensorKind] = {k.name: k for k in _KINDS}


def sensor_kind(name: str) -> SensorKind:
    """Return the kind called ``name``; raises ``KeyError`` naming the known kinds."""
    try:
        return SENSOR_KINDS[name]
    except KeyError:
        known = ", ".join(SENSOR_KINDS)
        raise KeyError(f"unknown sensor kind {name!r}; known kinds: {known}") from None
