"""The chain watcher: reads the validator set and the methodology terms from the contracts and
hands the node a :class:`~senken_core.membership.Schedule`.

The reading itself is :class:`senken_core.chain_schedule.ChainWatcher`, shared with the ledger
(which must build the same schedule); its docstring has what one ``poll`` reads. This module
gives it the validator's logger and keeps ``[chain]`` an import-time requirement: importing it
without web3 raises ImportError, which ``validator.app`` turns into "install senken[chain]".
"""

from __future__ import annotations

import logging

import web3  # noqa: F401  (the [chain] extra: see the module docstring)

from senken_core.chain_schedule import LOG_CHUNK_BLOCKS, ChainError
from senken_core.chain_schedule import ChainWatcher as _SharedWatcher

__all__ = ["LOG_CHUNK_BLOCKS", "ChainError", "ChainWatcher"]


class ChainWatcher(_SharedWatcher):
    """Reads the schedule from the contracts (:mod:`senken_core.chain_schedule`); not
    thread-safe: one poll at a time."""

    log = logging.getLogger(__name__)
