"""The gateway's HTTP API (FastAPI), a thin adapter over :class:`GatewayService`.

::

    GET  /v1/health
    POST /v1/projects                                   admin token   register a project
    GET  /v1/projects/{project}                         owner token   its signed terms
    POST /v1/projects/{project}/tokens                  owner token   one-time enrollment tokens
    GET  /v1/projects/{project}/enrollments?status=     owner token   pending (or all) enrollments
    POST /v1/projects/{project}/enrollments/{id}/reject owner token   reject a pending one
    POST /v1/projects/{project}/records                 owner token   owner-signed device records
    POST /v1/enrollments                                enroll token  a device enrolls
    GET  /v1/enrollments/{id}                           poll secret   status (+ credentials)
    GET  /v1/devices/{device}                           public        the device's signed record

Tokens go in ``Authorization: Bearer <token>`` (the enrollment token in the body). Every
refusal is ``{"error": <stable reason>, "message": <what is wrong and what to do>}`` with a 4xx
status; a bad body lists each bad field. Endpoints are plain functions: FastAPI runs them on
its thread pool, so the blocking database calls never stall the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import GatewayError, NotAuthorised
from gateway.schemas import (
    EnrollmentRequest,
    ProjectRegistration,
    RecordsPost,
    TokenRequest,
    problems_of,
)
from gateway.service import GatewayService

__all__ = ["MAX_BODY_BYTES", "create_api"]

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 * 1024 * 1024
_ID = r"^[a-z0-9][a-z0-9-]{2,62}$"
ProjectId = Annotated[str, Path(pattern=_ID, max_length=63)]
DeviceId = Annotated[str, Path(pattern=_ID, max_length=63)]
EnrollmentId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
Authorization = Annotated[str | None, Header()]


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorised("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _error(status: int, reason: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": reason, "message": message, **extra}, status_code=status)


def create_api(service: GatewayService,
               lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
               ) -> FastAPI:
    """The FastAPI application for ``service`` (created here, never at import time)."""
    app = FastAPI(title="Senken gateway", version="1", lifespan=lifespan)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_r: Request, exc: GatewayError) -> JSONResponse:
        log.info("refused (%s): %s", exc.reason, exc.message)
        return _error(exc.http_status, exc.reason, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        problems = problems_of(exc.errors())
        return _error(422, "invalid_input", "invalid request: " + "; ".join(problems),
                      problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        return _error(exc.status_code, reason, str(exc.detail))

    @app.middleware("http")
    async def _limit_body(request: Request,
                          call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _error(413, "too_large", f"request body above {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/projects", status_code=201)
    def register_project(body: ProjectRegistration,
                         authorization: Authorization = None) -> dict[str, Any]:
        api_token = service.register_project(_bearer(authorization), body)
        return {"project": body.project, "api_token": api_token,
                "note": "the owner API token is shown only now; keep it (mode 0600)"}

    @app.get("/v1/projects/{project}")
    def project_terms(project: ProjectId, authorization: Authorization = None) -> dict[str, Any]:
        terms, signature = service.project_terms(project, _bearer(authorization))
        return {"terms": terms.to_json(), "terms_signature": signature.hex()}

    @app.post("/v1/projects/{project}/tokens", status_code=201)
    def issue_tokens(project: ProjectId, body: TokenRequest,
                     authorization: Authorization = None) -> dict[str, Any]:
        tokens, expires_at_ms = service.issue_tokens(project, _bearer(authorization), body)
        return {"project": project, "tokens": tokens, "expires_at_ms": expires_at_ms}

    @app.get("/v1/projects/{project}/enrollments")
    def enrollments(project: ProjectId, authorization: Authorization = None,
                    status: Annotated[str, Query(max_length=16)] = "pending",
                    ) -> dict[str, Any]:
        found = service.enrollments(project, _bearer(authorization),
                                    None if status == "all" else status)
        return {"enrollments": [{**e.to_json(), "status": s} for e, s in found]}

    @app.post("/v1/projects/{project}/enrollments/{enrollment_id}/reject")
    def reject(project: ProjectId, enrollment_id: EnrollmentId,
               authorization: Authorization = None) -> dict[str, str]:
        service.reject(project, _bearer(authorization), enrollment_id)
        return {"enrollment_id": enrollment_id, "status": "rejected"}

    @app.post("/v1/projects/{project}/records")
    def post_records(project: ProjectId, body: RecordsPost,
                     authorization: Authorization = None) -> dict[str, Any]:
        outcomes, sync = service.accept_records(project, _bearer(authorization), body.wires())
        broker = None if sync is None else {"written": sync.written, "reloaded": sync.reloaded,
                                            "message": sync.message}
        return {"results": [o.to_json() for o in outcomes], "broker": broker}

    @app.post("/v1/enrollments", status_code=201)
    def enroll(body: EnrollmentRequest) -> dict[str, Any]:
        row, poll_secret = service.enroll(body)
        return {"enrollment_id": row.id, "poll_secret": poll_secret, "status": row.status,
                "project": row.project, "device": row.device}

    @app.get("/v1/enrollments/{enrollment_id}")
    def enrollment_status(enrollment_id: EnrollmentId,
                          authorization: Authorization = None) -> dict[str, Any]:
        return service.enrollment_status(enrollment_id, _bearer(authorization))

    @app.get("/v1/devices/{device}")
    def device_record(device: DeviceId) -> dict[str, Any]:
        row = service.device_record(device)
        return {"device": row.device, "project": row.project, "version": row.version,
                "revoked": row.revoked, "published": row.published,
                "signed_record": row.wire.hex()}

    return app
