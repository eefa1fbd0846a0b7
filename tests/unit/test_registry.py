"""The device registry: owner-signed records, and every way a record is refused."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core import canonical
from senken_core.keys import READING_TAG, DeviceKey
from senken_core.registry import (
    REGISTRY_TAG,
    DeviceRecord,
    DeviceRegistry,
    RegistryError,
    SignedDeviceRecord,
)
from senken_core.sensors import SENSOR_KINDS

OWNER = DeviceKey(b"\x01" * 32)  # pv-plant-7's owner
OTHER_OWNER = DeviceKey(b"\x02" * 32)  # wind-farm-2's owner
GATEWAY = DeviceKey(b"\x03" * 32)  # the gateway's own key: it stores records, cannot make one
DEVICE_KEY = DeviceKey(b"\x04" * 32)
NEW_DEVICE_KEY = DeviceKey(b"\x05" * 32)
OWNERS = {"pv-plant-7": OWNER.public_key, "wind-farm-2": OTHER_OWNER.public_key}


def record(**changes: object) -> DeviceRecord:
    base = DeviceRecord(
        project="pv-plant-7", device="pv-7-meter-1", public_key=DEVICE_KEY.public_key,
        kind="elec_meter", model_sha256=b"\x22" * 32, version=1, location="52.37,4.89",
        calibration_date="2025-11-02", technician="j.devries", enrolled_at_ms=1_764_201_600_000)
    return replace(base, **changes)  # type: ignore[arg-type]


def state(registry: DeviceRegistry) -> tuple[object, ...]:
    """Everything a registry holds, to check a refusal changed nothing."""
    devices = sorted(registry._records)
    return (len(registry), [(d, registry.lookup(d), registry.signed(d)) for d in devices],
            dict(registry.owners))


def refused(registry: DeviceRegistry, signed: SignedDeviceRecord) -> RegistryError:
    before = state(registry)
    with pytest.raises(RegistryError) as info:
        registry.apply(signed)
    assert state(registry) == before  # a refusal changes nothing
    return info.value


def test_a_record_signed_by_the_owner_is_accepted_and_looked_up() -> None:
    registry = DeviceRegistry(OWNERS)
    signed = record().sign(OWNER)
    assert registry.apply(signed) is True
    assert registry.lookup("pv-7-meter-1") == record()
    assert registry.signed("pv-7-meter-1") == signed
    assert len(registry) == 1
    assert registry.lookup("pv-7-meter-2") is None and registry.signed("pv-7-meter-2") is None
    # delivered again (QoS 1, a retained message), also through the wire: a no-op
    assert registry.apply(signed) is False
    assert registry.apply(SignedDeviceRecord.from_wire(signed.to_wire())) is False
    assert len(registry) == 1


def test_a_record_signed_by_anyone_but_the_owner_is_refused() -> None:
    registry = DeviceRegistry(OWNERS)
    for key in (GATEWAY, OTHER_OWNER, DEVICE_KEY):  # a compromised gateway, another owner, ...
        error = refused(registry, record().sign(key))
        assert error.reason == "bad_signature" and error.device == "pv-7-meter-1"
    assert len(registry) == 0


def test_a_record_changed_after_signing_is_refused() -> None:
    registry = DeviceRegistry(OWNERS)
    good = record().sign(OWNER)
    swapped = SignedDeviceRecord(record(public_key=GATEWAY.public_key).canonical(),
                                 good.signature)  # the gateway swaps in its own device key
    assert refused(registry, swapped).reason == "bad_signature"


def test_signatures_are_domain_separated_from_readings() -> None:
    """The owner's signature over the same bytes as a reading never passes as a record."""
    body = record().canonical()
    as_reading = SignedDeviceRecord(body, OWNER.sign(READING_TAG, body))
    assert refused(DeviceRegistry(OWNERS), as_reading).reason == "bad_signature"
    assert OWNER.sign(REGISTRY_TAG, body) == record().sign(OWNER).signature


def test_a_record_of_a_project_without_an_owner_key_is_refused() -> None:
    signed = record(project="hydro-9").sign(OWNER)
    error = refused(DeviceRegistry(OWNERS), signed)
    assert error.reason == "unknown_project" and "hydro-9" in str(error)


def test_records_only_move_forward() -> None:
    registry = DeviceRegistry(OWNERS)
    v1, v2 = record().sign(OWNER), record(version=2, public_key=NEW_DEVICE_KEY.public_key)
    assert registry.apply(v1) and registry.apply(v2.sign(OWNER))
    assert registry.lookup("pv-7-meter-1") == v2
    # the old record replayed on the broker cannot bring the old key back
    assert refused(registry, v1).reason == "stale_version"
    # nor can another record under a version already used
    same_version = record(version=2, technician="someone else").sign(OWNER)
    assert refused(registry, same_version).reason == "stale_version"
    # a jump forward is fine (versions need not be contiguous)
    assert registry.apply(record(version=7).sign(OWNER))
    assert registry.lookup("pv-7-meter-1").version == 7  # type: ignore[union-attr]


def test_revocation_is_final() -> None:
    registry = DeviceRegistry(OWNERS)
    registry.apply(record().sign(OWNER))
    revoked = record(version=2, revoked=True).sign(OWNER)
    assert registry.apply(revoked)
    assert registry.lookup("pv-7-meter-1").revoked  # type: ignore[union-attr]
    assert registry.apply(revoked) is False  # redelivered: still a no-op
    for later in (record(version=3), record(version=3, revoked=True),
                  record(version=2**62, public_key=NEW_DEVICE_KEY.public_key)):
        assert refused(registry, later.sign(OWNER)).reason == "revoked_final"
    assert refused(registry, record().sign(OWNER)).reason == "revoked_final"
    # the way back: a new id
    assert registry.apply(record(device="pv-7-meter-1b").sign(OWNER))


def test_a_device_id_cannot_move_to_another_project() -> None:
    registry = DeviceRegistry(OWNERS)
    registry.apply(record().sign(OWNER))
    moved = record(project="wind-farm-2", version=5).sign(OTHER_OWNER)  # validly signed
    error = refused(registry, moved)
    assert error.reason == "device_taken" and "pv-plant-7" in str(error)
    assert registry.lookup("pv-7-meter-1").project == "pv-plant-7"  # type: ignore[union-attr]


def test_malformed_records_are_refused() -> None:
    registry = DeviceRegistry(OWNERS)
    cases = [b"", b"\xff", canonical.encode([1, 2]),
             canonical.encode({"schema": 2}),
             canonical.encode({**canonical.decode(record().canonical()),  # type: ignore[dict-item]
                               "extra": 1}),
             canonical.encode({k: v for k, v in canonical.decode(  # type: ignore[union-attr]
                 record().canonical()).items() if k != "technician"}),
             canonical.encode({**canonical.decode(record().canonical()),  # type: ignore[dict-item]
                               "version": 0}),
             canonical.encode({**canonical.decode(record().canonical()),  # type: ignore[dict-item]
                               "kind": ["elec_meter"]})]
    for body in cases:
        error = refused(registry, SignedDeviceRecord(body, OWNER.sign(REGISTRY_TAG, body)))
        assert error.reason == "malformed", body
    for wire in (b"", b"\x00", canonical.encode({"v": 1, "record": b"x", "signature": b"s"}),
                 canonical.encode({"v": 2, "record": b"x", "signature": bytes(64)}),
                 canonical.encode({"v": 1, "record": "x", "signature": bytes(64)}),
                 canonical.encode({"v": 1, "record": b"x", "signature": bytes(64), "x": 0})):
        with pytest.raises(RegistryError) as info:
            SignedDeviceRecord.from_wire(wire)
        assert info.value.reason == "malformed"


def test_only_the_exact_wire_form_is_accepted() -> None:
    """`true` is not the schema version 1 (in Python, True == 1)."""
    good = canonical.decode(record().sign(OWNER).to_wire())
    assert isinstance(good, dict)
    with pytest.raises(RegistryError, match="signed record"):
        SignedDeviceRecord.from_wire(canonical.encode({**good, "v": True}))
    body = canonical.encode({**canonical.decode(record().canonical()),  # type: ignore[dict-item]
                             "schema": True})
    with pytest.raises(RegistryError, match="schema-1"):
        DeviceRecord.from_canonical(body)


def test_apply_all_applies_the_good_and_lists_the_refusals_in_order() -> None:
    registry = DeviceRegistry(OWNERS)
    errors = registry.apply_all([
        record().sign(OWNER), record(device="pv-7-meter-2").sign(GATEWAY),
        record(version=2).sign(OWNER), record().sign(OWNER),
        record(device="pv-7-meter-3").sign(OWNER)])
    assert [e.reason for e in errors] == ["bad_signature", "stale_version"]
    assert [e.device for e in errors] == ["pv-7-meter-2", "pv-7-meter-1"]
    assert len(registry) == 2 and registry.lookup("pv-7-meter-1").version == 2  # type: ignore[union-attr]


def test_the_registry_keeps_its_own_copy_of_the_owners() -> None:
    owners = dict(OWNERS)
    registry = DeviceRegistry(owners)
    owners["pv-plant-7"] = GATEWAY.public_key  # whoever handed the mapping changes it later
    assert refused(registry, record().sign(GATEWAY)).reason == "bad_signature"


@pytest.mark.parametrize(("changes", "match"), [
    ({"project": "PV"}, "project"), ({"device": "a/b"}, "device"),
    ({"public_key": b"\x00" * 31}, "public_key"), ({"model_sha256": "22" * 32}, "model_sha256"),
    ({"kind": "nuclear"}, "kind"), ({"kind": ["elec_meter"]}, "kind"),
    ({"version": 0}, "version"), ({"version": True}, "version"), ({"version": 2**63}, "version"),
    ({"enrolled_at_ms": -1}, "enrolled_at_ms"), ({"revoked": 1}, "revoked"),
    ({"location": "x" * 201}, "location"), ({"technician": None}, "technician"),
])
def test_invalid_records_cannot_be_built(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        record(**changes)


ids = st.from_regex(r"[a-z0-9][a-z0-9-]{2,30}", fullmatch=True)
texts = st.text(max_size=40)
records = st.builds(
    DeviceRecord, project=ids, device=ids, public_key=st.binary(min_size=32, max_size=32),
    kind=st.sampled_from(sorted(SENSOR_KINDS)), model_sha256=st.binary(min_size=32, max_size=32),
    version=st.integers(1, 2**63 - 1), revoked=st.booleans(), location=texts,
    calibration_date=texts, technician=texts, enrolled_at_ms=st.integers(0, 2**63 - 1))


@settings(max_examples=100, deadline=None)
@given(records)
def test_canonical_round_trips(rec: DeviceRecord) -> None:
    body = rec.canonical()
    assert canonical.encode(canonical.decode(body)) == body
    assert DeviceRecord.from_canonical(body) == rec
    signed = rec.sign(OWNER)
    wire = signed.to_wire()
    assert SignedDeviceRecord.from_wire(wire) == signed
    assert SignedDeviceRecord.from_wire(wire).verify(OWNER.public_key) == rec
    with pytest.raises(RegistryError):
        signed.verify(GATEWAY.public_key)


cbor_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1), st.binary(max_size=70),
              st.text(max_size=12), st.sampled_from(["elec_meter", "pv-plant-7", "pv-7-meter-1"])),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10)
field_names = st.sampled_from(["schema", "project", "device", "public_key", "kind",
                               "model_sha256", "version", "revoked", "location",
                               "calibration_date", "technician", "enrolled_at_ms", "v",
                               "record", "signature"])


def _mutated(data: bytes, at: int, byte: int) -> bytes:
    if not data:
        return data
    i = at % len(data)
    return data[:i] + bytes([byte]) + data[i + 1:]


GOOD_WIRE = record().sign(OWNER).to_wire()
_good_fields = canonical.decode(record().canonical())
assert isinstance(_good_fields, dict)
GOOD_FIELDS: dict[str, canonical.Value] = _good_fields


def _wire_of(fields: dict[str, canonical.Value], signature: bytes = bytes(64)) -> bytes:
    return canonical.encode({"v": 1, "record": canonical.encode(fields),
                             "signature": signature})


wire_inputs = st.one_of(
    st.binary(max_size=300),
    st.builds(_mutated, st.just(GOOD_WIRE), st.integers(0, 10_000), st.integers(0, 255)),
    st.dictionaries(field_names, cbor_values, max_size=6).map(canonical.encode),
    st.builds(_wire_of, st.dictionaries(field_names, cbor_values, max_size=13),
              st.binary(min_size=64, max_size=64)),
    st.dictionaries(field_names, cbor_values, max_size=2).map(
        lambda d: _wire_of({**GOOD_FIELDS, **d})),
)


@settings(max_examples=250, deadline=None)
@given(wire_inputs)
def test_any_bytes_are_answered_with_a_registry_error_or_the_exact_record(data: bytes) -> None:
    registry = DeviceRegistry(OWNERS)
    try:
        signed = SignedDeviceRecord.from_wire(data)
    except RegistryError as exc:
        assert exc.reason == "malformed"
        return
    assert signed.to_wire() == data  # only to_wire bytes decode
    with contextlib.suppress(RegistryError):
        rec = DeviceRecord.from_canonical(signed.body)
        assert rec.canonical() == signed.body  # only canonical() bytes decode
    before = state(registry)
    try:
        registry.apply(signed)
    except RegistryError:
        assert state(registry) == before
    else:  # only the owner's own record (a "mutation" that wrote the byte already there)
        assert data == GOOD_WIRE


# A pool of signed records: the registry's rules checked against a model of them.
POOL = [
    record().sign(OWNER),                                                   # 0 enroll
    record(version=2, public_key=NEW_DEVICE_KEY.public_key).sign(OWNER),    # 1 rotate key
    record(version=3, revoked=True).sign(OWNER),                            # 2 revoke
    record(version=4).sign(OWNER),                                          # 3 after revocation
    record(version=2, technician="x").sign(OWNER),                          # 4 other v2
    record(version=9).sign(GATEWAY),                                        # 5 gateway-made
    record(project="wind-farm-2", version=10).sign(OTHER_OWNER),            # 6 steal the id
    record(project="hydro-9").sign(OWNER),                                  # 7 unknown project
    record(device="wt-2-meter-1", project="wind-farm-2").sign(OTHER_OWNER),  # 8 other device
    record(device="wt-2-meter-1", project="pv-plant-7", version=2).sign(OWNER),  # 9 steal it
    SignedDeviceRecord(b"\xa0", bytes(64)),                                 # 10 malformed
]


def _model_reason(held: DeviceRecord | None, signed: SignedDeviceRecord) -> str | None:
    try:
        rec = DeviceRecord.from_canonical(signed.body)
    except RegistryError:
        return "malformed"
    if rec.project not in OWNERS:
        return "unknown_project"
    owner = {"pv-plant-7": OWNER, "wind-farm-2": OTHER_OWNER}[rec.project]
    if rec.sign(owner) != signed:
        return "bad_signature"
    if held is None or rec == held:
        return None
    if held.project != rec.project:
        return "device_taken"
    if held.revoked:
        return "revoked_final"
    return "stale_version" if rec.version <= held.version else None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(POOL) - 1), max_size=25))
def test_any_delivery_order_follows_the_rules(order: list[int]) -> None:
    """Records arrive in any order, repeated: each is applied or refused as the rules say,
    and a refusal changes nothing."""
    registry = DeviceRegistry(OWNERS)
    model: dict[str, DeviceRecord] = {}
    for i in order:
        signed = POOL[i]
        device = None if i == 10 else DeviceRecord.from_canonical(signed.body).device
        expected = _model_reason(model.get(device) if device else None, signed)
        before = state(registry)
        try:
            changed = registry.apply(signed)
        except RegistryError as exc:
            assert exc.reason == expected
            assert state(registry) == before
            continue
        assert expected is None
        assert device is not None
        rec = DeviceRecord.from_canonical(signed.body)
        assert changed == (model.get(device) != rec)
        model[device] = rec
        assert registry.signed(device) == signed
    assert {d: registry.lookup(d) for d in model} == model and len(registry) == len(model)
