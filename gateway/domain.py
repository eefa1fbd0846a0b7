"""The gateway's domain: a project's signed terms, pending enrollments, and the device
records an owner makes from them. Pure: no I/O, no clock.

A project's **terms** (id, owner key, methodology, location, parameters, the anomaly model it
requires) are signed by the owner's Ed25519 key under :data:`PROJECT_TAG` when the project is
registered. The gateway keeps the signature and hands the terms back with it, so the owner's
tools check them before using the model hash in a device record: a compromised gateway cannot
change them.

An enrollment is what a technician's device sent with a one-time token: its id, public key,
sensor kind and install data. It stays ``pending`` until the owner signs a
:class:`~senken_core.registry.DeviceRecord` for it (:func:`enrollment_record`); a revocation is
the next version of the record with ``revoked = True`` (:func:`revocation_record`).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from senken_core import canonical
from senken_core.errors import SignatureError
from senken_core.keys import DeviceKey, verify_signature
from senken_core.reading import DEVICE_ID_PATTERN
from senken_core.registry import DeviceRecord
from senken_core.sensors import SENSOR_KINDS

__all__ = [
    "PROJECT_TAG",
    "EnrollmentStatus",
    "PendingEnrollment",
    "ProjectTerms",
    "check_calibration_date",
    "check_text",
    "enrollment_record",
    "revocation_record",
]

PROJECT_TAG = b"senken/gateway/project/v1\x00"
_SCHEMA = 1
TEXT_MAX = 200  # as senken_core.registry's install data
PARAM_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
MAX_PARAMETERS = 32
ParameterValue = int | str | bool
EnrollmentStatus = Literal["pending", "approved", "rejected", "revoked"]


def check_text(value: object, what: str, *, required: bool = False,
               max_chars: int = TEXT_MAX) -> str:
    """``value`` if it is printable text of at most ``max_chars``; else ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text")
    if len(value) > max_chars:
        raise ValueError(f"{what} must be at most {max_chars} characters")
    if not value.isprintable():
        raise ValueError(f"{what} must not contain control characters or line breaks")
    if required and not value.strip():
        raise ValueError(f"{what} is required")
    return value


def check_calibration_date(value: str) -> str:
    """An ISO 8601 date (``YYYY-MM-DD``) or empty; else ValueError."""
    if value == "":
        return value
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("calibration_date must be an ISO 8601 date, YYYY-MM-DD")
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"calibration_date {value!r} is not a calendar date") from None
    return value


def _check_id(value: object, what: str) -> None:
    if not isinstance(value, str) or not DEVICE_ID_PATTERN.match(value):
        raise ValueError(f"{what} must be 3-63 characters of a-z, 0-9 and '-', starting with "
                         "a letter or digit")


def _check_parameters(parameters: Mapping[str, Any]) -> None:
    if len(parameters) > MAX_PARAMETERS:
        raise ValueError(f"at most {MAX_PARAMETERS} parameters")
    for name, value in parameters.items():
        if not isinstance(name, str) or not PARAM_NAME.match(name):
            raise ValueError(f"parameter name {name!r}: a-z, 0-9 and '_', starting with a "
                             "letter, at most 64 characters")
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise ValueError(f"parameter {name}: integer out of the 64-bit range")
        elif isinstance(value, str):
            check_text(value, f"parameter {name}")
        else:  # floats included: a credited quantity is never a float (docs/protocol.md)
            raise ValueError(f"parameter {name}: must be an integer, text or true/false "
                             "(no floats: use an integer in the smallest unit)")


@dataclass(frozen=True, slots=True)
class ProjectTerms:
    """A project as its owner registered it. Raises ValueError when built invalid."""

    project: str
    owner_public_key: bytes
    methodology: str
    model_sha256: bytes
    location: str = ""
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_id(self.project, "project")
        for name in ("owner_public_key", "model_sha256"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise ValueError(f"{name} must be 32 bytes (64 hex digits)")
        check_text(self.methodology, "methodology", required=True, max_chars=100)
        check_text(self.location, "location")
        if not isinstance(self.parameters, Mapping):
            raise ValueError("parameters must be a table of name = value")
        _check_parameters(self.parameters)

    def canonical(self) -> bytes:
        """The canonical CBOR bytes the owner signs."""
        return canonical.encode({
            "schema": _SCHEMA, "project": self.project, "owner_public_key": self.owner_public_key,
            "methodology": self.methodology, "model_sha256": self.model_sha256,
            "location": self.location, "parameters": dict(self.parameters),
        })

    def sign(self, owner_key: DeviceKey) -> bytes:
        """The owner's signature over the terms; ValueError if the key is not the owner's."""
        if owner_key.public_key != self.owner_public_key:
            raise ValueError("the key does not match the project's owner public key")
        return owner_key.sign(PROJECT_TAG, self.canonical())

    def verify(self, signature: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` is the owner's over the terms."""
        try:
            verify_signature(self.owner_public_key, PROJECT_TAG, self.canonical(), signature)
        except SignatureError:
            raise SignatureError(f"the terms of project {self.project} are not signed by its "
                                 "owner key") from None

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "owner_public_key": self.owner_public_key.hex(),
                "methodology": self.methodology, "model_sha256": self.model_sha256.hex(),
                "location": self.location, "parameters": dict(self.parameters)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProjectTerms:
        """Raises ValueError (or KeyError for a missing field)."""
        return cls(project=data["project"],
                   owner_public_key=bytes.fromhex(data["owner_public_key"]),
                   methodology=data["methodology"],
                   model_sha256=bytes.fromhex(data["model_sha256"]),
                   location=data.get("location", ""),
                   parameters=dict(data.get("parameters") or {}))


@dataclass(frozen=True, slots=True)
class PendingEnrollment:
    """What a device asked to be registered as. Raises ValueError when built invalid."""

    id: str
    project: str
    device: str
    public_key: bytes
    kind: str
    enrolled_at_ms: int
    location: str = ""
    calibration_date: str = ""
    technician: str = ""

    def __post_init__(self) -> None:
        _check_id(self.project, "project")
        _check_id(self.device, "device")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise ValueError("public_key must be 32 bytes (64 hex digits)")
        if self.kind not in SENSOR_KINDS:
            raise ValueError(f"unknown sensor kind {self.kind!r}")
        for name in ("location", "technician"):
            check_text(getattr(self, name), name)
        check_calibration_date(self.calibration_date)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "project": self.project, "device": self.device,
                "public_key": self.public_key.hex(), "kind": self.kind,
                "enrolled_at_ms": self.enrolled_at_ms, "location": self.location,
                "calibration_date": self.calibration_date, "technician": self.technician}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PendingEnrollment:
        """Raises ValueError (or KeyError for a missing field)."""
        return cls(id=str(data["id"]), project=data["project"], device=data["device"],
                   public_key=bytes.fromhex(data["public_key"]), kind=data["kind"],
                   enrolled_at_ms=int(data["enrolled_at_ms"]),
                   location=data.get("location", ""),
                   calibration_date=data.get("calibration_date", ""),
                   technician=data.get("technician", ""))

    @property
    def fingerprint(self) -> str:
        """The first 16 hex digits of the public key, for the owner to compare with what the
        technician read off the device (``senken edge init`` prints the key)."""
        return self.public_key.hex()[:16]


def enrollment_record(terms: ProjectTerms, enrollment: PendingEnrollment) -> DeviceRecord:
    """Version 1 of the device's record, for the owner to sign. ValueError if the enrollment
    is for another project."""
    if enrollment.project != terms.project:
        raise ValueError(f"enrollment {enrollment.id} is for project {enrollment.project}, "
                         f"not {terms.project}")
    return DeviceRecord(project=terms.project, device=enrollment.device,
                        public_key=enrollment.public_key, kind=enrollment.kind,
                        model_sha256=terms.model_sha256, version=1,
                        location=enrollment.location,
                        calibration_date=enrollment.calibration_date,
                        technician=enrollment.technician,
                        enrolled_at_ms=enrollment.enrolled_at_ms)


def revocation_record(held: DeviceRecord) -> DeviceRecord:
    """The next version of ``held``, revoked. ValueError if it is revoked already."""
    if held.revoked:
        raise ValueError(f"{held.device} is revoked already")
    return replace(held, version=held.version + 1, revoked=True)
