"""A buyer's offline check of a certified window, and the project-terms check the ledger
shares with it (pure: no database, no network).

What a buyer holds: the evidence (``GET /attestations/{id}/evidence``, the
``CertifiedWindow.to_wire()`` bytes), the device's owner-signed registry record
(``GET /attestations/{id}/registry``) and the network file (validator set, threshold, chain,
each project's owner key and terms). :func:`check_evidence` trusts nothing else: the registry
record must be signed by the project's owner key from the network file, the certificate must
carry k distinct members' signatures, and every reading, the root, the count and the quantity
must hold (``senken_core.evidence.check_certified_window``).
"""

from __future__ import annotations

from dataclasses import dataclass

from senken_core.attestation import Attestation
from senken_core.errors import PayloadError
from senken_core.evidence import CertifiedWindow, EvidenceError, check_certified_window
from senken_core.network import NetworkConfig
from senken_core.registry import DeviceRegistry, RegistryError, SignedDeviceRecord

__all__ = ["CheckedWindow", "check_evidence", "terms_problem"]


@dataclass(frozen=True, slots=True)
class CheckedWindow:
    """A certified window that holds, and who certified it (20-byte addresses, sorted)."""

    window: CertifiedWindow
    signers: tuple[bytes, ...]

    @property
    def attestation(self) -> Attestation:
        return self.window.attestation


def terms_problem(network: NetworkConfig, att: Attestation) -> str | None:
    """Why ``att`` breaks its project's governed terms (a reason code), or None:
    ``unknown_project``, ``wrong_window`` (off the project's window grid: a re-cut window),
    ``wrong_model`` (not the project's anomaly model), ``wrong_methodology``."""
    project = network.project(att.project)
    if project is None:
        return "unknown_project"
    if att.window_seconds != project.window_seconds:
        return "wrong_window"
    if att.model_hash != project.model_hash:
        return "wrong_model"
    if (att.methodology, att.methodology_version) != (project.methodology,
                                                      project.methodology_version):
        return "wrong_methodology"
    return None


def check_evidence(evidence: bytes, registry_record: bytes,
                   network: NetworkConfig) -> CheckedWindow:
    """Check a certified window with the device's signed registry record, offline.

    Raises :class:`EvidenceError` with reason ``malformed`` (evidence bytes), ``registry:<r>``
    (the record is malformed, ``unknown_project`` or ``bad_signature``: not signed by the
    project's owner), ``wrong_device`` (the record is another device's, or another
    project's), a :func:`terms_problem` reason, or a ``check_certified_window`` reason
    (``certificate:*``, ``bad_reading``, ``wrong_attestation``).
    """
    try:
        window = CertifiedWindow.from_wire(evidence)
    except PayloadError as exc:
        raise EvidenceError("malformed", str(exc)) from None
    registry = DeviceRegistry(network.owners())
    try:
        signed = SignedDeviceRecord.from_wire(registry_record)
        registry.apply(signed)
    except RegistryError as exc:
        raise EvidenceError(f"registry:{exc.reason}", str(exc)) from None
    att = window.attestation
    record = registry.lookup(att.device)
    if record is None or record.project != att.project:
        raise EvidenceError("wrong_device", f"the registry record is not {att.device}'s of "
                            f"project {att.project}")
    problem = terms_problem(network, att)
    if problem is not None:
        raise EvidenceError(problem, f"the attestation breaks project {att.project}'s terms "
                            f"in the network file ({problem})")
    project = network.project(att.project)
    assert project is not None
    signers = check_certified_window(
        window, network.validator_set(), network.domain(),
        lambda device: record.public_key if device == att.device else None,
        project.methodology_terms())
    return CheckedWindow(window, signers)
