"""Value generators per sensor kind: plausible, deterministic, integer channel values.

A :class:`SignalGenerator` turns ``(t, dt)`` (the device's true time in Unix seconds and the
seconds since the previous frame) into one integer per channel of its kind, in the kind's
channel order and always inside the channel's range. All randomness comes from a
``random.Random(seed)`` owned by the generator and is drawn a fixed number of times per call,
so the same seed and the same sequence of ``(t, dt)`` give the same values.

Time of day is taken in UTC from ``t`` (so a test clock that starts at a fixed instant gives a
fixed curve). The shapes:

* ``elec_meter``: a solar plant of ``capacity_w`` (default 1 MW): export power follows
  ``sin(pi * (hour - 6) / 12) ** 1.3`` between 06:00 and 18:00 UTC, times a slowly varying cloud
  factor (0.3 .. 1) plus 0.5 % noise; at night the plant draws a small auxiliary load
  (power_w about -800 W). ``energy_export_wh`` is a cumulative register that integrates
  ``max(power_w, 0) * dt`` (it never decreases); ``voltage_dv`` is 2300 +/- a few tenths of volts.
* ``biogas_flare``: flow about 150 Nm3/h (150 000 NL/h) with a slow random walk and a daily
  swing of +/-10 %, CH4 5500..6500 bp, flare temperature 8500..10000 (0.1 degC) with noise.
* ``soil_co2``: flux with a diurnal cycle peaking at 14:00 UTC (about 2..6 umol/m2/s), soil
  temperature 15 degC +/- 5 degC daily, volumetric water content slowly drying from about
  300 per mille with occasional rain events.

``override`` lets a replayed series (:mod:`firmware_sim.replay`) replace a channel's generated
value before anything derived from it is computed (a replayed ``power_w`` is what the energy
register integrates).
"""

from __future__ import annotations

import abc
import math
import random
from collections.abc import Callable, Mapping

from senken_core.sensors import SENSOR_KINDS, Channel, SensorKind

__all__ = [
    "TYPICAL_RANGES",
    "SignalGenerator",
    "clamp",
    "make_generator",
]

# The band a channel normally lives in: the default target of a replayed series and a
# guide for the plots. Channel ranges themselves (senken_core.sensors) are much wider.
TYPICAL_RANGES: dict[str, tuple[int, int]] = {
    "energy_export_wh": (0, 2**40),
    "power_w": (0, 1_000_000),
    "voltage_dv": (2200, 2400),
    "flow_nl_per_h": (50_000, 250_000),
    "ch4_bp": (5000, 7000),
    "flare_temp_dc": (8000, 10_500),
    "co2_flux_nmol_m2_s": (0, 10_000),
    "soil_temp_dc": (-50, 350),
    "soil_vwc_pm": (50, 450),
}

_DAY = 86_400.0


def clamp(channel: Channel, value: float | int) -> int:
    """``value`` rounded to an integer and clamped into ``channel``'s range."""
    if isinstance(value, float):
        if math.isnan(value):
            return channel.minimum
        if math.isinf(value):
            return channel.maximum if value > 0 else channel.minimum
        value = round(value)
    return max(channel.minimum, min(channel.maximum, int(value)))


def _hour(t: float) -> float:
    return (t % _DAY) / 3600.0


class SignalGenerator(abc.ABC):
    """Base class: one instance per simulated device; call :meth:`values` once per frame."""

    kind: SensorKind

    def __init__(self, kind: str, seed: int = 0) -> None:
        self.kind = SENSOR_KINDS[kind]
        self.rng = random.Random(seed)

    def values(
        self, t: float, dt: float, override: Mapping[str, int] | None = None
    ) -> tuple[tuple[str, int], ...]:
        """The channel values at true time ``t``, ``dt`` seconds after the previous frame."""
        raw = self._raw(t, max(dt, 0.0), override or {})
        return tuple((c.name, clamp(c, raw[c.name])) for c in self.kind.channels)

    @abc.abstractmethod
    def _raw(self, t: float, dt: float, override: Mapping[str, int]) -> dict[str, float]:
        """Unclamped channel values at ``t`` (each sensor kind's generator says how)."""


class ElecMeter(SignalGenerator):
    def __init__(self, seed: int = 0, capacity_w: int = 1_000_000) -> None:
        super().__init__("elec_meter", seed)
        self.capacity_w = capacity_w
        self.energy_wh = float(self.rng.randrange(1_000_000, 50_000_000))
        self.cloud = 0.85

    def _raw(self, t: float, dt: float, override: Mapping[str, int]) -> dict[str, float]:
        rng = self.rng
        self.cloud = min(1.0, max(0.3, self.cloud + rng.gauss(0.0, 0.01)))
        noise_p, noise_v, night = rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 1)
        hour = _hour(t)
        if 6.0 < hour < 18.0:
            shape = math.sin(math.pi * (hour - 6.0) / 12.0) ** 1.3
            power = self.capacity_w * shape * self.cloud * (1.0 + 0.005 * noise_p)
        else:
            power = -800.0 + 50.0 * night
        if "power_w" in override:
            power = float(override["power_w"])
        power = float(clamp(self.kind.channels[1], power))
        self.energy_wh += max(power, 0.0) * dt / 3600.0
        energy = math.floor(self.energy_wh)
        if "energy_export_wh" in override:
            energy = override["energy_export_wh"]
        voltage = 2300.0 + 15.0 * math.sin(2 * math.pi * hour / 24.0) + 3.0 * noise_v
        if "voltage_dv" in override:
            voltage = float(override["voltage_dv"])
        return {"energy_export_wh": energy, "power_w": power, "voltage_dv": voltage}


class BiogasFlare(SignalGenerator):
    def __init__(self, seed: int = 0) -> None:
        super().__init__("biogas_flare", seed)
        self.flow_base = 150_000.0
        self.ch4 = 6000.0

    def _raw(self, t: float, dt: float, override: Mapping[str, int]) -> dict[str, float]:
        rng = self.rng
        walk, noise_f, walk_c, noise_t = (rng.gauss(0, 1) for _ in range(4))
        self.flow_base = min(200_000.0, max(100_000.0, self.flow_base + 300.0 * walk))
        hour = _hour(t)
        flow = self.flow_base * (1.0 + 0.1 * math.sin(2 * math.pi * (hour - 9.0) / 24.0))
        flow += 1_000.0 * noise_f
        self.ch4 = min(6450.0, max(5550.0, self.ch4 + 10.0 * walk_c))
        temp = 9250.0 + 400.0 * (self.ch4 - 6000.0) / 450.0 + 120.0 * noise_t
        temp = min(10_000.0, max(8500.0, temp))
        raw = {"flow_nl_per_h": flow, "ch4_bp": self.ch4, "flare_temp_dc": temp}
        raw.update((k, float(v)) for k, v in override.items() if k in raw)
        return raw


class SoilCo2(SignalGenerator):
    def __init__(self, seed: int = 0) -> None:
        super().__init__("soil_co2", seed)
        self.vwc = 300.0

    def _raw(self, t: float, dt: float, override: Mapping[str, int]) -> dict[str, float]:
        rng = self.rng
        noise_f, noise_t, rain, rain_amount = (
            rng.gauss(0, 1),
            rng.gauss(0, 1),
            rng.random(),
            rng.random(),
        )
        hour = _hour(t)
        diurnal = math.cos(2 * math.pi * (hour - 14.0) / 24.0)
        temp = 150.0 + 50.0 * diurnal + 2.0 * noise_t
        # drying about 10 per mille per day; a rain event about once per 2000 frames
        self.vwc -= 10.0 * dt / _DAY
        if rain < 0.0005:
            self.vwc += 20.0 + 60.0 * rain_amount
        self.vwc = min(450.0, max(80.0, self.vwc))
        # flux rises with temperature (Q10 about 2) and is damped when the soil is very dry
        q10 = 2.0 ** ((temp - 150.0) / 100.0)
        wet = min(1.0, self.vwc / 200.0)
        flux = 3_500.0 * q10 * wet + 150.0 * noise_f
        raw = {"co2_flux_nmol_m2_s": flux, "soil_temp_dc": temp, "soil_vwc_pm": self.vwc}
        raw.update((k, float(v)) for k, v in override.items() if k in raw)
        return raw


_GENERATORS: dict[str, Callable[[int], SignalGenerator]] = {
    "elec_meter": ElecMeter,
    "biogas_flare": BiogasFlare,
    "soil_co2": SoilCo2,
}


def make_generator(kind: str, seed: int = 0) -> SignalGenerator:
    """The generator for sensor kind ``kind`` (``KeyError`` naming the kinds if unknown)."""
    try:
        cls = _GENERATORS[kind]
    except KeyError:
        known = ", ".join(_GENERATORS)
        raise KeyError(f"unknown sensor kind {kind!r}; known kinds: {known}") from None
    return cls(seed)
