"""Windows to attestations (AMS-I.D), and four validators certifying one window end to end."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core.attestation import senken_domain
from senken_core.keys import READING_TAG, DeviceKey
from senken_core.merkle import inclusion_proof, merkle_root, verify_inclusion
from senken_core.methodology import GridExportAmsID
from senken_core.quorum import (
    QuorumCertificate,
    SignatureCollector,
    ValidatorSet,
    verify_certificate,
)
from senken_core.reading import Reading
from senken_core.secp256k1 import ValidatorKey
from validator.verify import ReadingVerifier, RegisteredDevice
from validator.window import ProjectTerms, WindowBook

HOUR = 3600
T0 = 1_795_003_200  # a multiple of an hour
MODEL = b"\x22" * 32
EF = 691  # g CO2/kWh
TERMS = ProjectTerms("pv-plant-7", HOUR, GridExportAmsID(EF), MODEL)
KEY = DeviceKey(b"\x09" * 32)


def reading(seq: int, ts_s: int, energy_wh: int, ppm: int = 0) -> Reading:
    return Reading("pv-7-meter-1", seq, ts_s * 1000, "elec_meter", seq + 1, ts_s * 1000,
                   (("energy_export_wh", energy_wh), ("power_w", 1000), ("voltage_dv", 2300)),
                   MODEL, ppm, 0)


def readings_over(hours: int, per_hour: int = 6, wh_step: int = 100) -> list[Reading]:
    step = HOUR // per_hour
    return [reading(i, T0 + i * step, 50_000 + i * wh_step) for i in range(hours * per_hour)]


def test_a_window_attests_its_readings_exactly() -> None:
    book = WindowBook(TERMS)
    rs = readings_over(2)
    for r in rs:
        assert book.add(r, r.canonical())
    book.reject("pv-7-meter-1", (T0 + 10) * 1000)
    first = book.close("pv-7-meter-1", T0)
    assert (first.readings_accepted, first.readings_rejected) == (6, 1)
    assert first.quantity == 5 * 100  # 5 increments inside the window; no earlier reading
    assert first.co2e_mg == 500 * EF  # Wh x g/kWh = mg, exactly
    assert first.readings_root == merkle_root([r.canonical() for r in rs[:6]])
    second = book.close("pv-7-meter-1", T0 + HOUR)
    assert second.quantity == 6 * 100  # its first reading pairs with the last of the window before
    assert second.id != first.id
    # a buyer's check: a reading is in the attested window
    proof = inclusion_proof([r.canonical() for r in rs[:6]], 3)
    verify_inclusion(rs[3].canonical(), proof, first.readings_root,
                     tree_size=first.readings_accepted)


def test_anomalous_readings_are_never_credited() -> None:
    book = WindowBook(TERMS)
    rs = readings_over(1)
    rs[3] = reading(3, rs[3].ts_ms // 1000, rs[3].values[0][1], ppm=900_000)
    for r in rs:
        book.add(r, r.canonical())
    att = book.close("pv-7-meter-1", T0)
    assert att.quantity == 3 * 100  # 0->1, 1->2, 4->5: the steps into and out of 3 are not
    assert att.readings_accepted == 6  # still attested (and proven), just not credited


def test_a_register_that_goes_down_credits_nothing_for_that_step() -> None:
    rs = [reading(0, T0, 1000), reading(1, T0 + 60, 900), reading(2, T0 + 120, 950)]
    amount = GridExportAmsID(EF).window_quantity(rs, None)
    assert amount.quantity == 50


@settings(max_examples=50, deadline=None)
@given(st.randoms(use_true_random=False))
def test_arrival_order_does_not_change_the_attestation(rnd: random.Random) -> None:
    rs = readings_over(1)
    expected = WindowBook(TERMS)
    for r in rs:
        expected.add(r, r.canonical())
    shuffled = WindowBook(TERMS)
    order = rs[:]
    rnd.shuffle(order)
    for r in order:
        shuffled.add(r, r.canonical())
    assert shuffled.close("pv-7-meter-1", T0) == expected.close("pv-7-meter-1", T0)


def test_a_closed_window_is_never_reopened() -> None:
    book = WindowBook(TERMS, grace_s=60)
    rs = readings_over(1)
    for r in rs[:-1]:
        book.add(r, r.canonical())
    assert book.due((T0 + HOUR + 59) * 1000) == []
    assert book.due((T0 + HOUR + 60) * 1000) == [("pv-7-meter-1", T0)]
    book.close("pv-7-meter-1", T0)
    assert not book.add(rs[-1], rs[-1].canonical())  # too late: not counted twice
    book.reject("pv-7-meter-1", T0 * 1000)
    assert book.due((T0 + 10 * HOUR) * 1000) == []
    with pytest.raises(KeyError):
        book.close("pv-7-meter-1", T0)


def test_methodology_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="emission factor"):
        GridExportAmsID(-1)
    with pytest.raises(ValueError, match="threshold"):
        GridExportAmsID(EF, anomaly_threshold_ppm=0)


class Registry(dict[str, RegisteredDevice]):
    def lookup(self, device: str) -> RegisteredDevice | None:
        return self.get(device)


def test_four_validators_certify_a_window_one_signing_something_else() -> None:
    """The pure pieces end to end: verify, book, attest, sign, collect, check."""
    registry = Registry({"pv-7-meter-1": RegisteredDevice(
        "pv-7-meter-1", "pv-plant-7", KEY.public_key, "elec_meter", MODEL)})
    domain = senken_domain(31337, b"\x42" * 20)
    keys = [ValidatorKey(bytes([40 + i]) * 32) for i in range(4)]
    vset = ValidatorSet.of([k.address for k in keys], threshold=3)
    collector = SignatureCollector(vset, domain)
    signed = [(r.canonical(), KEY.sign(READING_TAG, r.canonical())) for r in readings_over(1)]
    certificates: list[QuorumCertificate] = []
    for i, key in enumerate(keys):
        verifier = ReadingVerifier(registry, clock=lambda: T0 + 2 * HOUR)
        book = WindowBook(TERMS)
        for body, sig in signed:
            verdict = verifier.verify("pv-7-meter-1", body, sig)
            assert verdict.accepted and verdict.reading is not None
            book.add(verdict.reading, body)
        att = book.close("pv-7-meter-1", T0)
        if i == 3:  # a faulty validator inflates the credits
            att = replace(att, co2e_mg=att.co2e_mg * 10)
        cert = collector.add(att, key.sign_digest(att.digest(domain)))
        if cert is not None:
            certificates.append(cert)
    assert len(certificates) == 1
    signers = verify_certificate(certificates[0], vset, domain)
    assert keys[3].address not in signers
    assert certificates[0].attestation.co2e_mg == 500 * EF
