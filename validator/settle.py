"""Settling windows (docs/protocol.md, section 7, rule 4; section 8 for certificates across a
schedule change): signatures in, certificates and certified windows out.

:class:`Settlement` owns

* the signatures this node has seen (:class:`~validator.agreement.SignatureTally`), its own
  among them, and the certificate k members of a window's set make of them;
* the publication of certified windows: this node publishes one when it led the certified
  round, else keeps it as a *backup* and publishes it only if no peer's certified window with
  that attestation id arrives within ``round_timeout_s``;
* peers' certified windows and ``certified`` answers: checked against the window's set and
  term, then the window is settled; one that does not hold under this node's schedule yet is
  parked until the next schedule (``certificate_parked``);
* the settled windows, remembered (bounded) so late messages do not reopen them: a peer's
  certified window for one is recognised from its last bytes without decoding it, and a late
  have for one is answered with its certificate (``certified``).

Settling a window ends its agreement (validator/rounds.py: ``Rounds.end``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from senken_core import canonical
from senken_core.attestation import Attestation
from senken_core.eip712 import Domain
from senken_core.errors import PayloadError
from senken_core.evidence import CertifiedWindow
from senken_core.quorum import CertificateError, QuorumCertificate, verify_certificate
from validator.agreement import Certified, SignatureTally, WindowKey, leader
from validator.shared import Clock, NodeStats, Outbound
from validator.views import Views, WindowView

if TYPE_CHECKING:
    from validator.rounds import Rounds

__all__ = ["Settled", "Settlement"]

_DONE_MEMORY = 100_000  # settled windows remembered, so late messages do not reopen them
_SETTLED_MEMORY = 4096  # settled attestations remembered to skip peers' certified windows
_PARKED_MEMORY = 256  # certified windows waiting for a schedule (see _park)
_RECENT_MEMORY = 4096  # certificates of settled windows kept to answer haves for them
_PARKED_BYTES = 32 << 20


@dataclass(frozen=True, slots=True)
class Settled:
    """What a settled window's certificate was (to tell whether it still holds under a new
    schedule), and this node's rejected count for it (to agree on it again if not)."""

    version: int
    signers: frozenset[bytes]
    rejected: int


class Settlement:
    """This node's certificates and settled windows (module docstring). Never raises for bad
    input: a bad message is counted in ``stats`` and dropped."""

    _rounds: Rounds  # set by connect()

    def __init__(self, views: Views, stats: NodeStats, clock: Clock, *, address: bytes,
                 domain: Domain, round_timeout_s: float, agreement_topic: str,
                 certificate_topic: str) -> None:
        self.address = address
        self.domain = domain
        self.round_timeout_s = round_timeout_s
        self.stats = stats
        self.tally = SignatureTally(domain)
        # settled windows -> the methodology version and the signers of their certificate
        self.done: OrderedDict[WindowKey, Settled] = OrderedDict()
        # attestation id -> (when, the certified window): published by this node unless a
        # certified window of that id arrives on a certificates topic before then
        self.backups: dict[bytes, tuple[float, CertifiedWindow]] = {}
        self._views = views
        self._clock = clock
        self._agreement_topic = agreement_topic
        self._certificate_topic = certificate_topic
        self._signer_sets: dict[frozenset[bytes], frozenset[bytes]] = {}  # interned
        # certified windows that do not hold under this node's schedule yet (another term or
        # set): looked at again when the schedule changes
        self._parked: OrderedDict[WindowKey, bytes] = OrderedDict()
        # settled windows -> (when, attestation wire, signatures), to answer late haves
        self._recent: OrderedDict[WindowKey, tuple[float, bytes, tuple[bytes, ...]]] = \
            OrderedDict()
        # attestation wire -> id of recently settled windows, to skip peers' copies cheaply
        self._settled: OrderedDict[bytes, bytes] = OrderedDict()
        self._settled_lengths: set[int] = set()

    def connect(self, rounds: Rounds) -> None:
        """End ``rounds``' agreement on each window this settles (and read its evidence)."""
        self._rounds = rounds

    # --- signatures and certificates --------------------------------------------------------

    def on_sign(self, wire: bytes, signature: bytes, out: list[Outbound]) -> None:
        """A signature over an attestation (a peer's, or this node's own)."""
        try:
            att = Attestation.from_wire(wire)
        except PayloadError:
            self.stats.count_dropped("malformed")
            return
        key = WindowKey(att.project, att.device, att.window_start)
        if key in self.done:
            return
        if self.tally.add(att, signature, self._views.known) is None:
            self._certify(key, att, out)

    def _certify(self, key: WindowKey, att: Attestation, out: list[Outbound]) -> None:
        """Settle ``key`` if the tally holds a certificate of ``att``'s id by the window's set.
        Signatures over an attestation of another term than the window's (a peer that has
        not seen a term change yet, or this node) wait in the tally for a new schedule."""
        ag = self._rounds.agreements.get(key)
        view = ag.view if ag is not None else self._views.view(key)
        if view is None or not self._same_terms(att, view):
            return
        found = self.tally.certificate(att.id, view.validators)
        if found is None:
            return
        cert, signers = found
        att = cert.attestation
        digest = att.digest(self.domain)
        self.stats.certificates += 1
        evidence = None if ag is None else ag.evidence.get(digest)
        if evidence is not None:
            readings, boundary, round_ = evidence
            window = CertifiedWindow(cert, readings, boundary)
            if leader(view.members, att.id, round_) == self.address:
                self._publish_certified(window, out)  # the leader of the certified round
            else:  # a backup, in case the leader crashed right after signing
                self.backups[att.id] = (self._clock.now + self.round_timeout_s, window)
        self._settle(key, cert, signers)

    @staticmethod
    def _same_terms(att: Attestation, view: WindowView) -> bool:
        """Whether ``att`` has the window's attestation id (project, device and start are the
        key's; the rest of the id is the grid and the methodology version)."""
        return att.window_seconds == view.terms.window_seconds and \
            att.methodology_version == view.terms.methodology_version

    def _publish_certified(self, window: CertifiedWindow, out: list[Outbound]) -> None:
        self.stats.certificates_published += 1
        out.append(Outbound(self._certificate_topic, window.to_wire()))

    def tick(self, now: float, out: list[Outbound]) -> None:
        """Publish each backup whose time has come."""
        for wid, (at, window) in list(self.backups.items()):
            if now >= at:  # the leader's certified window did not appear: publish ours
                del self.backups[wid]
                self.stats.certificates_backup += 1
                self._publish_certified(window, out)

    def add_deadlines(self, times: list[float]) -> None:
        """Append to ``times`` when :meth:`tick` has backups to publish."""
        times.extend(at for at, _window in self.backups.values())

    # --- peers' certificates ----------------------------------------------------------------

    def _settled_id(self, payload: bytes) -> bytes | None:
        """The attestation id if ``payload`` ends with the attestation of a window this node
        settled recently (canonical CBOR sorts "attestation" last in a certified window), else
        None. Cheap: no decoding, a few slices and hash lookups."""
        for n in self._settled_lengths:
            if len(payload) > n + 3:
                wid = self._settled.get(payload[-n:])
                if wid is not None and payload.endswith(canonical.encode_head(2, n)
                                                        + payload[-n:]):
                    return wid
        return None

    def on_certificate(self, payload: bytes) -> None:
        """A certified window on a peer's certificates topic."""
        wid = self._settled_id(payload)
        if wid is not None and wid not in self.backups:
            self.stats.certificates_skipped += 1  # already settled, nothing to do
            return
        try:
            window = CertifiedWindow.from_wire(payload)
        except PayloadError:
            self.stats.count_dropped("bad_certificate")
            return
        self._accept(window.certificate, payload)

    def on_certified(self, message: Certified) -> None:
        """A peer's answer to this node's have: the certificate of a window it settled."""
        try:
            att = Attestation.from_wire(message.attestation)
        except PayloadError:
            self.stats.count_dropped("malformed")
            return
        self._accept(QuorumCertificate(att, message.signatures), None)

    def _accept(self, cert: QuorumCertificate, payload: bytes | None) -> None:
        """Settle the certificate's window if the certificate holds under this node's
        schedule (k members of the window's set, the window's methodology version); if not,
        keep it for the next schedule when it may hold then (``payload``: the certified
        window's wire, else it is rebuilt without readings)."""
        att = cert.attestation
        key = WindowKey(att.project, att.device, att.window_start)
        view = self._views.view(key)
        try:
            signers = verify_certificate(
                cert, self._views.schedule.validators_for(att.window_start), self.domain)
            fits = view is not None and self._same_terms(att, view)
        except CertificateError as exc:
            if exc.reason not in ("unknown_signer", "too_few"):
                self.stats.count_dropped("bad_certificate")
                return
            fits = False  # perhaps a set this node has not seen yet
        if not fits:
            wire = payload or CertifiedWindow(cert, (), None).to_wire()
            if not self._park(key, wire):
                self.stats.count_dropped("bad_certificate")
            return
        self.backups.pop(att.id, None)  # someone published it: no backup needed
        if key not in self.done:
            self._settle(key, cert, signers)

    def answer_settled(self, key: WindowKey, sender: bytes, out: list[Outbound]) -> None:
        """A have for ``key``, which this node settled: if it comes a round timeout or more
        after that from a member of the window's set, its sender is still agreeing (it missed
        the certificate, or took the window up again after a schedule change); send it the
        certificate, at most once per round timeout."""
        recent = self._recent.get(key)
        now = self._clock.now
        if recent is None or now < recent[0] + self.round_timeout_s:
            return
        view = self._views.view(key)
        if view is not None and sender in view.validators.members:
            _at, wire, signatures = recent
            self._recent[key] = (now, wire, signatures)
            out.append(Outbound(self._agreement_topic, Certified(wire, signatures).encode()))

    def _park(self, key: WindowKey, payload: bytes) -> bool:
        """Keep a certified window that does not hold under this node's schedule (signed by
        a set or under a term it has not seen yet) until the next schedule, at most
        ``_PARKED_MEMORY`` of them and ``_PARKED_BYTES`` in all (one per window, the latest).
        False (not kept) for a window already settled."""
        if key in self.done or len(payload) > _PARKED_BYTES:
            return False
        self._parked.pop(key, None)
        self._parked[key] = payload
        while len(self._parked) > _PARKED_MEMORY or \
                sum(map(len, self._parked.values())) > _PARKED_BYTES:
            self._parked.popitem(last=False)
        self.stats.count_dropped("certificate_parked")
        return True

    def _settle(self, key: WindowKey, cert: QuorumCertificate,
                signers: Iterable[bytes]) -> None:
        """The window is certified: stop agreeing on it and forget its state (but its
        certificate, for a while: answer_settled)."""
        att = cert.attestation
        ag = self._rounds.end(key)
        now = self._clock.now
        if ag is not None and ag.due_at is not None:
            self.stats.quorum_latency_s.append(now - ag.due_at)
        attestation_id, wire = att.id, att.to_wire()
        self.tally.forget(attestation_id)
        self._parked.pop(key, None)
        by = frozenset(signers)
        rejected = 0 if ag is None or ag.mine is None else ag.mine.have.rejected
        self.done[key] = Settled(att.methodology_version,
                                  self._signer_sets.setdefault(by, by), rejected)
        while len(self.done) > _DONE_MEMORY:
            self.done.popitem(last=False)
        self._recent[key] = (now, wire, cert.signatures)
        while len(self._recent) > _RECENT_MEMORY:
            self._recent.popitem(last=False)
        self._settled[wire] = attestation_id
        self._settled_lengths.add(len(wire))
        while len(self._settled) > _SETTLED_MEMORY:
            self._settled.popitem(last=False)

    # --- a new schedule (validator/node.py, on_schedule) ------------------------------------

    def unsettle(self, horizon: int) -> list[tuple[WindowKey, int]]:
        """Forget each window from ``horizon`` on settled by a certificate that does not hold
        under the current schedule; returns them, each with this node's rejected count, to be
        agreed on again."""
        reopened: list[tuple[WindowKey, int]] = []
        for key, settled in list(self.done.items()):
            if key.window_start >= horizon and not self._still_holds(key, settled):
                del self.done[key]
                reopened.append((key, settled.rejected))
        if reopened:  # their attestations may come again with other signatures
            self._settled.clear()
            self._settled_lengths.clear()
        return reopened

    def _still_holds(self, key: WindowKey, settled: Settled) -> bool:
        """Whether the certificate ``key`` was settled by (its methodology version and
        signers) holds under the current schedule."""
        view = self._views.view(key)
        if view is None:
            return True  # not this node's to agree on either way
        validators = view.validators
        return settled.version == view.terms.methodology_version and \
            len(settled.signers & validators.members) >= validators.threshold

    def retry(self, out: list[Outbound]) -> None:
        """Look again at the certified windows and signatures that waited for a schedule."""
        parked, self._parked = self._parked, OrderedDict()
        for payload in parked.values():
            self.on_certificate(payload)
        for att in self.tally.waiting():
            key = WindowKey(att.project, att.device, att.window_start)
            if key in self.done:
                self.tally.forget(att.id)
            else:
                self._certify(key, att, out)
