"""Quorum certificates: k of n, duplicates, a validator signing something else, crashes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core.attestation import Attestation, senken_domain
from senken_core.quorum import (
    CertificateError,
    QuorumCertificate,
    SignatureCollector,
    ValidatorSet,
    verify_certificate,
)
from senken_core.secp256k1 import ValidatorKey

DOMAIN = senken_domain(31337, b"\x42" * 20)
KEYS = [ValidatorKey(bytes([i + 1]) * 32) for i in range(4)]  # n = 4 = 3f + 1, f = 1
OUTSIDER = ValidatorKey(b"\x77" * 32)
VSET = ValidatorSet.of([k.address for k in KEYS], threshold=3)  # k = 2f + 1
GOOD = Attestation("pv-plant-7", "pv-7-meter-1", 1_795_003_200, 3600, "CDM AMS-I.D", 1, 3598, 2,
                   1_250_000, 812_500, bytes(range(32)), b"\x11" * 32)
WRONG = replace(GOOD, co2e_mg=9_999_999)  # what a faulty validator signs: same window


def sig(key: ValidatorKey, att: Attestation = GOOD, domain=DOMAIN) -> bytes:  # type: ignore[no-untyped-def]
    return key.sign_digest(att.digest(domain))


messages = st.lists(st.sampled_from(
    [("honest", i) for i in range(3)] + [("wrong", 3), ("outsider", 0), ("garbage", 0)]),
    min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_one_certificate_for_the_honest_attestation_whatever_the_order(
    msgs: list[tuple[str, int]]
) -> None:
    """Three honest validators, one signing something else, an outsider, garbage, duplicates."""
    collector = SignatureCollector(VSET, DOMAIN)
    certs = []
    for what, i in msgs:
        if what == "honest":
            att, signature = GOOD, sig(KEYS[i])
        elif what == "wrong":
            att, signature = WRONG, sig(KEYS[3], WRONG)
        elif what == "outsider":
            att, signature = GOOD, sig(OUTSIDER)
        else:
            att, signature = GOOD, b"\x01" * 65
        cert = collector.add(att, signature)
        if cert is not None:
            certs.append(cert)
    honest = {i for what, i in msgs if what == "honest"}
    assert len(certs) == (1 if len(honest) == 3 else 0)  # k = 3: all three honest needed here
    for cert in certs:
        assert cert.attestation == GOOD
        signers = verify_certificate(cert, VSET, DOMAIN)
        assert KEYS[3].address not in signers and OUTSIDER.address not in signers


def test_certificates_continue_with_one_validator_down_and_stop_with_two() -> None:
    one_down = SignatureCollector(VSET, DOMAIN)
    results = [one_down.add(GOOD, sig(k)) for k in KEYS[:3]]
    assert results[:2] == [None, None] and isinstance(results[2], QuorumCertificate)
    two_down = SignatureCollector(VSET, DOMAIN)
    assert [two_down.add(GOOD, sig(k)) for k in KEYS[:2]] == [None, None]
    assert not two_down.certified(GOOD.id)
    # the third validator returns: certificates resume
    assert isinstance(two_down.add(GOOD, sig(KEYS[2])), QuorumCertificate)


def test_duplicates_and_bad_signatures_are_counted_not_certified() -> None:
    c = SignatureCollector(VSET, DOMAIN)
    for _ in range(5):
        assert c.add(GOOD, sig(KEYS[0])) is None
    assert c.add(GOOD, sig(OUTSIDER)) is None
    assert c.add(GOOD, sig(KEYS[1], domain=senken_domain(1, b"\x42" * 20))) is None
    assert c.add(GOOD, b"short") is None
    assert c.dropped == {"duplicate": 4, "unknown_signer": 2, "bad_signature": 1}
    assert c.signers(GOOD.id) == {GOOD.digest(DOMAIN): [KEYS[0].address]}


def test_only_the_first_certificate_of_a_window_is_returned() -> None:
    c = SignatureCollector(VSET, DOMAIN)
    certs = [c.add(GOOD, sig(k)) for k in KEYS]
    assert sum(x is not None for x in certs) == 1
    assert len(certs[2].signatures) == 3  # type: ignore[union-attr]


@pytest.mark.parametrize(("signatures", "reason"), [
    (lambda: (sig(KEYS[0]), sig(KEYS[1])), "too_few"),
    (lambda: (sig(KEYS[0]), sig(KEYS[0]), sig(KEYS[1])), "duplicate_signer"),
    (lambda: (sig(KEYS[0]), sig(KEYS[1]), sig(OUTSIDER)), "unknown_signer"),
    (lambda: (sig(KEYS[0]), sig(KEYS[1]), sig(KEYS[2], WRONG)), "unknown_signer"),
    (lambda: (sig(KEYS[0]), sig(KEYS[1]), sig(KEYS[2], domain=senken_domain(1, b"\x42" * 20))),
     "unknown_signer"),
    (lambda: (sig(KEYS[0]), sig(KEYS[1]), b"\x00" * 65), "bad_signature"),
])
def test_bad_certificates_are_refused_with_a_reason(signatures, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CertificateError) as info:
        verify_certificate(QuorumCertificate(GOOD, signatures()), VSET, DOMAIN)
    assert info.value.reason == reason


def test_validator_set_is_checked() -> None:
    with pytest.raises(ValueError, match="threshold"):
        ValidatorSet.of([k.address for k in KEYS], threshold=5)
    with pytest.raises(ValueError, match="20 bytes"):
        ValidatorSet.of([b"short"], threshold=1)
