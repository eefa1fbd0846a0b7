"""The gateway's API and service on an in-memory SQLite, with a fake broker and publisher:
enrollment, approval, revocation, and a clear 4xx for every kind of bad input."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.broker_files import verify_password
from gateway.client import ClientError, approve_enrollments, revoke_device
from gateway.errors import InvalidInput
from gateway.schemas import EnrollmentRequest, ProjectRegistration, parse_body
from senken_core.keys import DeviceKey
from senken_core.registry import DeviceRecord, DeviceRegistry, SignedDeviceRecord
from tests.support.gateway import ADMIN_TOKEN, Harness, service_harness

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
PROJECT = "pv-plant-7"


@pytest.fixture
def h() -> Iterator[Harness]:
    with service_harness("sqlite://") as harness:
        yield harness


def error(response: Any, status: int, reason: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "message"} and body["message"], body
    if reason is not None:
        assert body["error"] == reason, body
    return str(body["message"])


def test_enroll_approve_poll_revoke(h: Harness) -> None:
    owner, api_token = h.register()
    token = h.tokens(PROJECT, api_token)[0]
    device_key, enrollment = h.enroll(token, "pv-7-meter", location="roof",
                                      calibration_date="2025-03-01", technician="A. Tech")
    assert enrollment["status"] == "pending" and enrollment["project"] == PROJECT
    assert h.poll(enrollment) == {"enrollment_id": enrollment["enrollment_id"],
                                  "device": "pv-7-meter", "project": PROJECT,
                                  "status": "pending"}
    assert "pv-7-meter" not in h.broker.users  # no broker account before approval

    records, answer = approve_enrollments(h.client(api_token), PROJECT, owner, lambda e: True)
    assert [r.device for r in records] == ["pv-7-meter"]
    assert answer and answer["results"] == [{"device": "pv-7-meter", "version": 1,
                                             "revoked": False, "stored": True}]
    assert h.broker.users["pv-7-meter"] == "device" and h.publisher.wakes == 1

    status = h.poll(enrollment)
    assert status["status"] == "approved"
    mqtt = status["mqtt"]
    assert (mqtt["username"], mqtt["host"], mqtt["port"], mqtt["tls"]) == (
        "pv-7-meter", "broker.example.org", 8883, True)
    account = {a.username: a for a in h.service.store.accounts()}["pv-7-meter"]
    assert verify_password(mqtt["password"], account.password_hash)
    assert h.poll(enrollment)["mqtt"]["password"] == mqtt["password"]  # idempotent

    # what validators get: the owner's record, exactly as the device enrolled
    signed = SignedDeviceRecord.from_wire(bytes.fromhex(
        h.http.get("/v1/devices/pv-7-meter").json()["signed_record"]))
    registry = DeviceRegistry({PROJECT: owner.public_key})
    assert registry.apply(signed)
    record = registry.lookup("pv-7-meter")
    assert record is not None and record.public_key == device_key.public_key
    assert (record.location, record.technician, record.version) == ("roof", "A. Tech", 1)

    revoked, answer = revoke_device(h.client(), "pv-7-meter", owner, lambda p: api_token)
    assert (revoked.version, revoked.revoked) == (2, True)
    assert "pv-7-meter" not in h.broker.users
    assert h.poll(enrollment)["status"] == "revoked" and "mqtt" not in h.poll(enrollment)
    latest = h.http.get("/v1/devices/pv-7-meter").json()
    assert (latest["version"], latest["revoked"]) == (2, True)
    # a revoked id is never enrolled again
    again = h.http.post("/v1/enrollments", json={
        "token": h.tokens(PROJECT, api_token)[0], "device": "pv-7-meter",
        "public_key": "ab" * 32, "kind": "elec_meter"})
    assert "a revoked id is never reused" in error(again, 409, "device_taken")
    with pytest.raises(ClientError, match="revoked already"):
        revoke_device(h.client(), "pv-7-meter", owner, lambda p: api_token)


def test_tokens_are_one_time_expire_and_survive_refused_enrollments(h: Harness) -> None:
    _owner, api_token = h.register()
    first, second = h.tokens(PROJECT, api_token, count=2, ttl_seconds=600)
    body = {"device": "meter-a", "public_key": "ab" * 32, "kind": "elec_meter"}
    unknown = h.http.post("/v1/enrollments", json={**body, "token": "senken-enroll_" + "x" * 43})
    assert "not recognised" in error(unknown, 401, "token_unknown")
    h.enroll(first, "meter-a")
    used = h.http.post("/v1/enrollments", json={**body, "device": "meter-b", "token": first})
    assert "already used" in error(used, 409, "token_used")
    # a refused enrollment (device id taken) leaves the token as it was
    taken = h.http.post("/v1/enrollments", json={**body, "token": second})
    assert "token was not used" in error(taken, 409, "device_taken")
    h.clock.now_ms += 601_000
    expired = h.http.post("/v1/enrollments", json={**body, "device": "meter-b", "token": second})
    assert "expired" in error(expired, 410, "token_expired")


def test_owner_and_admin_calls_need_their_tokens(h: Harness) -> None:
    owner, api_token = h.register()
    _other_owner, other_token = h.register("other-project")
    tokens = "/v1/projects/pv-plant-7/tokens"
    assert "Bearer" in error(h.http.post(tokens, json={}), 401)
    error(h.http.post(tokens, json={}, headers={"Authorization": f"Bearer {other_token}"}), 401)
    error(h.http.post(tokens, json={}, headers={"Authorization": f"Token {api_token}"}), 401)
    error(h.http.post("/v1/projects/nope-project/tokens", json={},
                      headers={"Authorization": f"Bearer {api_token}"}), 404, "unknown_project")
    error(h.http.get("/v1/projects/pv-plant-7/enrollments",
                     headers={"Authorization": f"Bearer {api_token}"},
                     params={"status": "weird"}), 422)
    from gateway.domain import ProjectTerms

    t = ProjectTerms("new-project", owner.public_key, "CDM AMS-I.D", b"\x01" * 32)
    body = {**t.to_json(), "terms_signature": t.sign(owner).hex()}
    error(h.http.post("/v1/projects", json=body, headers={"Authorization": "Bearer wrong"}), 401)
    bad_sig = {**body, "terms_signature": "00" * 64}
    assert "does not verify" in error(h.http.post(
        "/v1/projects", json=bad_sig, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}), 422)
    exists = {**body, "project": PROJECT}
    exists["terms_signature"] = dataclasses.replace(t, project=PROJECT).sign(owner).hex()
    error(h.http.post("/v1/projects", json=exists,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}), 409, "project_exists")


def post_records(h: Harness, api_token: str, *records: SignedDeviceRecord,
                 project: str = PROJECT) -> Any:
    return h.http.post(f"/v1/projects/{project}/records",
                       json={"records": [r.to_wire().hex() for r in records]},
                       headers={"Authorization": f"Bearer {api_token}"})


def test_only_records_signed_by_the_owner_for_enrolled_devices_are_stored(h: Harness) -> None:
    owner, api_token = h.register()
    _other, other_token = h.register("other-project")
    key, _enrollment = h.enroll(h.tokens(PROJECT, api_token)[0], "pv-7-meter")
    good = DeviceRecord(PROJECT, "pv-7-meter", key.public_key, "elec_meter", b"\xab" * 32, 1)
    intruder = DeviceKey.generate()
    assert "not by pv-plant-7's owner" in error(
        post_records(h, api_token, good.sign(intruder)), 403, "bad_signature")
    error(post_records(h, other_token, good.sign(owner), project="other-project"), 403)
    stranger = dataclasses.replace(good, device="not-enrolled")
    error(post_records(h, api_token, stranger.sign(owner)), 409, "not_enrolled")
    swapped = dataclasses.replace(good, public_key=intruder.public_key)
    error(post_records(h, api_token, swapped.sign(owner)), 409, "enrollment_mismatch")
    # all or nothing: one bad record in a post stores none of them
    error(post_records(h, api_token, good.sign(owner), stranger.sign(owner)), 409)
    assert h.http.get("/v1/devices/pv-7-meter").status_code == 404
    error(h.http.post("/v1/projects/pv-plant-7/records", json={"records": ["zz"]},
                      headers={"Authorization": f"Bearer {api_token}"}), 422)
    error(h.http.post("/v1/projects/pv-plant-7/records", json={"records": ["a16176"]},
                      headers={"Authorization": f"Bearer {api_token}"}), 422, "malformed")

    assert post_records(h, api_token, good.sign(owner)).status_code == 200
    again = post_records(h, api_token, good.sign(owner))  # a repost is a no-op
    assert again.json()["results"][0]["stored"] is False
    moved = dataclasses.replace(good, location="moved")  # same version, other content
    error(post_records(h, api_token, moved.sign(owner)), 409, "stale_version")
    update = dataclasses.replace(good, version=2, calibration_date="2026-01-01")
    assert post_records(h, api_token, update.sign(owner)).status_code == 200
    assert "pv-7-meter" in h.broker.users  # an update keeps the device's account


def test_poll_needs_the_enrollments_secret_and_rejection_frees_the_id(h: Harness) -> None:
    _owner, api_token = h.register()
    _key, enrollment = h.enroll(h.tokens(PROJECT, api_token)[0], "pv-7-meter")
    url = f"/v1/enrollments/{enrollment['enrollment_id']}"
    error(h.http.get(url), 401)
    error(h.http.get(url, headers={"Authorization": "Bearer senken-poll_wrong"}), 401)
    error(h.http.get("/v1/enrollments/" + "0" * 32,
                     headers={"Authorization": f"Bearer {enrollment['poll_secret']}"}), 404)
    error(h.http.get("/v1/enrollments/not-an-id"), 422)
    reject = f"/v1/projects/pv-plant-7/enrollments/{enrollment['enrollment_id']}/reject"
    auth = {"Authorization": f"Bearer {api_token}"}
    assert h.http.post(reject, headers=auth).status_code == 200
    error(h.http.post(reject, headers=auth), 404)
    assert h.poll(enrollment)["status"] == "rejected"
    h.enroll(h.tokens(PROJECT, api_token)[0], "pv-7-meter")  # the id is free again


def test_malformed_requests(h: Harness) -> None:
    assert "not valid JSON" in error(h.http.post(
        "/v1/enrollments", content=b"{nope", headers={"Content-Type": "application/json"}), 422)
    assert "must be a JSON object" in error(h.http.post("/v1/enrollments", json=[1, 2]), 422)
    message = error(h.http.post("/v1/enrollments", json={
        "token": "t", "device": "Bad Id", "public_key": "12", "kind": "toaster",
        "calibration_date": "2025-13-01", "color": "red"}), 422, "invalid_input")
    for part in ("device: device id 'Bad Id'", "public_key: a key or hash must be 64 hex",
                 "kind: unknown sensor kind 'toaster'", "calibration_date:",
                 "color: unknown field"):
        assert part in message
    error(h.http.get("/v1/nothing-here"), 404, "not_found")
    error(h.http.post("/v1/enrollments", content=b"x",
                      headers={"Content-Length": str(10**9)}), 413)


_FINITE = st.floats(allow_nan=False, allow_infinity=False)  # what a JSON body can carry
_json = st.recursive(st.none() | st.booleans() | st.integers() | _FINITE
                     | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=8)
_near_valid = st.fixed_dictionaries(
    {"token": st.one_of(st.text(max_size=60), st.integers()),
     "device": st.one_of(st.from_regex(r"[a-z0-9][a-z0-9-]{2,62}", fullmatch=True),
                         st.text(max_size=70)),
     "public_key": st.one_of(st.from_regex(r"[0-9a-fA-F]{64}", fullmatch=True),
                             st.text(max_size=70)),
     "kind": st.sampled_from(["elec_meter", "soil_co2", "toaster", ""]),
     },
    optional={"location": st.text(max_size=210), "technician": st.text(max_size=210),
              "calibration_date": st.one_of(st.dates().map(str), st.text(max_size=12)),
              "extra": _json})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(_json, _near_valid))
def test_parsing_accepts_exactly_the_valid_bodies(body: Any) -> None:
    try:
        parsed = parse_body(EnrollmentRequest, body)
    except InvalidInput as exc:
        assert exc.message.startswith("invalid request: ") and exc.http_status == 422
        return
    assert isinstance(body, dict) and set(body) <= set(EnrollmentRequest.model_fields)
    assert parsed.public_key == body["public_key"].lower() and len(parsed.public_key) == 64
    assert parsed.kind in ("elec_meter", "soil_co2") and "\n" not in parsed.location
    assert not parsed.device.startswith("0x") or len(parsed.device) != 42


@settings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(["/v1/enrollments", "/v1/projects", "/v1/projects/pv-plant-7/tokens",
                             "/v1/projects/pv-plant-7/records"]),
       body=st.one_of(_json, _near_valid))
def test_any_body_gets_a_4xx_never_a_crash(h: Harness, path: str, body: Any) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = h.http.post(path, json=body, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["message"]
    assert h.http.get("/v1/health").json() == {"status": "ok"}  # and the gateway carries on


@settings(max_examples=60, deadline=None)
@given(params=st.dictionaries(st.text(max_size=70), st.one_of(
    st.integers(), st.text(max_size=210), st.booleans(), st.floats(), st.none()), max_size=34))
def test_project_parameters_are_checked(params: dict[str, Any]) -> None:
    owner = DeviceKey(bytes(32))
    body = {"project": "pv-plant-7", "owner_public_key": owner.public_key.hex(),
            "methodology": "CDM AMS-I.D", "model_sha256": "ab" * 32, "parameters": params,
            "terms_signature": "00" * 64}
    try:
        terms = parse_body(ProjectRegistration, body).terms()
    except InvalidInput as exc:
        assert exc.message
        return
    assert dict(terms.parameters) == params
    assert all(isinstance(v, int | str) for v in params.values())


def test_a_database_outage_is_a_503_and_the_gateway_carries_on() -> None:
    from fastapi.testclient import TestClient

    from gateway.api import create_api
    from gateway.service import BrokerInfo, GatewayService
    from gateway.store import GatewayStore, make_engine
    from tests.support.gateway import FakeBroker, FakePublisher
    from tests.support.mosquitto import free_port

    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    service = GatewayService(GatewayStore(engine, lambda: 0), FakeBroker(), FakePublisher(),
                             BrokerInfo("h", 1883, False, "senken/v1"), None, lambda: 0)
    with TestClient(create_api(service)) as http:
        assert "database unavailable" in error(http.get("/v1/devices/pv-7-meter"), 503)
        assert http.get("/v1/health").status_code == 200
    engine.dispose()
