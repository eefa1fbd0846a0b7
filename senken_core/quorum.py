"""Quorum certificates: k validators' signatures over the same attestation digest.

Shared by the validators (which collect signatures until k agree) and the ledger (which checks
every certificate it receives), and mirrored by the credit contract (issue 4). A certificate is
valid when, as OCR2Aggregator's ``transmit`` checks before changing any state:

* every signature is 65 bytes ``r || s || v`` and recovers an address (low s, v 27/28);
* every recovered signer is a member of the validator set;
* no signer appears twice;
* there are at least ``threshold`` signatures;
* all over the one EIP-712 digest of the attestation under the expected domain (chain id and
  credit contract): a signature over another chain, contract or content recovers another
  address, which is then not a member (or not the claimed signer) and is refused.

:class:`SignatureCollector` is the validators' side: a pure state machine fed signature
messages (duplicates, as MQTT QoS 1 delivers them, change nothing; a non-member's or a bad
signature is dropped with a reason) that returns a certificate the first time ``threshold``
distinct members have signed the same digest. A validator that signs something else only adds
a signature to another digest: a certificate never contains it. With ``threshold = 2f + 1`` of
``n = 3f + 1`` validators, f crashed validators do not stop certificates, and two certificates
for different contents of one window would need f + 1 validators to sign both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from senken_core.attestation import Attestation
from senken_core.eip712 import Domain
from senken_core.errors import SenkenError, SignatureError
from senken_core.secp256k1 import recover_address

__all__ = ["CertificateError", "QuorumCertificate", "SignatureCollector", "ValidatorSet",
           "verify_certificate"]


class CertificateError(SenkenError):
    """A quorum certificate that does not hold; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ValidatorSet:
    """The members' addresses (20 bytes each) and the threshold k."""

    members: frozenset[bytes]
    threshold: int

    def __post_init__(self) -> None:
        if any(len(m) != 20 for m in self.members):
            raise ValueError("validator addresses are 20 bytes")
        if not 1 <= self.threshold <= len(self.members):
            raise ValueError(f"threshold {self.threshold} must be 1 .. {len(self.members)}")

    @classmethod
    def of(cls, members: Iterable[bytes], threshold: int) -> ValidatorSet:
        return cls(frozenset(members), threshold)


@dataclass(frozen=True, slots=True)
class QuorumCertificate:
    """An attestation and the signatures (in signer address order) that certify it."""

    attestation: Attestation
    signatures: tuple[bytes, ...]


def verify_certificate(cert: QuorumCertificate, validators: ValidatorSet,
                       domain: Domain) -> tuple[bytes, ...]:
    """The certificate's signer addresses, sorted; raises :class:`CertificateError` with reason
    ``bad_signature``, ``unknown_signer``, ``duplicate_signer`` or ``too_few``."""
    digest = cert.attestation.digest(domain)
    signers: list[bytes] = []
    for i, sig in enumerate(cert.signatures):
        try:
            signer = recover_address(digest, sig)
        except SignatureError as exc:
            raise CertificateError("bad_signature", f"signature {i}: {exc}") from None
        if signer not in validators.members:
            raise CertificateError("unknown_signer", f"signature {i} is by 0x{signer.hex()}, "
                                   "not a member of the validator set (or over another digest)")
        if signer in signers:
            raise CertificateError("duplicate_signer", f"0x{signer.hex()} signed twice")
        signers.append(signer)
    if len(signers) < validators.threshold:
        raise CertificateError("too_few", f"{len(signers)} signatures, the threshold is "
                               f"{validators.threshold}")
    return tuple(sorted(signers))


@dataclass
class _Slot:
    by_digest: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)  # digest->signer->sig
    certified: bytes | None = None  # the digest certified first


class SignatureCollector:
    """Collects validators' signatures per attestation id until ``threshold`` agree.

    Pure: no I/O, no clock. Not thread-safe.
    """

    def __init__(self, validators: ValidatorSet, domain: Domain) -> None:
        self.validators = validators
        self.domain = domain
        self._slots: dict[bytes, _Slot] = {}
        self.dropped: dict[str, int] = {}

    def add(self, attestation: Attestation, signature: bytes) -> QuorumCertificate | None:
        """Record one signature over ``attestation``; return the certificate the first time
        ``threshold`` distinct members have signed the same digest, else None. Never raises
        for bad input: a bad or non-member signature is dropped and counted in ``dropped``."""
        digest = attestation.digest(self.domain)
        try:
            signer = recover_address(digest, signature)
        except SignatureError:
            self._drop("bad_signature")
            return None
        if signer not in self.validators.members:
            self._drop("unknown_signer")
            return None
        slot = self._slots.setdefault(attestation.id, _Slot())
        signed = slot.by_digest.setdefault(digest, {})
        if signer in signed:  # a QoS 1 duplicate (ECDSA here is deterministic: same bytes)
            self._drop("duplicate")
            return None
        signed[signer] = signature
        if slot.certified is None and len(signed) >= self.validators.threshold:
            slot.certified = digest
            chosen = sorted(signed)[: self.validators.threshold]
            return QuorumCertificate(attestation, tuple(signed[s] for s in chosen))
        return None

    def signers(self, attestation_id: bytes) -> dict[bytes, Sequence[bytes]]:
        """Per digest, the members who signed it, for the window ``attestation_id``."""
        slot = self._slots.get(attestation_id)
        return {} if slot is None else {d: sorted(s) for d, s in slot.by_digest.items()}

    def forget(self, attestation_id: bytes) -> None:
        """Drop a window's signatures (once its certificate is settled), to bound memory."""
        self._slots.pop(attestation_id, None)

    def certified(self, attestation_id: bytes) -> bool:
        slot = self._slots.get(attestation_id)
        return slot is not None and slot.certified is not None

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
