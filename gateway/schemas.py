"""The API's request bodies: pydantic models, validated where they enter, extra fields refused.

Each model checks what can be checked without the database (formats, lengths, ranges, sensor
kinds, ISO dates) and converts to the domain types of :mod:`gateway.domain`. A bad body becomes
one :class:`~gateway.errors.InvalidInput` whose message lists every bad field
(:func:`parse_body`, and the API's handler for FastAPI's own validation errors).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from gateway.broker_files import check_username
from gateway.domain import (
    TEXT_MAX,
    ParameterValue,
    ProjectTerms,
    check_calibration_date,
    check_text,
)
from gateway.errors import InvalidInput
from senken_core.sensors import SENSOR_KINDS

__all__ = [
    "MAX_RECORDS_PER_POST",
    "EnrollmentRequest",
    "ProjectRegistration",
    "RecordsPost",
    "TokenRequest",
    "parse_body",
    "problems_of",
]

M = TypeVar("M", bound=BaseModel)
MAX_RECORDS_PER_POST = 500
MAX_TOKENS_PER_REQUEST = 1000
MAX_TTL_SECONDS = 90 * 86400


def _hex(size: int, what: str) -> AfterValidator:
    pattern = re.compile(rf"[0-9a-fA-F]{{{2 * size}}}\Z")

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{what} must be {2 * size} hex digits ({size} bytes)")
        return value.lower()

    return AfterValidator(check)


def _device_id(value: str) -> str:
    check_username(value, "device")
    return value


def _kind(value: str) -> str:
    if value not in SENSOR_KINDS:
        raise ValueError(f"unknown sensor kind {value!r}; known: {', '.join(SENSOR_KINDS)}")
    return value


def _text(what: str) -> AfterValidator:
    return AfterValidator(lambda v: check_text(v, what))


Hex32 = Annotated[str, Field(max_length=64), _hex(32, "a key or hash")]
Text = Annotated[str, Field(max_length=TEXT_MAX)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ProjectRegistration(_Body):
    """``POST /v1/projects``: the owner's signed terms."""

    project: Annotated[str, Field(max_length=63), AfterValidator(_device_id)]
    owner_public_key: Hex32
    methodology: Annotated[str, Field(min_length=1, max_length=100), _text("methodology")]
    model_sha256: Hex32
    location: Annotated[Text, _text("location")] = ""
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    terms_signature: Annotated[str, Field(max_length=128), _hex(64, "terms_signature")]

    def terms(self) -> ProjectTerms:
        """The domain terms; raises InvalidInput (e.g. a bad parameter name)."""
        try:
            return ProjectTerms(project=self.project,
                                owner_public_key=bytes.fromhex(self.owner_public_key),
                                methodology=self.methodology,
                                model_sha256=bytes.fromhex(self.model_sha256),
                                location=self.location, parameters=dict(self.parameters))
        except ValueError as exc:
            raise InvalidInput(f"project terms: {exc}", project=self.project) from None


class TokenRequest(_Body):
    """``POST /v1/projects/{project}/tokens``."""

    count: Annotated[int, Field(ge=1, le=MAX_TOKENS_PER_REQUEST)] = 1
    ttl_seconds: Annotated[int, Field(ge=60, le=MAX_TTL_SECONDS)] = 7 * 86400


class EnrollmentRequest(_Body):
    """``POST /v1/enrollments``: a device asking to be registered, with a one-time token."""

    token: Annotated[str, Field(min_length=1, max_length=200)]
    device: Annotated[str, Field(max_length=63), AfterValidator(_device_id)]
    public_key: Hex32
    kind: Annotated[str, Field(max_length=32), AfterValidator(_kind)]
    location: Annotated[Text, _text("location")] = ""
    calibration_date: Annotated[str, Field(max_length=10),
                                AfterValidator(check_calibration_date)] = ""
    technician: Annotated[Text, _text("technician")] = ""


class RecordsPost(_Body):
    """``POST /v1/projects/{project}/records``: owner-signed records, hex of
    :meth:`~senken_core.registry.SignedDeviceRecord.to_wire`."""

    records: Annotated[list[Annotated[str, Field(min_length=2, max_length=8192)]],
                       Field(min_length=1, max_length=MAX_RECORDS_PER_POST)]

    def wires(self) -> list[bytes]:
        """The records' bytes; raises InvalidInput for text that is not hex."""
        out = []
        for i, text in enumerate(self.records):
            try:
                out.append(bytes.fromhex(text))
            except ValueError:
                raise InvalidInput(f"records[{i}]: not hex") from None
        return out


def problems_of(errors: Sequence[Any]) -> list[str]:
    """One ``field: what is wrong`` line per pydantic / FastAPI validation error."""
    lines = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        if error.get("type") == "missing":
            message = "required"
        elif error.get("type") == "extra_forbidden":
            message = "unknown field (check its spelling)"
        elif error.get("type") in ("model_type", "model_attributes_type", "dict_type"):
            message = "must be a JSON object"
        elif error.get("type") == "json_invalid":
            where, message = "body", f"not valid JSON ({error.get('ctx', {}).get('error', '')})"
        lines.append(f"{where}: {message}")
    return lines


def parse_body(model: type[M], data: Any) -> M:
    """Validate ``data`` (parsed JSON) as ``model``; raises InvalidInput listing each bad
    field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput("invalid request: " + "; ".join(problems_of(exc.errors()))) \
            from None
