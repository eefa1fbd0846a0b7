"""The project owner's side: an HTTP client for the gateway's API (httpx) and the owner's
steps (register, approve, revoke), which sign on the owner's machine.

The owner's tools trust the gateway with nothing they sign: the project's terms come back with
the owner's own signature and are checked (:meth:`ProjectTerms.verify`) before their model hash
goes into a record, and a revocation starts from the record the gateway holds only after its
signature checks out against the owner's key. What remains to trust is the list of pending
enrollments: compare each device's key fingerprint with the one the technician reads off the
device before approving (``senken gateway approve`` shows it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx

from gateway.domain import PendingEnrollment, ProjectTerms, enrollment_record, revocation_record
from senken_core.errors import SenkenError, SignatureError
from senken_core.keys import DeviceKey
from senken_core.registry import DeviceRecord, RegistryError, SignedDeviceRecord

__all__ = ["ClientError", "GatewayClient", "approve_enrollments", "register_project",
           "revoke_device"]


class ClientError(SenkenError):
    """A call the gateway refused (``status`` 4xx/5xx, ``reason``) or could not be made
    (``status`` 0)."""

    def __init__(self, message: str, status: int = 0, reason: str = "unreachable") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class GatewayClient:
    """Blocking client; every call has a timeout. ``http``: an httpx.Client to use instead
    (the tests pass FastAPI's TestClient)."""

    def __init__(self, base_url: str, api_token: str | None = None, timeout_s: float = 15.0,
                 http: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_token = api_token
        self._http = http or httpx.Client(timeout=timeout_s)
        self._prefix = "" if http is not None else self.base_url

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, *, json: Any = None, token: str | None = None,
              params: dict[str, str] | None = None) -> dict[str, Any]:
        token = token if token is not None else self.api_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = self._http.request(method, self._prefix + path, json=json,
                                          headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the gateway at {self.base_url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            raise ClientError(str(body.get("message") or response.text[:200]
                                  or response.reason_phrase),
                              response.status_code, str(body.get("error", "http")))
        if not isinstance(body, dict):
            raise ClientError(f"the gateway answered {path} with something that is not a "
                              "JSON object", response.status_code, "bad_response")
        return body

    def register_project(self, admin_token: str, terms: ProjectTerms,
                         signature: bytes) -> str:
        body = {**terms.to_json(), "terms_signature": signature.hex()}
        return str(self._call("POST", "/v1/projects", json=body, token=admin_token)["api_token"])

    def terms(self, project: str) -> tuple[ProjectTerms, bytes]:
        body = self._call("GET", f"/v1/projects/{project}")
        try:
            return ProjectTerms.from_json(body["terms"]), bytes.fromhex(body["terms_signature"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ClientError(f"the gateway's terms of {project} are malformed: {exc}",
                              200, "bad_response") from None

    def issue_tokens(self, project: str, count: int, ttl_seconds: int) -> tuple[list[str], int]:
        body = self._call("POST", f"/v1/projects/{project}/tokens",
                          json={"count": count, "ttl_seconds": ttl_seconds})
        return [str(t) for t in body["tokens"]], int(body["expires_at_ms"])

    def enrollments(self, project: str,
                    status: str = "pending") -> list[tuple[PendingEnrollment, str]]:
        body = self._call("GET", f"/v1/projects/{project}/enrollments",
                          params={"status": status})
        out = []
        for item in body.get("enrollments", []):
            try:
                out.append((PendingEnrollment.from_json(item), str(item["status"])))
            except (KeyError, ValueError, TypeError) as exc:
                raise ClientError(f"the gateway sent a malformed enrollment: {exc}", 200,
                                  "bad_response") from None
        return out

    def reject(self, project: str, enrollment_id: str) -> None:
        self._call("POST", f"/v1/projects/{project}/enrollments/{enrollment_id}/reject")

    def post_records(self, project: str,
                     records: Iterable[SignedDeviceRecord]) -> dict[str, Any]:
        return self._call("POST", f"/v1/projects/{project}/records",
                          json={"records": [r.to_wire().hex() for r in records]})

    def device_record(self, device: str) -> SignedDeviceRecord:
        body = self._call("GET", f"/v1/devices/{device}")
        try:
            return SignedDeviceRecord.from_wire(bytes.fromhex(body["signed_record"]))
        except (KeyError, ValueError, TypeError, RegistryError) as exc:
            raise ClientError(f"the gateway's record of {device} is malformed: {exc}", 200,
                              "bad_response") from None


def register_project(client: GatewayClient, admin_token: str, owner_key: DeviceKey,
                     terms: ProjectTerms) -> str:
    """Sign the terms with the owner key and register them; the owner API token."""
    return client.register_project(admin_token, terms, terms.sign(owner_key))


def _checked_terms(client: GatewayClient, project: str, owner_key: DeviceKey) -> ProjectTerms:
    terms, signature = client.terms(project)
    if terms.owner_public_key != owner_key.public_key:
        raise ClientError(f"this owner key is not project {project}'s (the gateway holds "
                          f"{terms.owner_public_key.hex()[:16]}...)", 0, "wrong_owner_key")
    try:
        terms.verify(signature)
    except SignatureError:
        raise ClientError(f"the gateway's copy of {project}'s terms is not signed by your "
                          "key: do not trust this gateway", 0, "bad_signature") from None
    return terms


def approve_enrollments(client: GatewayClient, project: str, owner_key: DeviceKey,
                        choose: Callable[[PendingEnrollment], bool],
                        ) -> tuple[list[DeviceRecord], dict[str, Any] | None]:
    """Sign version 1 of a record for each pending enrollment ``choose`` accepts and post
    them; ``(records, the gateway's answer)`` (None when nothing was chosen)."""
    terms = _checked_terms(client, project, owner_key)
    chosen = [e for e, _status in client.enrollments(project) if choose(e)]
    records = [enrollment_record(terms, e) for e in chosen]
    if not records:
        return [], None
    answer = client.post_records(project, [r.sign(owner_key) for r in records])
    return records, answer


def revoke_device(client: GatewayClient, device: str, owner_key: DeviceKey,
                  api_token_for: Callable[[str], str]) -> tuple[DeviceRecord, dict[str, Any]]:
    """Sign and post the next version of ``device``'s record, revoked. ``api_token_for``
    gives the owner API token of the record's project."""
    held_signed = client.device_record(device)
    try:
        held = held_signed.verify(owner_key.public_key)
    except RegistryError as exc:
        raise ClientError(f"{device}: the record the gateway holds is not signed by this "
                          f"owner key ({exc.reason})", 0, exc.reason) from None
    try:
        record = revocation_record(held)
    except ValueError as exc:
        raise ClientError(str(exc), 0, "revoked_final") from None
    client.api_token = api_token_for(held.project)
    return record, client.post_records(held.project, [record.sign(owner_key)])
