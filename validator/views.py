"""Membership (docs/protocol.md, section 8): what the governance schedule and the network fix
for each window, its *view*.

A window's view is its attestation id, the project's terms with the methodology term in force
for the window's start, the validator set in force for it and that set's members sorted. Every
decision a node makes about a window uses its view (validator/rounds.py: the leader, the k
haves a proposal needs and whose haves count; validator/settle.py: whose signatures count, how
many make a certificate, the term an attestation must be under). :class:`Views` also holds the
project grid (a reading's window, a window's end), which no schedule changes.

The node (validator/node.py) swaps the schedule in with :meth:`Views.use`; views are computed
on demand (cached per term and per set), so a new schedule takes effect for every window at
once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from senken_core.attestation import ATTESTATION_KEY_TYPE
from senken_core.membership import MethodologyTerm, Schedule
from senken_core.network import ProjectConfig
from senken_core.quorum import ValidatorSet
from validator.agreement import WindowKey

__all__ = ["Views", "WindowView"]


@dataclass(frozen=True, slots=True)
class WindowView:
    """What the schedule fixes for one window: its attestation id, the project's terms with
    the methodology term in force, the validator set and its members sorted."""

    id: bytes
    terms: ProjectConfig
    validators: ValidatorSet
    members: tuple[bytes, ...]


class Views:
    """The schedule in force and the network's projects, as each window sees them."""

    def __init__(self, schedule: Schedule, projects: dict[str, ProjectConfig]) -> None:
        self.projects = projects  # project id -> its network-file terms (the grid)
        self.schedule = schedule
        self.known = schedule.members_ever()  # whose messages are looked at all
        self._terms_cache: dict[tuple[str, MethodologyTerm], ProjectConfig] = {}
        self._members_cache: dict[ValidatorSet, tuple[bytes, ...]] = {}

    def use(self, schedule: Schedule) -> None:
        """Take ``schedule`` from now on (for every window, settled or not)."""
        self.schedule = schedule
        self.known = schedule.members_ever()

    def view(self, key: WindowKey) -> WindowView | None:
        """What the schedule fixes for the window ``key`` (None: an unknown project, or a
        window before the project's first methodology term, which the contract would refuse
        to credit)."""
        project = self.projects.get(key.project)
        term = self.schedule.term_for(key.project, key.window_start)
        if project is None or term is None:
            return None
        terms = self._terms_cache.get((project.id, term))
        if terms is None:
            terms = replace(project, methodology_version=term.methodology_version,
                            grid_ef_g_per_kwh=term.grid_ef_g_per_kwh)
            self._terms_cache[(project.id, term)] = terms
        validators = self.schedule.validators_for(key.window_start)
        members = self._members_cache.get(validators)
        if members is None:
            members = self._members_cache[validators] = tuple(sorted(validators.members))
        wid = ATTESTATION_KEY_TYPE.hash_struct({
            "project": key.project, "device": key.device, "windowStart": key.window_start,
            "windowSeconds": terms.window_seconds,
            "methodologyVersion": terms.methodology_version})
        return WindowView(wid, terms, validators, members)

    def window_key(self, project: str, device: str, ts_ms: int) -> WindowKey | None:
        """The window of ``project``'s grid a reading taken at ``ts_ms`` belongs to (None: an
        unknown project)."""
        terms = self.projects.get(project)
        if terms is None:
            return None
        start = ts_ms // 1000 // terms.window_seconds * terms.window_seconds
        return WindowKey(project, device, start)

    def window_end(self, key: WindowKey) -> float:
        """When the window ``key`` ends (its start, for an unknown project)."""
        terms = self.projects.get(key.project)
        return float(key.window_start + (terms.window_seconds if terms else 0))
