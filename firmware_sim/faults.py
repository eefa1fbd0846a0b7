"""Scriptable fault injection: what can go wrong between a sensor and the edge agent.

A fault is scheduled at a *frame slot*: slot 0 is the first frame period after
:meth:`SimulatedDevice.start`, and every frame period is a slot, whether its frame was sent,
corrupted, lost or silenced (a reboot does not restart the slot count, only the frame counter).

========== ====================================================================================
fault      effect on what a reader sees (parameters, defaults)
========== ====================================================================================
spike      ``channel`` value multiplied by ``factor`` and/or shifted by ``offset`` for ``frames``
           frames (default factor 10, 1 frame); clamped into the channel range so the frame
           still validates: a plausible-looking outlier.
drift      ``channel`` offset growing linearly from ``offset/frames`` at ``at_frame`` to
           ``offset`` after ``frames`` frames (default 100), then staying at ``offset``
           (a sensor that drifted stays drifted). Frames stay valid (clamped).
stuck      ``channel`` (or, without ``channel``, every channel) repeats the value of the frame
           before ``at_frame`` for ``frames`` frames (default 10). Counter and clock advance.
dropout    nothing is sent for ``frames`` slots (default 5). With ``lost = true`` (default) the
           counter advances as if the frames were lost on the line (the reader sees a counter
           gap); with ``lost = false`` the firmware was mute and the counter does not advance.
garbage    a line of ``length`` random bytes (default 32; no ``$``, CR or LF) ending in CRLF is
           written just before the slot's frame, which is still sent: parse_frame raises
           FrameError("syntax").
checksum   the slot's frame is sent with a wrong CRC: parse_frame raises "checksum".
truncated  only the first ``keep`` bytes of the frame (default half) are sent. Without
           ``line_end`` (default) the next frame follows on the same line and parse_frame
           resynchronises on its ``$``: the reader sees that next frame and a counter gap. With
           ``line_end = true`` CRLF follows the stub: parse_frame raises "syntax".
out_of_range  ``channel`` is set to its maximum + 1: validate_frame raises "range".
clock_jump ``device_ms`` jumps by ``ms`` (may be negative) from this slot on (clamped at 0).
reboot     the frame counter restarts at 0 with this slot's frame.
unplug     the port disappears at this slot (pty closed, link removed: a reader gets an error
           or EOF) and comes back ``frames`` slots later (default 5; 0 = stays unplugged until
           :meth:`SimulatedDevice.replug`) as a new pty, with the link re-pointed. The device
           kept running meanwhile: the counter advanced through the absent slots.
========== ====================================================================================

Every fault may carry ``kind`` (apply only to devices of that sensor kind) and ``device``
(apply only to that device index of a ``senken sim run``).

A fault script is TOML::

    [[faults]]
    at_frame = 10
    fault = "spike"
    channel = "power_w"
    factor = 5.0

or JSON, either a list of entries or ``{"faults": [...]}``. :func:`parse_fault_script` and
:func:`load_fault_script` raise :class:`FaultScriptError` (and nothing else) for any bad script,
naming the line (syntax errors) or the entry and field (``faults[2].channel: ...``).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from senken_core.errors import SenkenError
from senken_core.sensors import SENSOR_KINDS

__all__ = [
    "FAULT_PARAMS",
    "FAULT_TYPES",
    "Fault",
    "FaultScriptError",
    "check_faults",
    "load_fault_script",
    "parse_fault_script",
]

_COMMON = ("fault", "at_frame", "kind", "device")

# parameter -> default (None: required when listed here with REQUIRED)
FAULT_PARAMS: dict[str, dict[str, Any]] = {
    "spike": {"channel": None, "factor": None, "offset": None, "frames": 1},
    "drift": {"channel": None, "offset": None, "frames": 100},
    "stuck": {"channel": None, "frames": 10},
    "dropout": {"frames": 5, "lost": True},
    "garbage": {"length": 32},
    "checksum": {},
    "truncated": {"keep": None, "line_end": False},
    "out_of_range": {"channel": None},
    "clock_jump": {"ms": None},
    "reboot": {},
    "unplug": {"frames": 5},
}
FAULT_TYPES: tuple[str, ...] = tuple(FAULT_PARAMS)
_REQUIRED: dict[str, tuple[str, ...]] = {
    "spike": ("channel",),
    "drift": ("channel", "offset"),
    "out_of_range": ("channel",),
    "clock_jump": ("ms",),
}
_MAX_INT = 2**62
_MAX_GARBAGE = 200


class FaultScriptError(SenkenError, ValueError):
    """A fault script or fault that is invalid; says where (``line`` or entry and field)."""

    def __init__(
        self,
        message: str,
        *,
        source: str = "<faults>",
        entry: int | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        where = source
        if line is not None:
            where += f", line {line}"
        if entry is not None:
            where += f": faults[{entry}]"
            if field is not None:
                where += f".{field}"
        elif field is not None:
            where += f": {field}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.entry = entry
        self.field = field
        self.line = line
        self.detail = message


class _FieldError(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(name, f"must be an integer, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise _FieldError(name, f"must be in {lo}..{hi}, not {value}")
    return value


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FieldError(name, f"must be a number, not {type(value).__name__}")
    if isinstance(value, int) and abs(value) > _MAX_INT:
        raise _FieldError(name, f"must be within +/-{_MAX_INT}")
    number = float(value)
    if not math.isfinite(number) or abs(number) > _MAX_INT:
        raise _FieldError(name, f"must be a finite number within +/-{_MAX_INT}, not {value}")
    return number


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _FieldError(name, f"must be true or false, not {type(value).__name__}")
    return value


def _name(name: str, value: Any, known: Iterable[str] | None = None) -> str:
    if not isinstance(value, str):
        raise _FieldError(name, f"must be a string, not {type(value).__name__}")
    if known is not None and value not in known:
        raise _FieldError(name, f"{value!r} is not one of {', '.join(known)}")
    return value


_ALL_CHANNELS = tuple(dict.fromkeys(c.name for k in SENSOR_KINDS.values() for c in k.channels))


def _normalise(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check one fault's fields; returns them with defaults filled in. Raises _FieldError."""
    if "fault" not in values or values["fault"] is None:
        raise _FieldError("fault", f"missing (one of {', '.join(FAULT_TYPES)})")
    kind = _name("fault", values["fault"], FAULT_TYPES)
    params = FAULT_PARAMS[kind]
    for key, value in values.items():
        if key in _COMMON or value is None:
            continue
        if key not in params:
            allowed = ", ".join(params) or "none"
            raise _FieldError(key, f"is not a parameter of {kind} (parameters: {allowed})")
    if values.get("at_frame") is None:
        raise _FieldError("at_frame", "missing (the frame slot at which the fault starts)")
    out: dict[str, Any] = {
        "fault": kind,
        "at_frame": _int("at_frame", values["at_frame"], 0, _MAX_INT),
    }
    if values.get("kind") is not None:
        out["kind"] = _name("kind", values["kind"], SENSOR_KINDS)
    if values.get("device") is not None:
        out["device"] = _int("device", values["device"], 0, 1_000_000)
    for key in _REQUIRED.get(kind, ()):
        if values.get(key) is None:
            raise _FieldError(key, f"missing (required by {kind})")
    for key, default in params.items():
        value = values.get(key)
        if value is None:
            out[key] = default
            continue
        if key == "channel":
            out[key] = _name(key, value, _ALL_CHANNELS)
        elif key == "factor":
            out[key] = _float(key, value)
        elif key in ("offset", "ms"):
            out[key] = _int(key, value, -_MAX_INT, _MAX_INT)
        elif key == "frames":
            out[key] = _int(key, value, 0 if kind == "unplug" else 1, _MAX_INT)
        elif key == "length":
            out[key] = _int(key, value, 1, _MAX_GARBAGE)
        elif key == "keep":
            out[key] = _int(key, value, 1, 1000)
        elif key in ("lost", "line_end"):
            out[key] = _bool(key, value)
    if kind == "spike" and out["factor"] is None and out["offset"] is None:
        out["factor"] = 10.0
    if kind == "spike" and out["offset"] is None:
        out["offset"] = 0
    if kind == "spike" and out["factor"] is None:
        out["factor"] = 1.0
    if kind == "out_of_range" or "channel" in out:
        channel = out.get("channel")
        kinds = [k for k in SENSOR_KINDS.values() if channel in k.channel_names]
        if "kind" in out and channel is not None and out["kind"] not in {k.name for k in kinds}:
            raise _FieldError("channel", f"{channel!r} is not a channel of {out['kind']}")
    return out


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One scheduled fault; see the module docstring for each type's parameters.

    ``Fault(fault="spike", at_frame=10, channel="power_w", factor=5.0)``. Parameters that a
    type does not take must be left ``None``; omitted ones get the type's default.
    """

    fault: str
    at_frame: int
    channel: str | None = None
    frames: int | None = None
    factor: float | None = None
    offset: int | None = None
    ms: int | None = None
    length: int | None = None
    keep: int | None = None
    line_end: bool | None = None
    lost: bool | None = None
    kind: str | None = None
    device: int | None = None

    def __post_init__(self) -> None:
        raw = {f.name: getattr(self, f.name) for f in fields(self)}
        try:
            clean = _normalise(raw)
        except _FieldError as exc:
            raise FaultScriptError(exc.message, source="Fault", field=exc.field) from None
        for key, value in clean.items():
            object.__setattr__(self, key, value)

    def applies_to(self, kind: str, device: int | None = None) -> bool:
        """Whether this fault targets a device of ``kind`` (and index ``device``)."""
        if self.kind is not None and self.kind != kind:
            return False
        return self.device is None or device is None or self.device == device

    def to_dict(self) -> dict[str, Any]:
        """The fields a script needs to recreate this fault (``None`` left out)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


def check_faults(
    faults: Sequence[Fault],
    kind: str,
    device: int | None = None,
    *,
    source: str = "<faults>",
    by_channel: bool = False,
) -> list[Fault]:
    """The faults that apply to a device of ``kind`` (and index ``device``), checked.

    Raises :class:`FaultScriptError` naming the entry (its index in ``faults``) whose channel
    is not a channel of ``kind``. With ``by_channel`` (used by ``senken sim run``), a fault
    that names a channel but neither ``kind`` nor ``device`` is instead skipped on devices
    without that channel: channel names are unique across kinds, so they imply the kind.
    """
    channels = SENSOR_KINDS[kind].channel_names
    out = []
    for index, fault in enumerate(faults):
        if not isinstance(fault, Fault):
            raise FaultScriptError(
                f"is a {type(fault).__name__}, not a Fault", source=source, entry=index
            )
        if not fault.applies_to(kind, device):
            continue
        if fault.channel is not None and fault.channel not in channels:
            if by_channel and fault.kind is None and fault.device is None:
                continue
            raise FaultScriptError(
                f"{fault.channel!r} is not a channel of {kind} ({', '.join(channels)}); "
                'add kind = "..." to target one sensor kind',
                source=source,
                entry=index,
                field="channel",
            )
        out.append(fault)
    return out


_JSON_START = re.compile(r"\s*(\{|\[\s*[{\]]|\[\s*$)")


def parse_fault_script(
    text: str | bytes, *, fmt: str | None = None, source: str = "<faults>"
) -> list[Fault]:
    """Parse a TOML or JSON fault script (``fmt`` "toml"/"json", or guessed from the text)."""
    try:
        return _parse(text, fmt, source)
    except FaultScriptError:
        raise
    except RecursionError:
        raise FaultScriptError("nested too deeply", source=source) from None
    except Exception as exc:  # pragma: no cover - a bug here must still give a clear error
        raise FaultScriptError(f"cannot read fault script: {exc}", source=source) from exc


def _parse(text: str | bytes, fmt: str | None, source: str) -> list[Fault]:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FaultScriptError(
                f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=source
            ) from None
    if fmt is None:
        fmt = "json" if _JSON_START.match(text) else "toml"
    data: Any
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FaultScriptError(
                f"invalid JSON: {exc.msg} (column {exc.colno})", source=source, line=exc.lineno
            ) from None
        if isinstance(data, dict):
            data = _faults_key(data, source)
    elif fmt == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"line (\d+)", str(exc))
            raise FaultScriptError(
                f"invalid TOML: {exc}", source=source, line=int(match.group(1)) if match else None
            ) from None
        data = _faults_key(data, source)
    else:
        raise FaultScriptError(f"unknown format {fmt!r} (toml or json)", source=source)
    if not isinstance(data, list):
        raise FaultScriptError(
            f"faults must be a list of tables/objects, not {type(data).__name__}",
            source=source,
            field="faults",
        )
    out: list[Fault] = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise FaultScriptError(
                f"must be a table/object, not {type(entry).__name__}", source=source, entry=index
            )
        try:
            clean = _normalise(entry)
        except _FieldError as exc:
            raise FaultScriptError(
                exc.message, source=source, entry=index, field=exc.field
            ) from None
        out.append(Fault(**clean))
    return out


def _faults_key(data: dict[str, Any], source: str) -> Any:
    extra = sorted(str(k) for k in data if k != "faults")
    if extra:
        raise FaultScriptError(
            f"unknown top-level key {extra[0]!r} (expected only 'faults')",
            source=source,
            field=extra[0],
        )
    return data.get("faults", [])


def load_fault_script(path: str | Path) -> list[Fault]:
    """Read a fault script file (``.json`` is JSON, ``.toml`` TOML, otherwise guessed)."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise FaultScriptError(f"cannot read: {exc.strerror or exc}", source=str(file)) from None
    suffix = file.suffix.lower()
    fmt = {"json": "json", "toml": "toml"}.get(suffix.lstrip("."))
    return parse_fault_script(raw, fmt=fmt, source=str(file))
