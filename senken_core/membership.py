"""Which validator set and which methodology term a window uses: the schedule rule (issue 4).

Governance changes the validator set (``ValidatorSet.sol``) and appends methodology terms
(``ProjectRegistry.sol``) on chain. Validators see a change when they next read the chain, each
at its own moment; what a window uses must not depend on that moment, or two honest validators
would count haves and signatures against different sets for one window. So the choice is made
from chain data alone (docs/protocol.md, section 8):

* **Validator set.** A change (``ValidatorSetChanged``: epoch e, members, threshold k) mined
  in a block with timestamp T is *activated* at ``A = T + activation_delay_s``. A window
  starting at W uses the set of the highest epoch whose activation is at or before W. On a grid
  of g seconds that is "from the window ``ceil(A / g) * g`` on" (the activation rounded up to
  the grid: :func:`first_window`): a window that had started before A keeps the set it started
  under, whatever its grid. The lowest epoch known is the set of every earlier window (the set
  the contract was deployed with governed everything before its first change).
* **Methodology term.** ``ProjectRegistry.mintTerms`` picks, for a window starting at W, the
  last term (in the order they were added) whose ``effectiveFrom`` is at or before W, and
  refuses a window before the first term; :meth:`Schedule.term_for` is that loop, and returns
  None where the contract reverts (``NoTermForWindow``). Terms carry no activation delay: the
  contract mints a window only under the term its ``effectiveFrom`` selects, so validators
  must use exactly that term (the contract refuses a term that starts before its own block).

A :class:`Schedule` is a value: a function of the changes and terms it holds, not of the
order they were observed in (:meth:`Schedule.merge` is commutative, associative and
idempotent), so validators that have seen the same chain data pick the same set and term for
every window. Pure: no web3, no clock; the validator's chain watcher (validator/chain.py)
builds schedules from what it reads.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

from senken_core.network import NetworkConfig, parse_address
from senken_core.quorum import ValidatorSet

__all__ = ["MethodologyTerm", "Schedule", "ValidatorSetChanged", "first_window"]


def first_window(activation: int, window_seconds: int) -> int:
    """The start of the first window on a ``window_seconds`` grid that starts at or after
    ``activation`` (Unix seconds): the activation rounded up to the grid."""
    if window_seconds <= 0:
        raise ValueError("window_seconds must be positive")
    return -(-activation // window_seconds) * window_seconds


@dataclass(frozen=True, slots=True)
class ValidatorSetChanged:
    """One ``ValidatorSetChanged`` event as the chain recorded it, with its block's timestamp.

    ``members`` are 20-byte addresses (kept sorted); ``threshold`` is k."""

    epoch: int
    members: tuple[bytes, ...]
    threshold: int
    block_timestamp: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(sorted(self.members)))
        if self.epoch < 0 or self.block_timestamp < 0:
            raise ValueError("epoch and block timestamp must be non-negative")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"epoch {self.epoch}: a member is listed twice")
        ValidatorSet.of(self.members, self.threshold)  # 20-byte members, 1 <= k <= n

    @property
    def validators(self) -> ValidatorSet:
        return ValidatorSet.of(self.members, self.threshold)

    def activation(self, activation_delay_s: int) -> int:
        """When windows start using this set (before rounding up to a grid)."""
        return self.block_timestamp + activation_delay_s


@dataclass(frozen=True, slots=True, order=True)
class MethodologyTerm:
    """One ``ProjectRegistry`` term: for windows starting at or after ``effective_from``."""

    effective_from: int
    methodology_version: int
    grid_ef_g_per_kwh: int

    def __post_init__(self) -> None:
        if self.effective_from < 0 or not 0 < self.methodology_version < 2**32 \
                or not 0 <= self.grid_ef_g_per_kwh <= 10_000:
            raise ValueError(f"methodology term {self}: effective_from >= 0, version 1 .. "
                             "2**32 - 1, grid EF 0 .. 10000 g/kWh")


@dataclass(frozen=True, slots=True)
class Schedule:
    """Validator-set changes (by epoch) and methodology terms (per project, in the order the
    registry holds them), and the rule that picks a window's set and term (module docstring).

    Build with :meth:`of` (checks the chain's invariants, raises ValueError) or
    :meth:`from_network` (the network file's one set and one term per project, in force for
    every window: the behaviour without a chain)."""

    activation_delay_s: int
    changes: tuple[ValidatorSetChanged, ...]
    terms: tuple[tuple[str, tuple[MethodologyTerm, ...]], ...]
    _activations: tuple[int, ...] = field(default=(), compare=False, repr=False)
    _sets: tuple[ValidatorSet, ...] = field(default=(), compare=False, repr=False)
    _by_project: Mapping[str, tuple[MethodologyTerm, ...]] = field(
        default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.activation_delay_s < 0:
            raise ValueError("activation_delay_s must be non-negative")
        if not self.changes:
            raise ValueError("a schedule needs at least one validator set")
        epochs = [c.epoch for c in self.changes]
        if epochs != sorted(set(epochs)):
            raise ValueError("set changes must be in strictly increasing epoch order")
        for before, after in pairwise(self.changes):
            if after.block_timestamp < before.block_timestamp:
                raise ValueError(f"epoch {after.epoch} was mined before epoch {before.epoch}")
        projects = [p for p, _ in self.terms]
        if projects != sorted(set(projects)):
            raise ValueError("terms must be listed once per project, sorted by project id")
        for project, terms in self.terms:
            for before_t, after_t in pairwise(terms):
                if after_t.methodology_version <= before_t.methodology_version \
                        or after_t.effective_from <= before_t.effective_from:
                    raise ValueError(f"{project}: versions and effective times of its terms "
                                     "must strictly increase (ProjectRegistry's rule)")
        set_ = object.__setattr__
        set_(self, "_activations", tuple(c.activation(self.activation_delay_s)
                                         for c in self.changes))
        set_(self, "_sets", tuple(c.validators for c in self.changes))
        set_(self, "_by_project", dict(self.terms))

    @classmethod
    def of(cls, changes: Iterable[ValidatorSetChanged],
           terms: Mapping[str, Iterable[MethodologyTerm]],
           activation_delay_s: int) -> Schedule:
        """A schedule of ``changes`` (any order; an epoch given twice must be the same change)
        and ``terms`` (per project, in the registry's order). Raises ValueError."""
        by_epoch: dict[int, ValidatorSetChanged] = {}
        for change in changes:
            if by_epoch.setdefault(change.epoch, change) != change:
                raise ValueError(f"two different changes for epoch {change.epoch}")
        return cls(activation_delay_s, tuple(by_epoch[e] for e in sorted(by_epoch)),
                   tuple((p, tuple(t)) for p, t in sorted(terms.items())))

    @classmethod
    def from_network(cls, network: NetworkConfig, activation_delay_s: int = 0) -> Schedule:
        """The network file's set (epoch 0) and each project's one term, for every window."""
        change = ValidatorSetChanged(0, tuple(parse_address(a) for a in network.validators),
                                     network.threshold, 0)
        return cls.of([change], {p.id: [MethodologyTerm(0, p.methodology_version,
                                                        p.grid_ef_g_per_kwh)]
                                 for p in network.projects}, activation_delay_s)

    def merge(self, other: Schedule) -> Schedule:
        """Everything both schedules know. Commutative, associative, idempotent; raises
        ValueError when they disagree (an epoch or a project's term version with different
        contents, or different activation delays)."""
        if other.activation_delay_s != self.activation_delay_s:
            raise ValueError("schedules with different activation delays")
        terms: dict[str, dict[int, MethodologyTerm]] = {}
        for project, listed in (*self.terms, *other.terms):
            known = terms.setdefault(project, {})
            for term in listed:
                if known.setdefault(term.methodology_version, term) != term:
                    raise ValueError(f"{project}: two different terms for version "
                                     f"{term.methodology_version}")
        return Schedule.of((*self.changes, *other.changes),
                           {p: [t[v] for v in sorted(t)] for p, t in terms.items()},
                           self.activation_delay_s)

    # --- the rule ------------------------------------------------------------------------

    def change_for(self, window_start: int) -> ValidatorSetChanged:
        """The set change in force for the window starting at ``window_start``."""
        return self.changes[max(bisect_right(self._activations, window_start) - 1, 0)]

    def validators_for(self, window_start: int) -> ValidatorSet:
        """The validator set (members, k) of the window starting at ``window_start``."""
        return self._sets[max(bisect_right(self._activations, window_start) - 1, 0)]

    def term_for(self, project: str, window_start: int) -> MethodologyTerm | None:
        """The methodology term of ``project`` in force for the window starting at
        ``window_start``, as ``ProjectRegistry.mintTerms`` picks it (the last term added whose
        ``effective_from`` is at or before the window's start); None for an unknown project
        or a window before its first term."""
        terms = self._by_project.get(project, ())
        for term in reversed(terms):
            if term.effective_from <= window_start:
                return term
        return None

    def first_difference(self, other: Schedule) -> int | None:
        """The earliest window start at which ``self`` and ``other`` may pick a different set
        or term (every window before it gets the same from both); None if they hold the same
        changes and terms. 0 when their lowest epochs differ (that set governs every earlier
        window)."""
        if self.activation_delay_s != other.activation_delay_s:
            return 0
        mine, theirs = set(self.changes), set(other.changes)
        starts: list[int] = []
        if mine != theirs:
            if self.changes[0] != other.changes[0]:
                return 0
            starts += [c.activation(self.activation_delay_s) for c in mine ^ theirs]
        for project in {p for p, _ in self.terms} | {p for p, _ in other.terms}:
            a = set(self._by_project.get(project, ()))
            b = set(other._by_project.get(project, ()))
            starts += [t.effective_from for t in a ^ b]
        return min(starts, default=None)

    # --- views ---------------------------------------------------------------------------

    @property
    def latest(self) -> ValidatorSetChanged:
        """The change with the highest epoch (the chain's current set)."""
        return self.changes[-1]

    def members_ever(self) -> frozenset[bytes]:
        """Every address that is a member of some set in the schedule."""
        return frozenset(m for c in self.changes for m in c.members)

    def activation_of(self, epoch: int) -> int | None:
        """When windows start using ``epoch``'s set (None for an epoch not in the schedule;
        the lowest epoch's set also governs every earlier window)."""
        for change, at in zip(self.changes, self._activations, strict=True):
            if change.epoch == epoch:
                return at
        return None
