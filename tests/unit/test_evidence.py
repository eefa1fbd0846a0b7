"""Certified windows with their evidence: the shared window rule and a buyer's offline check."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core import canonical
from senken_core import evidence as evidence_module
from senken_core.attestation import Attestation, senken_domain
from senken_core.eip712 import Domain
from senken_core.errors import PayloadError
from senken_core.evidence import (
    CertifiedWindow,
    EvidenceError,
    check_certified_window,
    usable_boundary,
    window_attestation,
)
from senken_core.keys import READING_TAG, DeviceKey
from senken_core.merkle import leaf_hash, merkle_root
from senken_core.methodology import GridExportAmsID
from senken_core.quorum import QuorumCertificate, ValidatorSet
from senken_core.reading import Reading, SignedReading
from senken_core.secp256k1 import ValidatorKey

HOUR = 3600
T0 = 1_795_003_200  # a multiple of an hour
MODEL = b"\x22" * 32
EF = 691  # g CO2/kWh
AMS = GridExportAmsID(EF)
DEVICE = "pv-7-meter-1"
KEY = DeviceKey(b"\x09" * 32)
OTHER_KEY = DeviceKey(b"\x0a" * 32)  # pv-7-meter-2's
DOMAIN = senken_domain(31337, b"\x42" * 20)
KEYS = [ValidatorKey(bytes([40 + i]) * 32) for i in range(4)]
OUTSIDER = ValidatorKey(b"\x77" * 32)
VSET = ValidatorSet.of([k.address for k in KEYS], threshold=3)
REGISTERED = {DEVICE: KEY.public_key, "pv-7-meter-2": OTHER_KEY.public_key}


def reading(seq: int, ts_s: int, energy_wh: int, ppm: int = 0,
            device: str = DEVICE) -> Reading:
    return Reading(device, seq, ts_s * 1000, "elec_meter", seq + 1, ts_s * 1000,
                   (("energy_export_wh", energy_wh), ("power_w", 1000), ("voltage_dv", 2300)),
                   MODEL, ppm, 0)


# Two hours of readings every 10 minutes, +100 Wh each: seq 0..5 in T0's window, 6..11 after.
STREAM = [reading(i, T0 + i * 600, 50_000 + 100 * i) for i in range(12)]
FIRST, SECOND = STREAM[:6], STREAM[6:]


def attest(readings: list[Reading], boundary: Reading | None = None, start: int = T0,
           rejected: int = 0, methodology: GridExportAmsID = AMS) -> Attestation:
    return window_attestation(
        project="pv-plant-7", device=DEVICE, window_start=start, window_seconds=HOUR,
        methodology=methodology, model_hash=MODEL,
        readings=[(r, r.canonical()) for r in readings], boundary=boundary, rejected=rejected)


def certify(att: Attestation, signers: list[ValidatorKey] | None = None,
            domain: Domain = DOMAIN) -> QuorumCertificate:
    keys = KEYS[:3] if signers is None else signers
    return QuorumCertificate(att, tuple(k.sign_digest(att.digest(domain)) for k in keys))


def window(readings: list[Reading], boundary: Reading | None = None,
           att: Attestation | None = None, **certify_args: object) -> CertifiedWindow:
    if att is None:
        start = readings[0].ts_ms // 1000 // HOUR * HOUR if readings else T0
        att = attest(readings, boundary, start=start)
    return CertifiedWindow(certify(att, **certify_args),  # type: ignore[arg-type]
                           tuple(r.sign(KEY) for r in readings),
                           None if boundary is None else boundary.sign(KEY))


def check(w: CertifiedWindow, domain: Domain = DOMAIN) -> tuple[bytes, ...]:
    return check_certified_window(w, VSET, domain, REGISTERED.get, AMS)


def reason(w: CertifiedWindow, domain: Domain = DOMAIN) -> str:
    with pytest.raises(EvidenceError) as info:
        check(w, domain)
    return info.value.reason


def test_a_certified_window_with_its_evidence_holds() -> None:
    w = window(FIRST)
    assert check(w) == tuple(sorted(k.address for k in KEYS[:3]))
    assert w.attestation.quantity == 500 and w.attestation.co2e_mg == 500 * EF
    assert w.attestation.readings_accepted == 6
    assert w.attestation.readings_root == merkle_root([r.canonical() for r in FIRST])
    # all four signing is fine too; so is a buyer's copy from the wire
    assert len(check(window(FIRST, signers=KEYS))) == 4
    copy = CertifiedWindow.from_wire(w.to_wire())
    assert copy == w and check(copy) == check(w)


def test_the_next_window_credits_the_boundary_increment_with_its_reading() -> None:
    w = window(SECOND, boundary=FIRST[-1])
    assert w.attestation.quantity == 600  # 6 increments: 5 inside, 1 across the boundary
    assert check(CertifiedWindow.from_wire(w.to_wire()))
    # the same window certified without the boundary (validators did not have it): 500
    without = window(SECOND)
    assert without.attestation.quantity == 500 and check(without)


def test_a_boundary_that_is_not_the_reading_just_before_is_not_used() -> None:
    earlier = FIRST[-2]  # seq 4: not 6 - 1
    assert usable_boundary(SECOND[0], earlier, T0 + HOUR) is None
    assert attest(SECOND, boundary=earlier, start=T0 + HOUR) == \
        attest(SECOND, start=T0 + HOUR)
    # a certificate over the honest quantity holds with that boundary attached...
    honest = attest(SECOND, start=T0 + HOUR)
    assert honest.quantity == 500  # the 4->6 increment (200 Wh) is not credited
    assert check(window(SECOND, boundary=earlier, att=honest))
    # ... and one that credits it anyway (600 or 700) is refused
    for quantity in (600, 700):
        inflated = replace(honest, quantity=quantity, co2e_mg=quantity * EF)
        assert reason(window(SECOND, boundary=earlier, att=inflated)) == "wrong_attestation"


def test_a_boundary_read_inside_the_window_is_not_used() -> None:
    # seq 5 re-stamped into the second window (a validator rejected it there, say)
    inside = replace(FIRST[-1], ts_ms=(T0 + HOUR) * 1000)
    assert usable_boundary(SECOND[0], inside, T0 + HOUR) is None
    assert usable_boundary(SECOND[0], FIRST[-1], T0 + HOUR) == FIRST[-1]
    assert usable_boundary(None, FIRST[-1], T0 + HOUR) is None
    assert usable_boundary(SECOND[0], None, T0 + HOUR) is None
    other = reading(5, T0 + 3000, 50_500, device="pv-7-meter-2")
    assert usable_boundary(SECOND[0], other, T0 + HOUR) is None


def test_a_missing_boundary_is_refused_when_the_certificate_credits_it() -> None:
    w = window(SECOND, boundary=FIRST[-1])
    assert reason(replace(w, boundary=None)) == "wrong_attestation"


def _with_reading(w: CertifiedWindow, i: int, item: SignedReading) -> CertifiedWindow:
    return replace(w, readings=(*w.readings[:i], item, *w.readings[i + 1:]))


def _changed_body(w: CertifiedWindow) -> CertifiedWindow:
    """Reading 2 with more energy, its device signature kept."""
    more = replace(FIRST[2], values=(("energy_export_wh", 99_999), ("power_w", 1000),
                                     ("voltage_dv", 2300)))
    return _with_reading(w, 2, SignedReading(more.canonical(), w.readings[2].signature))


def _forged(w: CertifiedWindow) -> CertifiedWindow:
    """Reading 1 signed by someone else (the gateway, say)."""
    body = w.readings[1].body
    return _with_reading(w, 1, SignedReading(body, OTHER_KEY.sign(READING_TAG, body)))


def _signatures(w: CertifiedWindow, *signatures: bytes) -> CertifiedWindow:
    return replace(w, certificate=QuorumCertificate(w.attestation, signatures))


def _recertified(w: CertifiedWindow, domain: Domain = DOMAIN,
                 **changes: object) -> CertifiedWindow:
    """k members signed (correctly) an attestation the readings do not give."""
    att = replace(w.attestation, **changes)  # type: ignore[arg-type]
    return replace(w, certificate=certify(att, domain=domain))


OTHER_DEVICE_READING = reading(5, T0 + 3000, 50_500, device="pv-7-meter-2")
Tampering = Callable[[CertifiedWindow], CertifiedWindow]
TAMPERINGS: dict[str, tuple[Tampering, str]] = {
    "changed body": (_changed_body, "bad_reading"),
    "forged signature": (_forged, "bad_reading"),
    "dropped reading": (lambda w: replace(w, readings=w.readings[:3] + w.readings[4:]),
                        "wrong_attestation"),
    "reordered readings": (lambda w: replace(w, readings=(w.readings[1], w.readings[0],
                                                          *w.readings[2:])),
                           "wrong_attestation"),
    "duplicated reading": (lambda w: replace(w, readings=(w.readings[0], *w.readings)),
                           "wrong_attestation"),
    "extra reading": (lambda w: replace(w, readings=(*w.readings, SECOND[0].sign(KEY))),
                      "wrong_attestation"),
    "a reading of another device": (
        lambda w: _with_reading(w, 5, OTHER_DEVICE_READING.sign(OTHER_KEY)), "bad_reading"),
    "a reading of another device, signed with this device's key": (
        lambda w: _with_reading(w, 5, OTHER_DEVICE_READING.sign(KEY)), "wrong_attestation"),
    "a non-member's signature": (
        lambda w: _signatures(w, *w.certificate.signatures[:2],
                              OUTSIDER.sign_digest(w.attestation.digest(DOMAIN))),
        "certificate:unknown_signer"),
    "k - 1 signatures": (lambda w: _signatures(w, *w.certificate.signatures[:2]),
                         "certificate:too_few"),
    "one member twice": (
        lambda w: _signatures(w, *w.certificate.signatures[:2], w.certificate.signatures[0]),
        "certificate:duplicate_signer"),
    "a garbage signature": (
        lambda w: _signatures(w, *w.certificate.signatures[:2], b"\x01" * 65),
        "certificate:bad_signature"),
    "attestation changed after signing": (lambda w: replace(w, certificate=QuorumCertificate(
        replace(w.attestation, quantity=501, co2e_mg=501 * EF), w.certificate.signatures)),
        "certificate:unknown_signer"),
    "signed over another chain": (
        lambda w: _recertified(w, domain=senken_domain(1, b"\x42" * 20)),
        "certificate:unknown_signer"),
    "signed over another contract": (
        lambda w: _recertified(w, domain=senken_domain(31337, b"\x43" * 20)),
        "certificate:unknown_signer"),
    "a wrong quantity": (lambda w: _recertified(w, quantity=5_000, co2e_mg=5_000 * EF),
                         "wrong_attestation"),
    "a wrong co2e": (lambda w: _recertified(w, co2e_mg=w.attestation.co2e_mg + 1),
                     "wrong_attestation"),
    "a wrong count": (lambda w: _recertified(w, readings_accepted=7), "wrong_attestation"),
    "a wrong root": (lambda w: _recertified(w, readings_root=b"\x00" * 32),
                     "wrong_attestation"),
    "another window": (lambda w: _recertified(w, window_start=T0 + HOUR), "wrong_attestation"),
    "another methodology version": (lambda w: _recertified(w, methodology_version=2),
                                    "wrong_attestation"),
    "another device named": (lambda w: _recertified(w, device="pv-7-meter-2"), "bad_reading"),
    "an unregistered device": (lambda w: _recertified(w, device="pv-7-meter-9"),
                               "unknown_device"),
    "a forged boundary": (lambda w: replace(w, boundary=SignedReading(
        FIRST[-1].canonical(), OTHER_KEY.sign(READING_TAG, FIRST[-1].canonical()))),
        "bad_reading"),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_each_tampering_is_refused_with_its_reason(name: str) -> None:
    tamper, expected = TAMPERINGS[name]
    good = window(FIRST)
    assert check(good)
    assert reason(tamper(good)) == expected


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_without_the_native_check_the_same_refusals_and_messages(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The readings' signatures are checked in one native call where the extension is built;
    without it (a machine with no compiler) one by one: the same verdicts, word for word."""
    tamper, _ = TAMPERINGS[name]
    good, bad = window(FIRST), tamper(window(FIRST))
    with pytest.raises(EvidenceError) as native:
        check(bad)
    monkeypatch.setattr(evidence_module, "native_verify_many", lambda: None)
    assert check(good)
    with pytest.raises(EvidenceError) as plain:
        check(bad)
    assert (plain.value.reason, str(plain.value)) == (native.value.reason, str(native.value))


def test_a_certificate_holds_only_in_its_own_domain() -> None:
    w = window(FIRST)
    assert reason(w, senken_domain(1, b"\x42" * 20)) == "certificate:unknown_signer"
    other_chain = senken_domain(1, b"\x42" * 20)
    assert check(window(FIRST, domain=other_chain), other_chain)


def test_the_projects_methodology_terms_are_what_the_quantity_is_checked_under() -> None:
    w = window(FIRST)
    with pytest.raises(EvidenceError) as info:
        check_certified_window(w, VSET, DOMAIN, REGISTERED.get, GridExportAmsID(EF + 1))
    assert info.value.reason == "wrong_attestation"


def test_window_attestation_refuses_readings_outside_the_window_or_out_of_order() -> None:
    for readings, match in ((SECOND, "not in the window"), (FIRST[::-1], "increasing"),
                            ([FIRST[0], FIRST[0]], "increasing"),
                            ([reading(0, T0, 1, device="pv-7-meter-2")], "not in the window")):
        with pytest.raises(ValueError, match=match):
            attest(readings)


def test_window_attestation_fields() -> None:
    att = attest(FIRST, rejected=3)
    assert (att.project, att.device, att.window_start, att.window_seconds) == \
        ("pv-plant-7", DEVICE, T0, HOUR)
    assert (att.methodology, att.methodology_version) == (AMS.name, AMS.version)
    assert (att.readings_accepted, att.readings_rejected, att.model_hash) == (6, 3, MODEL)
    empty = attest([])
    assert (empty.readings_accepted, empty.quantity) == (0, 0)
    assert empty.readings_root == merkle_root([])


def test_anomalous_readings_exclude_the_increments_touching_them() -> None:
    rs = [*FIRST]
    rs[3] = reading(3, T0 + 1800, 50_300, ppm=AMS.anomaly_threshold_ppm)  # exactly at threshold
    assert attest(rs).quantity == 300  # 0->1, 1->2, 4->5
    assert attest([replace(SECOND[0], anomaly_ppm=999_999), *SECOND[1:]], FIRST[-1],
                  start=T0 + HOUR).quantity == 400  # the boundary step and 6->7 excluded
    assert attest(SECOND, replace(FIRST[-1], anomaly_ppm=500_000),
                  start=T0 + HOUR).quantity == 500


# -- the boundary rule across consecutive windows: every increment credited at most once ----

WINDOW = 60


def _windows(stream: list[Reading]) -> dict[int, list[Reading]]:
    by_window: dict[int, list[Reading]] = {}
    for r in stream:
        by_window.setdefault(r.ts_ms // 1000 // WINDOW * WINDOW, []).append(r)
    return {w: sorted(rs, key=lambda r: r.seq) for w, rs in sorted(by_window.items())}


def _quantities(stream: list[Reading], withheld: set[int]) -> dict[int, int]:
    """Each window's quantity, the boundary given unless the window is in ``withheld``."""
    by_seq = {r.seq: r for r in stream}
    quantities = {}
    for i, (start, rs) in enumerate(_windows(stream).items()):
        boundary = None if i in withheld else by_seq.get(rs[0].seq - 1)
        att = window_attestation(
            project="pv-plant-7", device=DEVICE, window_start=start, window_seconds=WINDOW,
            methodology=AMS, model_hash=MODEL, readings=[(r, r.canonical()) for r in rs],
            boundary=boundary, rejected=0)
        assert att.co2e_mg == att.quantity * EF
        quantities[start] = att.quantity
    return quantities


def _register(r: Reading) -> int:
    return r.values[0][1]


def _creditable(stream: list[Reading]) -> int:
    """The increments of consecutive readings both below the anomaly threshold."""
    normal = AMS.anomaly_threshold_ppm
    return sum(_register(b) - _register(a) for a, b in itertools.pairwise(stream)
               if a.anomaly_ppm < normal and b.anomaly_ppm < normal)


streams = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 150), st.booleans()),  # +Wh, +s, anomalous
    min_size=1, max_size=40)


def _stream(steps: list[tuple[int, int, bool]], anomalies: bool) -> list[Reading]:
    stream, wh, ts = [], 1_000, T0
    for seq, (more_wh, more_s, anomalous) in enumerate(steps):
        wh, ts = wh + more_wh, ts + more_s
        stream.append(reading(seq, ts, wh, ppm=900_000 if anomalies and anomalous else 1_000))
    return stream


@settings(max_examples=150, deadline=None)
@given(streams, st.booleans())
def test_with_every_boundary_the_windows_add_up_to_the_register(
    steps: list[tuple[int, int, bool]], anomalies: bool
) -> None:
    stream = _stream(steps, anomalies)
    total = sum(_quantities(stream, set()).values())
    assert total == _creditable(stream)
    if not anomalies:
        assert total == _register(stream[-1]) - _register(stream[0])


@settings(max_examples=150, deadline=None)
@given(streams, st.booleans(), st.sets(st.integers(0, 40)))
def test_without_some_boundaries_exactly_those_increments_are_missing(
    steps: list[tuple[int, int, bool]], anomalies: bool, withheld: set[int]
) -> None:
    stream = _stream(steps, anomalies)
    full = _quantities(stream, set())
    partial = _quantities(stream, withheld)
    assert sum(partial.values()) <= sum(full.values()) <= _register(stream[-1]) - _register(
        stream[0])
    by_window = _windows(stream)
    by_seq = {r.seq: r for r in stream}
    normal = AMS.anomaly_threshold_ppm
    for i, (start, rs) in enumerate(by_window.items()):
        before = by_seq.get(rs[0].seq - 1)
        step = 0
        if i in withheld and before is not None and before.anomaly_ppm < normal \
                and rs[0].anomaly_ppm < normal:
            step = _register(rs[0]) - _register(before)
        assert partial[start] == full[start] - step


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(-90, 90)), min_size=1,
                max_size=30),
       st.sets(st.integers(0, 29)))
def test_no_increment_is_credited_twice_even_when_the_agent_clock_steps_back(
    steps: list[tuple[int, int]], rejected: set[int]
) -> None:
    """The agent's (NTP) clock may step back across a window boundary, and validators may
    reject readings: a stream's windows still never credit more than its register grew."""
    stream, wh, ts = [], 1_000, T0 + 1_000
    for seq, (more_wh, more_s) in enumerate(steps):
        wh, ts = wh + more_wh, ts + more_s
        if seq not in rejected:
            stream.append(reading(seq, ts, wh))
    if not stream:
        return
    by_seq = {r.seq: r for r in stream}
    quantities = _quantities(stream, set())
    # each pair (seq - 1, seq) of accepted readings is credited at most once: in the window of
    # seq, when seq - 1 is in it too or is its usable boundary
    credited = {start: 0 for start in quantities}
    firsts = {rs[0].seq for rs in _windows(stream).values()}
    for s, r in by_seq.items():
        before = by_seq.get(s - 1)
        start = r.ts_ms // 1000 // WINDOW * WINDOW
        if before is not None and (before.ts_ms // 1000 // WINDOW * WINDOW == start or (
                s in firsts and before.ts_ms < start * 1000)):
            credited[start] += _register(r) - _register(before)
    assert quantities == credited
    assert sum(quantities.values()) <= _register(stream[-1]) - _register(stream[0])


def test_an_increment_across_a_gap_in_the_sequence_is_not_credited() -> None:
    """The clock stepped back 1 s at a window boundary: seq 2 is in seq 0's window. Pairing
    0 and 2 there would credit 0 -> 1 a second time (it is credited with seq 1)."""
    stream = [reading(0, T0 + 1000, 1_000), reading(1, T0 + 1020, 1_001),
              reading(2, T0 + 1019, 1_002)]
    assert _quantities(stream, set()) == {T0 + 960: 0, T0 + 1020: 1}
    # the same inside one window: a reading validators rejected leaves a gap
    assert attest([FIRST[0], FIRST[1], *FIRST[3:]]).quantity == 300  # not 1->3 (200 Wh)


# -- the wire form -------------------------------------------------------------------------

GOOD = window(SECOND, boundary=FIRST[-1])


def test_from_wire_says_what_is_wrong() -> None:
    good = canonical.decode(GOOD.to_wire())
    assert isinstance(good, dict)
    cases: list[tuple[canonical.Value, str]] = [
        ([1], "version-1 map"), ({**good, "v": 2}, "version-1 map"),
        ({**good, "v": True}, "version-1 map"), ({**good, "x": 1}, "version-1 map"),
        ({**good, "attestation": "text"}, "attestation must be bytes"),
        ({**good, "attestation": b"\xa0"}, "attestation"),
        ({**good, "signatures": [b"\x00" * 64]}, "65-byte"),
        ({**good, "signatures": b"\x00" * 65}, "65-byte"),
        ({**good, "readings": {}}, "readings must be a list"),
        ({**good, "readings": [[b"body"]]}, "a reading"),
        ({**good, "readings": [[b"body", b"\x00" * 63]]}, "a reading"),
        ({**good, "boundary": [b"body", "sig"]}, "boundary"),
        ({**good, "boundary": False}, "boundary"),
    ]
    for value, match in cases:
        with pytest.raises(PayloadError, match=match):
            CertifiedWindow.from_wire(canonical.encode(value))
    with pytest.raises(PayloadError, match="canonical"):
        CertifiedWindow.from_wire(b"\xff")


def _mutated(data: bytes, at: int, byte: int) -> bytes:
    i = at % len(data)
    return data[:i] + bytes([byte]) + data[i + 1:]


cbor_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1),
              st.binary(max_size=70), st.text(max_size=8)),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)
_good_map = canonical.decode(GOOD.to_wire())
assert isinstance(_good_map, dict)
GOOD_MAP: dict[str, canonical.Value] = _good_map
wire_inputs = st.one_of(
    st.binary(max_size=400),
    st.builds(_mutated, st.just(GOOD.to_wire()), st.integers(0, 100_000), st.integers(0, 255)),
    st.dictionaries(st.sampled_from(sorted(GOOD_MAP)), cbor_values, max_size=2).map(
        lambda d: canonical.encode({**GOOD_MAP, **d})),
)


@settings(max_examples=400, deadline=None)
@given(wire_inputs)
def test_from_wire_answers_any_bytes_with_a_payload_error(data: bytes) -> None:
    try:
        decoded = CertifiedWindow.from_wire(data)
    except PayloadError:
        return
    # what decodes is checked, and the check answers with an EvidenceError or the signers
    with contextlib.suppress(EvidenceError):
        check(decoded)


signed_readings = st.builds(SignedReading, st.binary(max_size=50),
                            st.binary(min_size=64, max_size=64))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=65, max_size=65), max_size=5),
       st.lists(signed_readings, max_size=5), st.none() | signed_readings)
def test_wire_round_trip(signatures: list[bytes], readings: list[SignedReading],
                         boundary: SignedReading | None) -> None:
    w = CertifiedWindow(QuorumCertificate(GOOD.attestation, tuple(signatures)), tuple(readings),
                        boundary)
    wire = w.to_wire()
    assert CertifiedWindow.from_wire(wire) == w
    assert CertifiedWindow.from_wire(wire).to_wire() == wire


def test_window_attestation_with_the_leaf_hashes_given_is_the_same() -> None:
    pairs = [(r, r.canonical()) for r in FIRST]
    given_hashes = window_attestation(
        project="pv-plant-7", device=DEVICE, window_start=T0, window_seconds=HOUR,
        methodology=AMS, model_hash=MODEL, readings=pairs, boundary=None, rejected=0,
        leaf_hashes=[leaf_hash(body) for _, body in pairs])
    assert given_hashes == attest(FIRST)
    with pytest.raises(ValueError, match="leaf hashes"):
        window_attestation(
            project="pv-plant-7", device=DEVICE, window_start=T0, window_seconds=HOUR,
            methodology=AMS, model_hash=MODEL, readings=pairs, boundary=None, rejected=0,
            leaf_hashes=[])


@settings(max_examples=60, deadline=None)
@given(count=st.integers(0, 30), with_boundary=st.booleans(), signers=st.integers(0, 4),
       body_pad=st.integers(0, 300))
def test_the_wire_of_a_certified_window_is_the_generic_canonical_encoding(
        count: int, with_boundary: bool, signers: int, body_pad: int) -> None:
    readings = tuple(SignedReading(bytes([i % 251]) * (i + body_pad), bytes([i]) * 64)
                     for i in range(count))
    boundary = SignedReading(b"b" * body_pad, b"s" * 64) if with_boundary else None
    cert = QuorumCertificate(attest(FIRST), tuple(k.sign_digest(b"\x01" * 32)
                                                  for k in KEYS[:signers]))
    w = CertifiedWindow(cert, readings, boundary)
    assert w.to_wire() == w._to_wire_generic()
    assert CertifiedWindow.from_wire(w.to_wire()) == w
