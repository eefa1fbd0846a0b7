"""The schedule rule (senken_core.membership): which validator set and methodology term a
window uses, from chain data alone, whatever order and moment the changes were seen in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core.membership import MethodologyTerm, Schedule, ValidatorSetChanged, first_window
from senken_core.secp256k1 import ValidatorKey
from tests.support.validator_sim import network

ADDRESSES = [bytes([i + 1]) * 20 for i in range(8)]


def change(epoch: int, n: int, k: int, t: int) -> ValidatorSetChanged:
    return ValidatorSetChanged(epoch, tuple(ADDRESSES[:n]), k, t)


@st.composite
def histories(draw: st.DrawFn) -> list[ValidatorSetChanged]:
    """A chain's set changes: epochs 1, 2, ... mined at non-decreasing block timestamps."""
    count = draw(st.integers(1, 6))
    t = draw(st.integers(0, 10**9))
    out = []
    for epoch in range(1, count + 1):
        t += draw(st.integers(0, 5000))
        n = draw(st.integers(1, len(ADDRESSES)))
        out.append(change(epoch, n, draw(st.integers(n // 2 + 1, n)), t))
    return out


@given(t=st.integers(0, 2**40), delay=st.integers(0, 10**6), grid=st.integers(1, 86400),
       offset=st.integers(-5, 5))
def test_a_change_applies_from_its_activation_rounded_up_to_the_window_grid(
        t: int, delay: int, grid: int, offset: int) -> None:
    old, new = change(1, 4, 3, max(0, t - 10)), change(2, 5, 3, t)
    schedule = Schedule.of([old, new], {}, delay)
    first = first_window(t + delay, grid)
    assert first % grid == 0 and t + delay <= first < t + delay + grid
    window = first + offset * grid
    expected = new if window >= first else old
    assert schedule.change_for(window) == expected
    assert schedule.validators_for(window) == expected.validators


@given(history=histories(), delay=st.integers(0, 10**5), window=st.integers(0, 2**34))
def test_a_window_uses_the_highest_epoch_activated_at_or_before_its_start(
        history: list[ValidatorSetChanged], delay: int, window: int) -> None:
    schedule = Schedule.of(history, {}, delay)
    active = [c for c in history if c.block_timestamp + delay <= window]
    assert schedule.change_for(window) == (active[-1] if active else history[0])
    # windows only ever move on to later sets
    assert schedule.change_for(window + 1).epoch >= schedule.change_for(window).epoch


@settings(max_examples=200)
@given(history=histories(), data=st.data())
def test_the_schedule_does_not_depend_on_how_the_changes_were_observed(
        history: list[ValidatorSetChanged], data: st.DataObject) -> None:
    """Two validators polling at different moments see the changes in different batches and
    orders (a late poller sees several at once); the schedule and every window's set are the
    same."""
    delay = 600
    whole = Schedule.of(history, {}, delay)
    order = data.draw(st.permutations(history))
    cuts = sorted(data.draw(st.lists(st.integers(1, len(order)), max_size=3)))
    batches = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True) if b > a]
    seen = Schedule.of(batches[0], {}, delay)
    for batch in batches[1:]:
        seen = seen.merge(Schedule.of(batch, {}, delay))
    assert seen == whole
    assert seen.merge(whole) == whole and whole.merge(seen) == whole  # idempotent
    for w in data.draw(st.lists(st.integers(0, 2**34), max_size=20)):
        assert seen.validators_for(w) == whole.validators_for(w)


def test_the_first_set_governs_every_earlier_window() -> None:
    schedule = Schedule.of([change(1, 4, 3, 1000), change(2, 5, 3, 2000)], {}, 60)
    assert schedule.change_for(0).epoch == 1
    assert schedule.change_for(2059).epoch == 1 and schedule.change_for(2060).epoch == 2
    assert schedule.activation_of(2) == 2060 and schedule.activation_of(7) is None
    assert schedule.members_ever() == frozenset(ADDRESSES[:5])


def test_changes_in_one_block_take_the_later_epoch() -> None:
    schedule = Schedule.of([change(1, 4, 3, 0), change(2, 5, 3, 500), change(3, 5, 4, 500)],
                           {}, 0)
    assert schedule.change_for(500).epoch == 3


def mint_terms(terms: list[MethodologyTerm], window_start: int) -> MethodologyTerm | None:
    """ProjectRegistry.mintTerms, transcribed: from the last term added backwards, the first
    whose effectiveFrom is at or before the window's start."""
    for i in range(len(terms), 0, -1):
        if terms[i - 1].effective_from <= window_start:
            return terms[i - 1]
    return None


@given(starts=st.lists(st.integers(0, 2**40), min_size=1, max_size=6, unique=True),
       window=st.integers(0, 2**41))
def test_the_term_in_force_is_the_one_the_registry_mints_under(starts: list[int],
                                                               window: int) -> None:
    terms = [MethodologyTerm(t, v + 1, 300 + v) for v, t in enumerate(sorted(starts))]
    schedule = Schedule.of([change(1, 4, 3, 0)], {"pv-plant-7": terms}, 0)
    assert schedule.term_for("pv-plant-7", window) == mint_terms(terms, window)
    assert schedule.term_for("pv-plant-7", terms[0].effective_from - 1) is None  # reverts
    assert schedule.term_for("another", window) is None


def test_the_network_file_is_one_set_and_one_term_for_every_window() -> None:
    keys = [ValidatorKey(bytes([i + 1]) * 32) for i in range(4)]
    schedule = Schedule.from_network(network(keys, 3))
    assert schedule.validators_for(0) == network(keys, 3).validator_set()
    assert schedule.validators_for(2**40) == schedule.validators_for(0)
    assert schedule.term_for("pv-plant-7", 0) == MethodologyTerm(0, 1, 691)


def test_inconsistent_chain_data_is_refused() -> None:
    with pytest.raises(ValueError, match="epoch 2"):
        Schedule.of([change(1, 4, 3, 10), change(2, 4, 3, 5)], {}, 0)  # mined back in time
    with pytest.raises(ValueError, match="two different changes"):
        Schedule.of([change(1, 4, 3, 10), change(1, 5, 3, 10)], {}, 0)
    with pytest.raises(ValueError, match="strictly increase"):
        Schedule.of([change(1, 4, 3, 0)], {"p": [MethodologyTerm(10, 2, 1),
                                                 MethodologyTerm(20, 1, 1)]}, 0)
    with pytest.raises(ValueError, match="threshold"):
        change(1, 4, 5, 0)
    with pytest.raises(ValueError, match="activation delays"):
        Schedule.of([change(1, 4, 3, 0)], {}, 0).merge(Schedule.of([change(1, 4, 3, 0)], {}, 1))
    with pytest.raises(ValueError, match="version 1"):
        a = Schedule.of([change(1, 4, 3, 0)], {"p": [MethodologyTerm(10, 1, 400)]}, 0)
        a.merge(Schedule.of([change(1, 4, 3, 0)], {"p": [MethodologyTerm(10, 1, 500)]}, 0))


def test_members_are_kept_sorted_so_equal_sets_compare_equal() -> None:
    shuffled = ADDRESSES[:5]
    random.Random(3).shuffle(shuffled)
    assert ValidatorSetChanged(1, tuple(shuffled), 3, 0) == change(1, 5, 3, 0)
