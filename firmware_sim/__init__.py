"""firmware_sim: simulated sensor firmware speaking the SK1 serial protocol on a pty.

See docs/firmware_sim.md. Imports senken_core only.
"""

from firmware_sim.device import SimulatedDevice
from firmware_sim.faults import (
    FAULT_TYPES,
    Fault,
    FaultScriptError,
    load_fault_script,
    parse_fault_script,
)
from firmware_sim.replay import ReplayError, ReplaySpec, bundled_series

__all__ = [
    "FAULT_TYPES",
    "Fault",
    "FaultScriptError",
    "ReplayError",
    "ReplaySpec",
    "SimulatedDevice",
    "bundled_series",
    "load_fault_script",
    "parse_fault_script",
]
