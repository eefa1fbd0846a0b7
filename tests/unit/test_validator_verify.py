"""A validator's checks on signed readings: every attack rejected with its reason code."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core.anomaly import AnomalyModel, ReadingScorer
from senken_core.keys import READING_TAG, DeviceKey
from senken_core.reading import Reading
from senken_core.sensors import sensor_kind
from validator.verify import ReadingVerifier, Reason, RegisteredDevice

NOW_MS = 1_795_000_000_000
KEY = DeviceKey(b"\x05" * 32)
OTHER_KEY = DeviceKey(b"\x06" * 32)
MODEL = AnomalyModel.load()


class Registry(dict[str, RegisteredDevice]):
    def lookup(self, device: str) -> RegisteredDevice | None:
        return self.get(device)


def registry(**changes: object) -> Registry:
    entry = RegisteredDevice("pv-7-meter-1", "pv-plant-7", KEY.public_key, "elec_meter",
                             MODEL.sha256)
    return Registry({"pv-7-meter-1": replace(entry, **changes)})  # type: ignore[arg-type]


def stream(n: int, *, since: int = 0, start_seq: int = 0) -> list[Reading]:
    """n readings as an agent signs them: scored in order from ``since``."""
    scorer = ReadingScorer(MODEL, sensor_kind("elec_meter").channels)
    out = []
    for i in range(n):
        seq = start_seq + i
        values = [1_000_000 + 50 * seq, 48_000 + (seq * 37) % 500, 2300 + seq % 7]
        ppm = scorer.score([values])[0] if seq >= since else 0
        out.append(Reading("pv-7-meter-1", seq, NOW_MS - 1000 * (n - i), "elec_meter",
                           seq + 1, NOW_MS - 1000 * (n - i),
                           tuple(zip(("energy_export_wh", "power_w", "voltage_dv"), values,
                                     strict=True)), MODEL.sha256, ppm, since))
    return out


def signed(reading: Reading, key: DeviceKey = KEY) -> tuple[bytes, bytes]:
    body = reading.canonical()
    return body, key.sign(READING_TAG, body)


def verifier(reg: Registry | None = None, rescore: bool = False) -> ReadingVerifier:
    scorer_for = (lambda kind: ReadingScorer(MODEL, sensor_kind(kind).channels)) if rescore \
        else None
    return ReadingVerifier(registry() if reg is None else reg, scorer_for=scorer_for,
                           clock=lambda: NOW_MS / 1000)


def test_an_honest_stream_is_accepted_and_duplicates_are_dropped() -> None:
    v = verifier(rescore=True)
    readings = stream(400)  # past the model's window: real scores are compared
    verdicts = [v.verify("pv-7-meter-1", *signed(r)) for r in readings]
    assert all(x.accepted for x in verdicts)
    assert v.verify("pv-7-meter-1", *signed(readings[10])).status == "duplicate"


@pytest.mark.parametrize(("reg", "key", "topic", "reason"), [
    (registry(), OTHER_KEY, "pv-7-meter-1", Reason.BAD_SIGNATURE),  # forged / re-signed
    (Registry(), KEY, "pv-7-meter-1", Reason.UNKNOWN_DEVICE),
    (registry(revoked=True), KEY, "pv-7-meter-1", Reason.REVOKED_DEVICE),
    (registry(kind="soil_co2"), KEY, "pv-7-meter-1", Reason.WRONG_KIND),
    (registry(model_sha256=b"\x00" * 32), KEY, "pv-7-meter-1", Reason.WRONG_MODEL),
    (registry(), KEY, "pv-7-meter-2", Reason.WRONG_TOPIC),  # published as another device
])
def test_attacks_are_rejected_with_their_reason(
    reg: Registry, key: DeviceKey, topic: str, reason: Reason
) -> None:
    verdict = verifier(reg).verify(topic, *signed(stream(1)[0], key))
    assert verdict.status == "rejected" and verdict.reason == reason


def test_a_changed_value_breaks_the_signature() -> None:
    body, sig = signed(stream(1)[0])
    tampered = body.replace(b"\x19\x08\xfc", b"\x19\x08\xfd")  # voltage 2300 -> 2301
    assert tampered != body
    assert verifier().verify("pv-7-meter-1", tampered, sig).reason == Reason.BAD_SIGNATURE


def test_sequence_reuse_replay_and_gaps() -> None:
    v = verifier()
    readings = stream(5)
    assert v.verify("pv-7-meter-1", *signed(readings[0])).accepted
    assert v.verify("pv-7-meter-1", *signed(readings[3])).gap == 2
    other = replace(readings[3], values=(("energy_export_wh", 1_000_150), ("power_w", 1),
                                         ("voltage_dv", 2300)))
    assert v.verify("pv-7-meter-1", *signed(other)).reason == Reason.SEQ_REUSED
    small = ReadingVerifier(registry(), clock=lambda: NOW_MS / 1000, history=2)
    for r in readings[:4]:
        small.verify("pv-7-meter-1", *signed(r))
    assert small.verify("pv-7-meter-1", *signed(readings[0])).reason == Reason.REPLAYED


def test_timestamps_and_plausibility() -> None:
    r = stream(2)
    old = replace(r[0], ts_ms=NOW_MS - 31 * 86_400_000)
    ahead = replace(r[0], ts_ms=NOW_MS + 600_000)
    assert verifier().verify("pv-7-meter-1", *signed(old)).reason == Reason.STALE
    assert verifier().verify("pv-7-meter-1", *signed(ahead)).reason == Reason.FUTURE
    v = verifier()
    assert v.verify("pv-7-meter-1", *signed(r[0])).accepted
    back = replace(r[1], values=(("energy_export_wh", 999_999), ("power_w", 1),
                                 ("voltage_dv", 2300)))
    assert v.verify("pv-7-meter-1", *signed(back)).reason == Reason.REGISTER_DECREASED
    wild = replace(r[1], values=(("energy_export_wh", 1_000_050), ("power_w", 10**9),
                                 ("voltage_dv", 2300)))
    assert verifier().verify("pv-7-meter-1", *signed(wild)).reason == Reason.OUT_OF_RANGE


def test_a_forged_anomaly_score_is_caught_by_re_running_the_model() -> None:
    v = verifier(rescore=True)
    readings = stream(380)
    for r in readings[:-1]:
        assert v.verify("pv-7-meter-1", *signed(r)).accepted
    hidden = replace(readings[-1], anomaly_ppm=0 if readings[-1].anomaly_ppm else 999_999)
    verdict = v.verify("pv-7-meter-1", *signed(hidden))
    assert verdict.reason == Reason.SCORE_MISMATCH


def test_scores_wait_for_the_readings_they_depend_on() -> None:
    v = verifier(rescore=True)
    readings = stream(10, since=0)
    assert v.verify("pv-7-meter-1", *signed(readings[5])).status == "pending"
    for r in readings:
        assert v.verify("pv-7-meter-1", *signed(r)).status in ("accepted", "duplicate")
    assert v.verify("pv-7-meter-1", *signed(readings[5])).status == "duplicate"
    # an agent restart: a new scored_since_seq starts a fresh replay
    restarted = stream(3, since=100, start_seq=100)
    assert all(v.verify("pv-7-meter-1", *signed(r)).accepted for r in restarted)


@settings(max_examples=200)
@given(st.binary(max_size=300), st.binary(max_size=80))
def test_garbage_is_malformed_never_an_exception(body: bytes, sig: bytes) -> None:
    verdict = verifier().verify("pv-7-meter-1", body, sig)
    assert verdict.status == "rejected" and verdict.reason in (Reason.MALFORMED,
                                                                Reason.BAD_SIGNATURE)


@pytest.mark.parametrize("values", [
    (("energy_export_wh", 1), ("power_w", 2)),  # a channel short
    (("energy_export_wh", 1), ("power_w", 2), ("voltage_dv", 3), ("flow_nm3_per_h", 4)),
    (("energy_export_wh", 1), ("power_w", 2), ("ch4_ppm", 3)),  # another kind's channel
])
def test_a_signed_body_with_another_kinds_channels_is_malformed_not_a_crash(
        values: tuple[tuple[str, int], ...]) -> None:
    v = verifier(rescore=True)
    odd = replace(stream(1)[0], values=values)
    verdict = v.verify("pv-7-meter-1", *signed(odd))
    assert (verdict.status, verdict.reason) == ("rejected", Reason.MALFORMED)
    assert v.verify_batch("pv-7-meter-1", [signed(odd)])[0].reason == Reason.MALFORMED
