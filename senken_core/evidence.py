"""A certified window with its evidence: what the ledger stores and a buyer checks offline.

:func:`window_attestation` is the one function that turns a window's agreed readings into its
:class:`Attestation`; validators, the ledger and a buyer's offline check all call it, so they
compute the same bytes. Its rules:

* ``readings`` are the window's accepted readings of one device, sorted by sequence number,
  each read (agent timestamp) inside ``[window_start, window_start + window_seconds)``; their
  signed bodies are the Merkle leaves and ``readings_accepted`` is the tree size;
* ``boundary`` is the device's reading just before the window's first one (sequence number one
  lower, read in an earlier window) when the validators have it: a cumulative register's
  increment across the window boundary is credited to the later window, exactly once, because
  a pair (seq - 1, seq) belongs to the window of seq only. Without it that one increment is not
  credited (conservative, never counted twice);
* inside the window too, only pairs (seq - 1, seq) are credited: the methodology is applied to
  each run of consecutive sequence numbers. Across a gap (a rejected reading, or one that an
  agent clock stepping back put into another window, where its own pairs are credited) the
  increment is not credited, so no increment is ever counted in two windows;
* ``readings_rejected`` is the count the validators agreed on (docs/protocol.md).

A :class:`CertifiedWindow` is a quorum certificate plus the signed readings (and boundary
reading) it rests on. :func:`check_certified_window` checks everything a buyer needs: the
certificate (k distinct members over the digest), every reading's device signature under the
registered key, the window, the Merkle root and count, and the quantity recomputed under the
project's methodology. Each refusal is an :class:`EvidenceError` with a stable ``reason``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from senken_core import canonical
from senken_core.attestation import Attestation
from senken_core.eip712 import Domain
from senken_core.errors import EncodingError, PayloadError, SenkenError, SignatureError
from senken_core.keys import READING_TAG, native_verify_many, verify_signature
from senken_core.merkle import merkle_root, merkle_root_of_leaf_hashes
from senken_core.methodology import Methodology
from senken_core.quorum import CertificateError, QuorumCertificate, ValidatorSet, verify_certificate
from senken_core.reading import Reading, SignedReading

__all__ = ["CertifiedWindow", "EvidenceError", "check_certified_window", "usable_boundary",
           "window_attestation"]

_SCHEMA = 1


class EvidenceError(SenkenError):
    """Evidence that does not hold; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def usable_boundary(first: Reading | None, boundary: Reading | None,
                    window_start: int) -> Reading | None:
    """``boundary`` if it is the reading just before ``first`` (same device, seq - 1, read
    before the window), else None."""
    if first is None or boundary is None:
        return None
    if (boundary.device != first.device or boundary.seq != first.seq - 1
            or boundary.ts_ms >= window_start * 1000):
        return None
    return boundary


def window_attestation(
    *, project: str, device: str, window_start: int, window_seconds: int,
    methodology: Methodology, model_hash: bytes,
    readings: Sequence[tuple[Reading, bytes]], boundary: Reading | None, rejected: int,
    leaf_hashes: Sequence[bytes] | None = None,
) -> Attestation:
    """The attestation of one window (module docstring). ``readings``: (reading, signed body)
    pairs in sequence order; ``leaf_hashes``: their bodies' Merkle leaf hashes, in the same
    order, when the caller has them already (a validator hashes each reading once, when it
    keeps it). Raises ValueError for readings outside the window or out of order, or leaf
    hashes not one per reading."""
    start_ms, end_ms = window_start * 1000, (window_start + window_seconds) * 1000
    previous = -1
    for reading, _ in readings:
        if reading.device != device or not start_ms <= reading.ts_ms < end_ms:
            raise ValueError(f"reading {reading.device}#{reading.seq} is not in the window")
        if reading.seq <= previous:
            raise ValueError("readings must be in increasing sequence order")
        previous = reading.seq
    if leaf_hashes is None:
        root = merkle_root([body for _, body in readings])
    elif len(leaf_hashes) != len(readings):
        raise ValueError(f"{len(leaf_hashes)} leaf hashes for {len(readings)} readings")
    else:
        root = merkle_root_of_leaf_hashes(leaf_hashes)
    plain = [r for r, _ in readings]
    before = usable_boundary(plain[0] if plain else None, boundary, window_start)
    quantity = co2e_mg = 0
    run = 0  # the start of the current run of consecutive sequence numbers
    for i in range(1, len(plain) + 1):
        if i == len(plain) or plain[i].seq != plain[i - 1].seq + 1:
            amount = methodology.window_quantity(plain[run:i], before if run == 0 else None)
            quantity, co2e_mg = quantity + amount.quantity, co2e_mg + amount.co2e_mg
            run = i
    return Attestation(
        project=project, device=device, window_start=window_start,
        window_seconds=window_seconds, methodology=methodology.name,
        methodology_version=methodology.version, readings_accepted=len(plain),
        readings_rejected=rejected, quantity=quantity, co2e_mg=co2e_mg,
        readings_root=root, model_hash=model_hash)


def _pair(item: SignedReading) -> list[canonical.Value]:
    return [item.body, item.signature]


def _signed(value: object, what: str) -> SignedReading:
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], bytes)
            or not isinstance(value[1], bytes) or len(value[1]) != 64):
        raise PayloadError(f"certified window: {what} is not [body, 64-byte signature]")
    return SignedReading(value[0], value[1])


_WIRE_PREFIX = (canonical.encode_head(5, 5) + canonical.encode("v") + canonical.encode(_SCHEMA)
                + canonical.encode("boundary"))
_NONE = canonical.encode(None)
_READINGS_KEY = canonical.encode("readings")
_PAIR_HEAD = canonical.encode_head(4, 2)
_SIGNATURES_KEY = canonical.encode("signatures")
_ATTESTATION_KEY = canonical.encode("attestation")


@dataclass(frozen=True, slots=True)
class CertifiedWindow:
    """A quorum certificate with the signed readings its root covers (in sequence order)
    and the boundary reading its quantity pairs with (or None)."""

    certificate: QuorumCertificate
    readings: tuple[SignedReading, ...]
    boundary: SignedReading | None = None

    @property
    def attestation(self) -> Attestation:
        return self.certificate.attestation

    def to_wire(self) -> bytes:
        """Canonical CBOR bytes: the MQTT payload and the file a buyer keeps.

        ``canonical.encode`` of the map (:meth:`_to_wire_generic`, property-tested equal),
        built directly: the keys in canonical order (v, boundary, readings, signatures,
        attestation) and the readings' heads joined without the generic encoder's recursion
        (a window holds thousands)."""
        head = canonical.encode_head
        parts = [_WIRE_PREFIX,
                 _NONE if self.boundary is None else canonical.encode(_pair(self.boundary)),
                 _READINGS_KEY, head(4, len(self.readings))]
        for r in self.readings:
            parts += (_PAIR_HEAD, head(2, len(r.body)), r.body, head(2, len(r.signature)),
                      r.signature)
        parts += (_SIGNATURES_KEY, canonical.encode(list(self.certificate.signatures)),
                  _ATTESTATION_KEY, canonical.encode(self.certificate.attestation.to_wire()))
        return b"".join(parts)

    def _to_wire_generic(self) -> bytes:
        """:meth:`to_wire` through the generic encoder (the reference)."""
        return canonical.encode({
            "v": _SCHEMA,
            "attestation": self.certificate.attestation.to_wire(),
            "signatures": list(self.certificate.signatures),
            "readings": [_pair(r) for r in self.readings],
            "boundary": None if self.boundary is None else _pair(self.boundary),
        })

    @classmethod
    def from_wire(cls, data: bytes) -> CertifiedWindow:
        """Decode :meth:`to_wire` bytes; raises :class:`PayloadError` saying what is wrong
        (the evidence itself is checked by :func:`check_certified_window`)."""
        try:
            value = canonical.decode(data)
        except EncodingError as exc:
            raise PayloadError(f"certified window: not canonical CBOR ({exc})") from None
        keys = {"v", "attestation", "signatures", "readings", "boundary"}
        if (not isinstance(value, dict) or set(value) != keys or type(value["v"]) is not int
                or value["v"] != _SCHEMA):  # (True == 1 in Python)
            raise PayloadError("certified window: expected a version-1 map of "
                               + ", ".join(sorted(keys)))
        if not isinstance(value["attestation"], bytes):
            raise PayloadError("certified window: attestation must be bytes")
        attestation = Attestation.from_wire(value["attestation"])
        sigs = value["signatures"]
        if not isinstance(sigs, list) or not all(isinstance(s, bytes) and len(s) == 65
                                                 for s in sigs):
            raise PayloadError("certified window: signatures must be 65-byte strings")
        readings = value["readings"]
        if not isinstance(readings, list):
            raise PayloadError("certified window: readings must be a list")
        boundary = value["boundary"]
        return cls(QuorumCertificate(attestation, tuple(sigs)),  # type: ignore[arg-type]
                   tuple(_signed(r, "a reading") for r in readings),
                   None if boundary is None else _signed(boundary, "the boundary reading"))


def check_certified_window(
    window: CertifiedWindow, validators: ValidatorSet, domain: Domain,
    public_key_of: Callable[[str], bytes | None], methodology: Methodology,
) -> tuple[bytes, ...]:
    """Check a certified window end to end; returns the signers' addresses (sorted).

    ``public_key_of(device)``: the device's registered Ed25519 key (None if unknown);
    ``methodology``: the project's, to recompute the quantity. Raises :class:`EvidenceError`
    with reason ``certificate:<reason>`` (see :func:`verify_certificate`), ``unknown_device``,
    ``bad_reading`` (a signature or body that does not hold), ``wrong_attestation`` (the
    readings give another attestation: root, count, window or quantity).
    """
    try:
        signers = verify_certificate(window.certificate, validators, domain)
    except CertificateError as exc:
        raise EvidenceError(f"certificate:{exc.reason}", str(exc)) from None
    att = window.attestation
    key = public_key_of(att.device)
    if key is None:
        raise EvidenceError("unknown_device", f"{att.device} is not in the registry")
    decoded: list[tuple[Reading, bytes]] = []
    verify_many = native_verify_many()
    digests: list[bytes | None] = [None] * len(window.readings)
    if verify_many is not None and type(key) is bytes and len(key) == 32:
        # every signature in one native call; a reading it refuses (or could not check) goes
        # through _checked for its exact error
        digests = verify_many(READING_TAG, key, [r.body for r in window.readings],
                              [r.signature for r in window.readings])
    for i, item in enumerate(window.readings):
        if digests[i] is None:
            decoded.append((_checked(item, key, f"reading {i}"), item.body))
            continue
        try:
            decoded.append((Reading.from_canonical(item.body), item.body))
        except (EncodingError, ValueError) as exc:
            raise EvidenceError("bad_reading", f"reading {i}: {exc}") from None
    boundary = None if window.boundary is None else _checked(window.boundary, key, "boundary")
    try:
        expected = window_attestation(
            project=att.project, device=att.device, window_start=att.window_start,
            window_seconds=att.window_seconds, methodology=methodology,
            model_hash=att.model_hash, readings=decoded, boundary=boundary,
            rejected=att.readings_rejected)
    except ValueError as exc:
        raise EvidenceError("wrong_attestation", str(exc)) from None
    if expected != att:
        raise EvidenceError("wrong_attestation", "the readings give another attestation "
                            f"(root {expected.readings_root.hex()[:16]}..., quantity "
                            f"{expected.quantity}) than the certified one")
    return signers


def _checked(item: SignedReading, key: bytes, what: str) -> Reading:
    try:
        verify_signature(key, READING_TAG, item.body, item.signature)
        return Reading.from_canonical(item.body)
    except (SignatureError, EncodingError, ValueError) as exc:
        raise EvidenceError("bad_reading", f"{what}: {exc}") from None
