"""The gateway's pure logic: signed project terms, the records an owner makes, secrets."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.credentials import (
    TOKEN_PATTERN,
    new_password,
    new_token,
    seal_password,
    token_hash,
    token_matches,
    unseal_password,
)
from gateway.domain import (
    PendingEnrollment,
    ProjectTerms,
    enrollment_record,
    revocation_record,
)
from senken_core.errors import SignatureError
from senken_core.keys import DeviceKey
from senken_core.registry import DeviceRegistry, RegistryError

OWNER = DeviceKey(bytes(range(32)))


def terms(**changes: object) -> ProjectTerms:
    fields: dict[str, object] = {"project": "pv-plant-7", "owner_public_key": OWNER.public_key,
                                 "methodology": "CDM AMS-I.D", "model_sha256": b"\xab" * 32,
                                 "location": "52.37,4.89",
                                 "parameters": {"grid_ef_g_per_kwh": 700, "site": "roof",
                                                "export_only": True}}
    fields.update(changes)
    return ProjectTerms(**fields)  # type: ignore[arg-type]


def pending(**changes: object) -> PendingEnrollment:
    fields: dict[str, object] = {"id": "a" * 32, "project": "pv-plant-7", "device": "pv-7-meter",
                                 "public_key": DeviceKey(b"\x07" * 32).public_key,
                                 "kind": "elec_meter", "enrolled_at_ms": 1_764_201_600_000,
                                 "location": "roof", "calibration_date": "2025-03-01",
                                 "technician": "A. Tech"}
    fields.update(changes)
    return PendingEnrollment(**fields)  # type: ignore[arg-type]


def test_terms_are_signed_by_the_owner_and_any_change_breaks_the_signature() -> None:
    t = terms()
    signature = t.sign(OWNER)
    t.verify(signature)
    assert ProjectTerms.from_json(t.to_json()) == t
    for change in ({"model_sha256": b"\xcd" * 32}, {"location": "elsewhere"},
                   {"parameters": {"grid_ef_g_per_kwh": 701, "site": "roof",
                                   "export_only": True}}):
        with pytest.raises(SignatureError):
            dataclasses.replace(t, **change).verify(signature)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="owner public key"):
        t.sign(DeviceKey.generate())


@pytest.mark.parametrize(("change", "message"), [
    ({"project": "PV"}, "project must be"),
    ({"model_sha256": b"\x00"}, "32 bytes"),
    ({"methodology": ""}, "required"),
    ({"location": "a\nb"}, "control characters"),
    ({"parameters": {"Bad-Name": 1}}, "parameter name"),
    ({"parameters": {"ef": 0.7}}, "no floats"),
    ({"parameters": {"ef": 2**63}}, "64-bit"),
    ({"parameters": {f"p{i}": i for i in range(33)}}, "at most 32"),
])
def test_bad_terms_say_what_is_wrong(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        terms(**change)


def test_records_from_enrollments_apply_like_a_validator_applies_them() -> None:
    t, e = terms(), pending()
    record = enrollment_record(t, e)
    assert (record.version, record.revoked, record.model_sha256) == (1, False, t.model_sha256)
    assert (record.location, record.calibration_date, record.technician) == (
        "roof", "2025-03-01", "A. Tech")
    registry = DeviceRegistry({"pv-plant-7": OWNER.public_key})
    assert registry.apply(record.sign(OWNER))
    revoked = revocation_record(record)
    assert (revoked.version, revoked.revoked) == (2, True)
    assert registry.apply(revoked.sign(OWNER))
    with pytest.raises(ValueError, match="revoked already"):
        revocation_record(revoked)
    with pytest.raises(RegistryError, match="revoked"):
        registry.apply(dataclasses.replace(record, version=3).sign(OWNER))
    with pytest.raises(ValueError, match="for project"):
        enrollment_record(terms(project="other-project"), e)


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "toaster"}, "unknown sensor kind"),
    ({"calibration_date": "2025-02-30"}, "not a calendar date"),
    ({"calibration_date": "01/02/2025"}, "YYYY-MM-DD"),
    ({"technician": "x" * 201}, "at most 200"),
    ({"public_key": b"\x01" * 31}, "32 bytes"),
])
def test_bad_enrollments_say_what_is_wrong(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pending(**change)


def test_pending_enrollment_json_round_trip_and_fingerprint() -> None:
    e = pending()
    assert PendingEnrollment.from_json(e.to_json()) == e
    assert e.fingerprint == e.public_key.hex()[:16]


def test_tokens_are_random_and_stored_hashed() -> None:
    a, b = new_token("enroll"), new_token("enroll")
    assert a != b and TOKEN_PATTERN.match(a) and a.startswith("senken-enroll_")
    assert token_matches(a, token_hash(a)) and not token_matches(b, token_hash(a))
    assert len(token_hash(a)) == 64 and a not in token_hash(a)
    with pytest.raises(ValueError):
        new_token("Bad Kind")


def test_the_broker_password_is_sealed_under_the_poll_secret() -> None:
    password, secret = new_password(), new_token("poll")
    sealed = seal_password(password, secret)
    assert password not in sealed and password.encode().hex() != sealed
    assert unseal_password(sealed, secret) == password
    assert unseal_password(sealed, new_token("poll")) != password
