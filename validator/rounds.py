"""The agreement rounds on each window (docs/protocol.md, section 7, rules 1-3 and 5; the wire
messages are validator/agreement.py's).

:class:`Rounds` owns, per window this node takes part in,

* its :class:`Window` until the window is due: the leaves and rejected count this node's own
  have will carry (filled in by validator/intake.py);
* its :class:`Agreement` from then on: this node's have and the haves of the window's set,
  the round and its timer, the leader's proposal (this node's, when it leads), the fetches for
  what a have or proposal lists that this node lacks, and this node's signature (at most one
  per round), with the readings it signed over (the evidence of a certified window).

A window's set and terms are its view (validator/views.py). Signatures go to
validator/settle.py, which ends a window's agreement (:meth:`Rounds.end`) once it holds a
certificate for it; a settled window is never opened here again unless a new schedule takes
its certificate away (:meth:`Rounds.reopen`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from senken_core.attestation import Attestation
from senken_core.eip712 import Domain
from senken_core.errors import EncodingError
from senken_core.evidence import window_attestation
from senken_core.merkle import leaf_hash
from senken_core.network import ProjectConfig
from senken_core.quorum import ValidatorSet
from senken_core.reading import Reading, SignedReading
from senken_core.secp256k1 import ValidatorKey
from validator.agreement import (
    MAX_FETCH,
    Fetch,
    Have,
    OpenedHaves,
    Proposal,
    Sign,
    SignedHave,
    WindowKey,
    agreed_readings,
    agreed_rejected,
    leader,
    seal,
)
from validator.shared import Clock, NodeStats, Outbound
from validator.views import Views, WindowView

if TYPE_CHECKING:
    from validator.intake import Intake
    from validator.settle import Settlement

__all__ = ["Agreement", "Rounds", "Window"]

Evidence = tuple[tuple[SignedReading, ...], SignedReading | None, int]


@dataclass(slots=True)
class Window:
    """A window this node's own have is being filled in for (until it is due)."""

    due: float
    start: int = 0
    seconds: int = 0
    leaves: dict[int, bytes] = field(default_factory=dict)
    rejected: int = 0
    open: bool = True  # False once closed (its have sent) or settled


@dataclass(slots=True)
class Agreement:
    """One window being agreed on (from this node's have, or a peer's, until settled)."""

    view: WindowView
    round: int = 0
    round_started: float = 0.0  # when this node entered the round (the leader's collect_s)
    timer_from: float = 0.0  # the round's timeout runs from here (see Rounds._deadline)
    spread: float | None = None  # own have -> k haves held: how late peers' haves come
    timer_round: int = -1  # the round whose proposal restarted the timer (once a round)
    due_at: float | None = None  # when this node's own have went out
    mine: SignedHave | None = None
    haves: dict[bytes, SignedHave] = field(default_factory=dict)
    proposed_round: int = -1
    proposal: Proposal | None = None
    signed_round: int = -1
    fetch_round: int = -1
    evidence: dict[bytes, Evidence] = field(default_factory=dict)  # digest -> what this node
    # signed it over, and the round

    @property
    def id(self) -> bytes:
        return self.view.id

    @property
    def terms(self) -> ProjectConfig:
        return self.view.terms

    @property
    def validators(self) -> ValidatorSet:
        return self.view.validators

    @property
    def members(self) -> tuple[bytes, ...]:
        return self.view.members


class Rounds:
    """This node's windows and their agreement rounds (module docstring). Never raises for bad
    input: a bad message is counted in ``stats`` and dropped."""

    def __init__(self, key: ValidatorKey, views: Views, intake: Intake, settle: Settlement,
                 stats: NodeStats, clock: Clock, opened: OpenedHaves, *,
                 sign: Callable[[Attestation], tuple[Attestation, bytes]], domain: Domain,
                 grace_s: float, round_timeout_s: float, collect_s: float,
                 agreement_topic: str) -> None:
        self.key = key
        self.address = key.address
        self.domain = domain
        self.grace_s = grace_s
        self.round_timeout_s = round_timeout_s
        self.collect_s = collect_s
        self.stats = stats
        self.windows: dict[WindowKey, Window] = {}
        self.agreements: dict[WindowKey, Agreement] = {}
        self._views = views
        self._intake = intake
        self._settle = settle
        self._clock = clock
        self._opened = opened  # have envelopes already opened (this node's own go in too)
        self._sign = sign  # the node's (a seam for fault-injection tests)
        self._topic = agreement_topic

    # --- windows ----------------------------------------------------------------------------

    def open_window(self, key: WindowKey) -> Window | None:
        """The window ``key`` this node's own have is being filled in for, made when first
        needed; None once that have is sent (or the window settled)."""
        if key in self._settle.done:
            return None
        ag = self.agreements.get(key)
        if ag is not None and ag.mine is not None:
            return None
        window = self.windows.get(key)
        if window is None:
            terms = self._views.projects[key.project]  # a key is made only for a known project
            window = Window(self._views.window_end(key) + self.grace_s, key.window_start,
                            terms.window_seconds)
            self.windows[key] = window
        return window

    def close(self, key: WindowKey, out: list[Outbound]) -> None:
        """This node's view of the window is final: send its have and start agreeing."""
        window = self.windows.pop(key, None) or Window(0.0)
        window.open = False
        ag = self.agreement(key)
        if ag is None or ag.mine is not None:
            return
        now = self._clock.now
        have = Have(key, tuple(sorted(window.leaves.items())), window.rejected)
        ag.mine = SignedHave(have, self.address, seal(self.key, have.encode()))
        self._opened.put(ag.mine)  # it comes back inside proposals
        ag.haves[self.address] = ag.mine
        ag.due_at = now
        if not ag.haves.keys() - {self.address} and ag.proposal is None:
            ag.round_started = ag.timer_from = now
        self._progress(ag)
        out.append(Outbound(self._topic, ag.mine.envelope))
        self.lead(key, ag, out)
        self.try_sign(key, ag, out)

    def end(self, key: WindowKey) -> Agreement | None:
        """The window is settled: forget its window and agreement (returned, if any)."""
        ag = self.agreements.pop(key, None)
        window = self.windows.pop(key, None)
        if window is not None:
            window.open = False
        return ag

    def open_count(self) -> int:
        """Windows open or being agreed on (a gauge)."""
        return len(self.windows) + len(self.agreements)

    # --- timers -----------------------------------------------------------------------------

    def tick(self, now: float, out: list[Outbound]) -> None:
        """Close the windows that are due, time rounds out (a new round re-sends this node's
        have), and let each round's leader propose once it can."""
        for key in [k for k, w in self.windows.items() if w.due <= now]:
            self.close(key, out)
        for key, ag in list(self.agreements.items()):
            if ag.mine is None and now >= self._views.window_end(key) + self.grace_s:
                self.close(key, out)  # peers are attesting a window this node saw nothing of
            if ag.mine is not None and now >= self._deadline(ag):
                self.stats.rounds_timed_out += 1
                ag.round += 1
                ag.round_started = ag.timer_from = now
                out.append(Outbound(self._topic, ag.mine.envelope))
            self.lead(key, ag, out)

    def add_deadlines(self, times: list[float]) -> None:
        """Append to ``times`` when :meth:`tick` has something to do."""
        times.extend([w.due for w in self.windows.values()])
        for key, ag in self.agreements.items():
            if ag.mine is None:
                times.append(self._views.window_end(key) + self.grace_s)
                continue
            times.append(self._deadline(ag))
            collect = ag.round_started + self.collect_s
            if ag.proposed_round < ag.round and collect > self._clock.now \
                    and self._is_leader(ag):
                times.append(collect)

    def _timeout(self, round_: int) -> float:
        return self.round_timeout_s * min(1 << min(round_, 3), 8)

    def _deadline(self, ag: Agreement) -> float:
        """When the current round times out at this node. Until it holds k haves (its own
        among them) no leader can propose: the capped timeout (only to re-broadcast haves).
        From then on the round's timeout plus twice ``spread``, how long after its own have
        the k-th arrived (peers that are that far behind are as late again with the proposal
        and with their signatures), counted from the k-th have and again from the round's
        proposal; never more than the capped timeout."""
        cap = self._timeout(3)
        if ag.spread is None:
            return ag.timer_from + cap
        return ag.timer_from + min(self._timeout(ag.round) + 2 * ag.spread, cap)

    def _progress(self, ag: Agreement) -> None:
        """Restart the round's timer on progress, a bounded number of times: once when this
        node first holds k haves (its own among them), once per round at its proposal."""
        now = self._clock.now
        if ag.spread is None and ag.mine is not None and \
                len(ag.haves) >= ag.validators.threshold:
            ag.spread = 0.0 if ag.due_at is None else max(0.0, now - ag.due_at)
            ag.timer_from = max(ag.timer_from, now)
        if ag.proposal is not None and ag.proposal.round == ag.round \
                and ag.timer_round < ag.round:
            ag.timer_round = ag.round
            ag.timer_from = max(ag.timer_from, now)

    # --- agreeing ---------------------------------------------------------------------------

    def agreement(self, key: WindowKey) -> Agreement | None:
        """The window's agreement, made when first needed; None for a settled window, an
        unknown project, a window without a methodology term, or a window whose set does not
        have this node as a member (it takes no part in it)."""
        ag = self.agreements.get(key)
        if ag is None and key not in self._settle.done:
            view = self._views.view(key)
            if view is None or self.address not in view.validators.members:
                return None
            now = self._clock.now
            ag = Agreement(view, round_started=now, timer_from=now)
            self.agreements[key] = ag
        return ag

    def _is_leader(self, ag: Agreement) -> bool:
        return leader(ag.members, ag.id, ag.round) == self.address

    def lead(self, key: WindowKey, ag: Agreement, out: list[Outbound]) -> None:
        """Propose, if this node leads ``ag``'s round and holds every reading of k haves
        (fetching what it lacks from their senders, once per round)."""
        if ag.mine is None or ag.proposed_round >= ag.round or not self._is_leader(ag):
            return
        intake = self._intake
        complete: list[tuple[SignedHave, list[int]]] = []
        lacking: list[tuple[SignedHave, list[int]]] = []
        for signer in sorted(ag.haves):
            have = ag.haves[signer]
            missing = intake.lacking(key.device, have.have.leaves)
            (lacking if missing else complete).append((have, missing))
        k, n = ag.validators.threshold, len(ag.members)
        if len(complete) < k:
            if lacking and ag.fetch_round < ag.round:
                ag.fetch_round = ag.round
                for have, missing in lacking:
                    for i in range(0, len(missing), MAX_FETCH):
                        out.append(Outbound(self._topic, Fetch(
                            key.device, tuple(missing[i:i + MAX_FETCH]), have.signer).encode()))
            return
        if len(complete) < n and self._clock.now < ag.round_started + self.collect_s:
            return  # give the other haves a moment: a fuller union censors nothing
        haves = tuple(h for h, _ in complete)
        union = agreed_readings(h.have for h in haves)
        everyone = set.intersection(*(set(h.have.leaves) for h in haves))
        store = intake.device_store(key.device)
        extra = tuple(store[s].signed for s, leaf in union.items() if (s, leaf) not in everyone)
        boundary = None
        if union:
            before = intake.device_store(key.device).get(next(iter(union)) - 1)
            if before is not None and before.reading.ts_ms < key.window_start * 1000:
                boundary = before.signed
        proposal = Proposal(key, ag.round, haves, extra, boundary)
        ag.proposed_round = ag.round
        out.append(Outbound(self._topic, seal(self.key, proposal.encode())))
        ag.proposal = proposal
        self._progress(ag)
        self.try_sign(key, ag, out)

    def on_have(self, sender: bytes, message: SignedHave, out: list[Outbound]) -> None:
        """A peer's have for a window not settled here."""
        key = message.have.key
        ag = self.agreement(key)
        if ag is not None and sender not in ag.validators.members:
            self.stats.count_dropped("not_a_member")  # a member of another window's set
        elif ag is not None:
            ag.haves[sender] = message
            self._progress(ag)
            if ag.mine is None and \
                    self._clock.now >= self._views.window_end(key) + self.grace_s:
                self.close(key, out)  # a window this node saw nothing of, or is late on
            self.lead(key, ag, out)

    def on_proposal(self, sender: bytes, proposal: Proposal, out: list[Outbound]) -> None:
        """A proposal: checked (from the round's leader, for a round not below this node's,
        k distinct members' haves about the window), then its readings verified."""
        key = proposal.key
        ag = self.agreement(key)
        if ag is None:
            return
        if leader(ag.members, ag.id, proposal.round) != sender:
            self.stats.count_dropped("not_leader")
            return
        if proposal.round < ag.round:
            self.stats.count_dropped("old_round")
            return
        signers = [h.signer for h in proposal.haves]
        if (len(set(signers)) != len(signers) or len(signers) < ag.validators.threshold
                or any(s not in ag.validators.members for s in signers)
                or any(h.have.key != key for h in proposal.haves)
                or not self._boundary_decodes(key, proposal)):
            self.stats.count_dropped("bad_proposal")
            return
        now = self._clock.now
        if proposal.round > ag.round:
            ag.round, ag.round_started = proposal.round, now
            ag.timer_from = now
        for have in proposal.haves:
            ag.haves.setdefault(have.signer, have)
        ag.proposal = proposal
        self._progress(ag)
        if ag.mine is None and now >= self._views.window_end(key) + self.grace_s:
            self.close(key, out)
        intake = self._intake
        for signed in (*proposal.readings, *(() if proposal.boundary is None
                                             else (proposal.boundary,))):
            intake.ingest(key.device, signed)
        intake.after_readings(key.device, out)

    @staticmethod
    def _boundary_decodes(key: WindowKey, proposal: Proposal) -> bool:
        """A proposal's boundary reading, if any, is a reading of the window's device (its
        signature and validity are checked as any reading's, when it is ingested)."""
        if proposal.boundary is None:
            return True
        try:
            return Reading.from_canonical(proposal.boundary.body).device == key.device
        except (EncodingError, ValueError, TypeError):
            return False

    def on_readings(self, device: str, out: list[Outbound]) -> None:
        """``device``'s readings arrived: sign or propose what waited for them."""
        for key, ag in list(self.agreements.items()):
            if key.device == device:
                self.try_sign(key, ag, out)
                self.lead(key, ag, out)

    def try_sign(self, key: WindowKey, ag: Agreement, out: list[Outbound]) -> None:
        """Sign the attestation of the round's proposal (once per round), once this node
        holds every reading it lists (fetching what it lacks from the leader, once)."""
        proposal = ag.proposal
        if proposal is None or ag.signed_round >= proposal.round or proposal.round != ag.round:
            return
        haves = [h.have for h in proposal.haves]
        union = agreed_readings(haves)
        wanted = list(union.items())
        if proposal.boundary is not None:
            wanted.append((Reading.from_canonical(proposal.boundary.body).seq,
                           leaf_hash(proposal.boundary.body)))
        missing = self._intake.lacking(key.device, wanted)
        if missing:
            if ag.fetch_round < proposal.round:
                ag.fetch_round = proposal.round
                target = leader(ag.members, ag.id, proposal.round)
                for i in range(0, len(missing), MAX_FETCH):
                    out.append(Outbound(self._topic, Fetch(
                        key.device, tuple(missing[i:i + MAX_FETCH]), target).encode()))
            return
        store = self._intake.device_store(key.device)
        readings = [store[s] for s in union]
        boundary = None
        if proposal.boundary is not None:
            boundary = store[wanted[-1][0]]
        try:
            att = window_attestation(
                project=key.project, device=key.device, window_start=key.window_start,
                window_seconds=ag.terms.window_seconds,
                methodology=ag.terms.methodology_terms(), model_hash=ag.terms.model_hash,
                readings=[(h.reading, h.signed.body) for h in readings],
                boundary=None if boundary is None else boundary.reading,
                rejected=agreed_rejected(haves), leaf_hashes=[h.leaf for h in readings])
        except ValueError:
            ag.signed_round = proposal.round  # a reading outside the window: never sign this
            self.stats.count_dropped("bad_proposal")
            return
        att, signature = self._sign(att)
        ag.signed_round = proposal.round
        ag.evidence[att.digest(self.domain)] = (tuple(h.signed for h in readings),
                                                None if boundary is None else boundary.signed,
                                                proposal.round)
        self.stats.attestations_signed += 1
        wire = att.to_wire()
        out.append(Outbound(self._topic, Sign(wire, signature).encode()))
        self._settle.on_sign(wire, signature, out)

    # --- a new schedule (validator/node.py, on_schedule) ------------------------------------

    def restart_from(self, horizon: int) -> list[WindowKey]:
        """Move each window from ``horizon`` on whose view changed to its next round under
        its new view (or drop it if this node is not a member of its new set); returns the
        windows moved, to :meth:`resume` once certificates waiting for the schedule are in."""
        restarted: list[WindowKey] = []
        for key, ag in list(self.agreements.items()):
            if key.window_start < horizon:
                continue
            view = self._views.view(key)
            if view == ag.view:
                continue
            if view is None or self.address not in view.validators.members:
                del self.agreements[key]  # not this node's window any more
                continue
            self.agreements[key] = self._restarted(ag, view)
            restarted.append(key)
        return restarted

    def _restarted(self, ag: Agreement, view: WindowView) -> Agreement:
        """``ag`` moved to its next round under ``view`` (the proposal and signature of its
        current round were made under the old view; one signature per round still holds),
        with this node's have and the haves of ``view``'s members."""
        now = self._clock.now
        fresh = Agreement(view, round=ag.round + 1, round_started=now, timer_from=now,
                          due_at=ag.due_at, mine=ag.mine, evidence=ag.evidence)
        fresh.haves = {s: h for s, h in ag.haves.items() if s in view.validators.members}
        self.stats.agreements_restarted += 1
        return fresh

    def resume(self, restarted: list[WindowKey], out: list[Outbound]) -> None:
        """Start the new round of each window :meth:`restart_from` moved (unless settled
        since): this node's have again, and a proposal if it leads."""
        for key in restarted:
            fresh = self.agreements.get(key)
            if fresh is not None:
                self._progress(fresh)
                if fresh.mine is not None:
                    out.append(Outbound(self._topic, fresh.mine.envelope))
                self.lead(key, fresh, out)

    def reopen(self, key: WindowKey, rejected: int, out: list[Outbound]) -> None:
        """Agree on ``key`` again (its certificate does not hold under the new schedule):
        its have is rebuilt from the readings this node holds for the window (the have it
        sent is gone with the window's state) and its rejected count. Scans the device's
        stored readings once."""
        seconds = self._views.window_end(key) - key.window_start
        start_ms, end_ms = key.window_start * 1000, (key.window_start + seconds) * 1000
        window = Window(self._clock.now, key.window_start, int(seconds), rejected=rejected,
                        open=False)
        for seq, held in self._intake.device_store(key.device).items():
            if start_ms <= held.reading.ts_ms < end_ms:
                window.leaves[seq] = held.leaf
        self.windows[key] = window
        self.close(key, out)  # nothing if this node is not a member of the window's set
