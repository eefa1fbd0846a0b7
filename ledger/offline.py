"""A buyer's offline check of a certified window, and the project-terms check the ledger
shares with it (pure: no database, no network).

What a buyer holds: the evidence (``GET /attestations/{id}/evidence``, the
``CertifiedWindow.to_wire()`` bytes), the device's owner-signed registry record
(``GET /attestations/{id}/registry``) and the network file (validator set, threshold, chain,
each project's owner key and terms). :func:`check_evidence` trusts nothing else: the registry
record must be signed by the project's owner key from the network file, the certificate must
carry k distinct members' signatures, and every reading, the root, the count and the quantity
must hold (``senken_core.evidence.check_certified_window``).

With a :class:`~senken_core.membership.Schedule` (the ledger's, read from the chain: section 8
of docs/protocol.md) the set and the methodology term are the window's, not the file's: the
certificate must hold under the set in force for the window, and the attestation must carry
the version of the term in force for it (``no_term`` when there is none), its quantity
recomputed under that term's grid factor.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from senken_core.attestation import Attestation
from senken_core.errors import PayloadError
from senken_core.evidence import CertifiedWindow, EvidenceError, check_certified_window
from senken_core.membership import MethodologyTerm, Schedule
from senken_core.methodology import Methodology
from senken_core.network import NetworkConfig, ProjectConfig
from senken_core.registry import DeviceRegistry, RegistryError, SignedDeviceRecord

__all__ = ["CheckedWindow", "check_evidence", "project_problem", "term_problem", "terms_problem",
           "window_methodology"]


@dataclass(frozen=True, slots=True)
class CheckedWindow:
    """A certified window that holds, and who certified it (20-byte addresses, sorted)."""

    window: CertifiedWindow
    signers: tuple[bytes, ...]

    @property
    def attestation(self) -> Attestation:
        return self.window.attestation


def project_problem(network: NetworkConfig, att: Attestation) -> str | None:
    """Why ``att`` breaks its project's fixed terms in the network file (a reason code), or
    None: ``unknown_project``, ``wrong_window`` (not the project's window length, or off its
    grid: a re-cut window), ``wrong_model`` (not the project's anomaly model),
    ``wrong_methodology`` (another methodology)."""
    project = network.project(att.project)
    if project is None:
        return "unknown_project"
    if att.window_seconds != project.window_seconds:
        return "wrong_window"
    if att.model_hash != project.model_hash:
        return "wrong_model"
    if att.methodology != project.methodology:
        return "wrong_methodology"
    return None


def term_problem(att: Attestation, term: MethodologyTerm | None) -> str | None:
    """Why ``att`` does not fit the methodology term in force for its window, or None:
    ``no_term`` (no term yet for the window: the contract reverts ``NoTermForWindow``),
    ``wrong_methodology`` (another methodology version)."""
    if term is None:
        return "no_term"
    if att.methodology_version != term.methodology_version:
        return "wrong_methodology"
    return None


def terms_problem(network: NetworkConfig, att: Attestation,
                  schedule: Schedule | None = None) -> str | None:
    """:func:`project_problem`, then :func:`term_problem` with the term ``schedule`` gives the
    window (without one: the network file's term, in force for every window)."""
    problem = project_problem(network, att)
    if problem is not None:
        return problem
    if schedule is None:
        project = network.project(att.project)
        assert project is not None  # checked above
        return term_problem(att, MethodologyTerm(0, project.methodology_version,
                                                 project.grid_ef_g_per_kwh))
    return term_problem(att, schedule.term_for(att.project, att.window_start))


def window_methodology(project: ProjectConfig, term: MethodologyTerm) -> Methodology:
    """The project's methodology under ``term`` (its version and grid emission factor; the
    rest is the network file's)."""
    return replace(project, methodology_version=term.methodology_version,
                   grid_ef_g_per_kwh=term.grid_ef_g_per_kwh).methodology_terms()


def check_evidence(evidence: bytes, registry_record: bytes, network: NetworkConfig,
                   schedule: Schedule | None = None) -> CheckedWindow:
    """Check a certified window with the device's signed registry record, offline.

    ``schedule``: the validator sets and methodology terms read from the chain (module
    docstring); without it, the network file's set and terms. Raises :class:`EvidenceError`
    with reason ``malformed`` (evidence bytes), ``registry:<r>`` (the record is malformed,
    ``unknown_project`` or ``bad_signature``: not signed by the project's owner),
    ``wrong_device`` (the record is another device's, or another project's), a
    :func:`terms_problem` reason, or a ``check_certified_window`` reason (``certificate:*``,
    ``bad_reading``, ``wrong_attestation``).
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
    problem = terms_problem(network, att, schedule)
    if problem is not None:
        where = "in the network file" if schedule is None else "for its window"
        raise EvidenceError(problem, f"the attestation breaks project {att.project}'s terms "
                            f"{where} ({problem})")
    project = network.project(att.project)
    assert project is not None
    if schedule is None:
        validators, methodology = network.validator_set(), project.methodology_terms()
    else:
        term = schedule.term_for(att.project, att.window_start)
        assert term is not None  # checked by terms_problem
        validators = schedule.validators_for(att.window_start)
        methodology = window_methodology(project, term)
    signers = check_certified_window(
        window, validators, network.domain(),
        lambda device: record.public_key if device == att.device else None, methodology)
    return CheckedWindow(window, signers)
