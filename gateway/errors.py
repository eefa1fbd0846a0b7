"""The gateway's errors: each says what was refused and why, and maps to one HTTP status.

    SenkenError (senken_core.errors)
    └── GatewayError             .reason (stable code), .http_status
        ├── InvalidInput         422  a request body, CLI argument or config value is wrong
        ├── NotAuthorised        401  missing or wrong admin / owner token or poll secret
        ├── NotFound             404  no such project, enrollment or device
        ├── Conflict             409  device id taken, token used, stale record version, ...
        ├── TokenExpired         410  an enrollment token past its expiry
        ├── Unavailable          503  the database cannot be reached
        └── RecordRefused        4xx  a signed registry record refused (.reason as in
                                      senken_core.registry.RegistryError)

The service raises these; the API turns each into ``{"error": reason, "message": ...}`` with
its status, the CLI into one line and an exit code.
"""

from __future__ import annotations

from senken_core.errors import SenkenError

__all__ = [
    "Conflict",
    "GatewayError",
    "InvalidInput",
    "NotAuthorised",
    "NotFound",
    "RecordRefused",
    "TokenExpired",
    "Unavailable",
]


class GatewayError(SenkenError):
    """Root of the gateway's refusals."""

    http_status = 400
    default_reason = "bad_request"

    def __init__(self, message: str, reason: str | None = None, *,
                 device: str | None = None, project: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.device = device
        self.project = project


class InvalidInput(GatewayError):
    http_status = 422
    default_reason = "invalid_input"


class NotAuthorised(GatewayError):
    http_status = 401
    default_reason = "not_authorised"


class NotFound(GatewayError):
    http_status = 404
    default_reason = "not_found"


class Conflict(GatewayError):
    http_status = 409
    default_reason = "conflict"


class TokenExpired(GatewayError):
    http_status = 410
    default_reason = "token_expired"


class Unavailable(GatewayError):
    http_status = 503
    default_reason = "unavailable"


# senken_core.registry reasons -> HTTP status
_RECORD_STATUS = {"malformed": 422, "bad_signature": 403, "unknown_project": 404,
                  "device_taken": 409, "stale_version": 409, "revoked_final": 409,
                  "wrong_project": 403, "not_enrolled": 409, "enrollment_mismatch": 409}


class RecordRefused(GatewayError):
    """A signed device record the gateway will not store (reason: see ``_RECORD_STATUS``)."""

    def __init__(self, reason: str, message: str, device: str | None = None) -> None:
        super().__init__(message, reason, device=device)
        self.http_status = _RECORD_STATUS.get(reason, 422)
