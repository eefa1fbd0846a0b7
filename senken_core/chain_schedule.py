"""Reading the schedule from the chain: the validator set and the methodology terms, as the
contracts hold them, turned into a :class:`~senken_core.membership.Schedule` (an I/O adapter
around web3, shared by the validator's chain watcher and the ledger).

web3 is imported inside the functions that use it, never at import time: senken_core is also
the edge agent's core, and the agent must not load web3 (a test checks it). A caller hands in
a ``web3.Web3`` (or :meth:`ChainWatcher.connect` builds one, which needs the ``chain`` extra).

Every :meth:`ChainWatcher.poll` / :meth:`ChainWatcher.read` (blocking; call it on a worker
thread)::

    head   = latest block - confirmations
    epoch  = ValidatorSet.epoch() at head            unchanged: no new set change, skip the logs
    logs   = ValidatorSetChanged from the last block read + 1 to head (chunked), each with its
             block's timestamp -> ValidatorSetChanged(epoch, members, k, T)
    terms  = ProjectRegistry.terms(id) at head for each project of the network file that the
             registry knows (projectIds()); a project it does not know keeps the file's terms
    -> Schedule.of(every change seen so far, terms, activation_delay_s)

``poll`` returns that schedule if it differs from the last one it returned, else None (the
validator's use); ``read`` returns it with the head block's number and timestamp, always
(:class:`ScheduleRead`, the ledger's use: how far the chain has been read decides which
windows' schedule is final, docs/protocol.md section 8).

Everything is read at one block (``head``), so a read sees one consistent chain state. The
addresses default to the credit contract's ``validatorSet()`` and ``registry()`` (the network
file's ``credit_contract``), read once, and the chain id must be the network file's (the
EIP-712 domain validators sign under). Library errors (connection, timeout, revert, a missing
contract) become :class:`ChainError`, a :class:`~senken_core.errors.SenkenError`; a failed read
changes nothing and the next one starts where the last good one stopped. Blocks are read once:
a reorganisation deeper than ``confirmations`` is not seen, so on a chain that reorganises set
``confirmations`` to its finality depth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from senken_core.credit_contracts import load_artifact
from senken_core.errors import SenkenError
from senken_core.membership import MethodologyTerm, Schedule, ValidatorSetChanged
from senken_core.network import NetworkConfig

if TYPE_CHECKING:
    from web3 import Web3

__all__ = ["LOG_CHUNK_BLOCKS", "ChainError", "ChainWatcher", "ScheduleRead"]

LOG_CHUNK_BLOCKS = 10_000  # blocks per eth_getLogs request (providers cap the range)

T = TypeVar("T")


class ChainError(SenkenError):
    """The chain could not be read (``where``: the JSON-RPC URL or "web3"); the message says
    what failed and what to check."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"chain {where}: {message}")
        self.where = where


@dataclass(frozen=True, slots=True)
class ScheduleRead:
    """The schedule as the chain held it at block ``block``, mined at ``block_timestamp``."""

    schedule: Schedule
    block: int
    block_timestamp: int


class ChainWatcher:
    """Reads the schedule from the contracts (module docstring). Not thread-safe: one read at
    a time. ``log``: where it reports set changes and registry mismatches (a subclass names
    its component's logger)."""

    log: ClassVar[logging.Logger] = logging.getLogger(__name__)

    def __init__(self, w3: Web3, network: NetworkConfig, *, activation_delay_s: int,
                 validator_set: str | None = None, project_registry: str | None = None,
                 confirmations: int = 0, from_block: int = 0, where: str = "web3") -> None:
        self.w3 = w3
        self.network = network
        self.activation_delay_s = activation_delay_s
        self.confirmations = confirmations
        self.where = where
        self._addresses = (validator_set, project_registry)
        self._set: Any = None  # the contracts, once resolved
        self._registry: Any = None
        self._changes: dict[int, ValidatorSetChanged] = {}
        self._epoch: int | None = None
        self._next_block = from_block
        self._timestamps: dict[int, int] = {}
        self._warned: set[str] = set()
        self._checked: set[str] = set()  # projects whose registry entry matched the file
        self.last: Schedule | None = None  # the last schedule returned by poll or read

    @classmethod
    def connect(cls, url: str, network: NetworkConfig, *, timeout_s: float = 10.0,
                **kw: Any) -> ChainWatcher:
        """A watcher over JSON-RPC at ``url``, each request limited to ``timeout_s``. No I/O
        here: the first :meth:`poll` connects. Raises ImportError without web3."""
        from web3 import Web3

        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout_s},
                                    exception_retry_configuration=None))
        return cls(w3, network, where=url, **kw)

    def poll(self) -> Schedule | None:
        """Read the chain; the new schedule if it differs from the last one returned, else
        None. Raises :class:`ChainError` (nothing is changed then). Blocking."""
        found = self._mapped(self._read_head)
        if found is None:
            return None
        schedule = found[1]
        if schedule == self.last:
            return None
        self.last = schedule
        return schedule

    def read(self) -> ScheduleRead | None:
        """Read the chain; the schedule at the head read and that block's number and
        timestamp (None while the chain has fewer than ``confirmations`` blocks). Raises
        :class:`ChainError` (nothing is changed then). Blocking."""

        def go() -> ScheduleRead | None:
            found = self._read_head()
            if found is None:
                return None
            head, schedule = found
            # not cached (_timestamp keeps the set changes' blocks): one head per read
            timestamp = int(self.w3.eth.get_block(head)["timestamp"])
            return ScheduleRead(schedule, head, timestamp)

        read = self._mapped(go)
        if read is not None:
            self.last = read.schedule
        return read

    def _mapped(self, fn: Callable[[], T]) -> T:
        """``fn()`` with library errors mapped to :class:`ChainError`."""
        from web3.exceptions import Web3Exception

        try:
            return fn()
        except ChainError:
            raise
        except (Web3Exception, OSError, ValueError, TimeoutError) as exc:
            raise ChainError(self.where, f"{type(exc).__name__}: {exc}; check that the node "
                             "answers and that [chain] names the deployed contracts") from exc

    # --- one read ----------------------------------------------------------------------

    def _read_head(self) -> tuple[int, Schedule] | None:
        if self._set is None:
            self._resolve()
        head = self.w3.eth.block_number - self.confirmations
        if head < 0:
            return None
        epoch = int(self._set.functions.epoch().call(block_identifier=head))
        if epoch != self._epoch:
            self._read_changes(head)
            if epoch not in self._changes:
                raise ChainError(self.where, f"no ValidatorSetChanged event for epoch {epoch} "
                                 f"from block {self._next_block}; set [chain] from_block to "
                                 "the ValidatorSet's deployment block or earlier")
            self._epoch = epoch
        self._next_block = max(self._next_block, head + 1)
        return head, Schedule.of(self._changes.values(), self._read_terms(head),
                                 self.activation_delay_s)

    def _resolve(self) -> None:
        chain_id = self.w3.eth.chain_id
        if chain_id != self.network.chain_id:
            raise ChainError(self.where, f"chain id {chain_id}, but the network file says "
                             f"{self.network.chain_id}: this is not the network's chain")
        set_address, registry_address = self._addresses
        if set_address is None or registry_address is None:
            credits = self._contract("SenkenCredits", self.network.credit_contract)
            set_address = set_address or credits.functions.validatorSet().call()
            registry_address = registry_address or credits.functions.registry().call()
        validator_set = self._contract("ValidatorSet", str(set_address))
        self._registry = self._contract("ProjectRegistry", str(registry_address))
        self._set = validator_set  # last: a failure above leaves the watcher unresolved

    def _contract(self, name: str, address: str) -> Any:
        from eth_utils.address import to_checksum_address

        checksum = to_checksum_address(address)
        if not self.w3.eth.get_code(checksum):
            raise ChainError(self.where, f"no contract at {checksum} ({name}); check the "
                             "network file's credit_contract and [chain]")
        return self.w3.eth.contract(address=checksum, abi=load_artifact(name).abi)

    def _read_changes(self, head: int) -> None:
        event = self._set.events.ValidatorSetChanged()
        for start in range(self._next_block, head + 1, LOG_CHUNK_BLOCKS):
            end = min(head, start + LOG_CHUNK_BLOCKS - 1)
            for entry in event.get_logs(from_block=start, to_block=end):
                args = entry["args"]
                change = ValidatorSetChanged(
                    epoch=int(args["epoch"]),
                    members=tuple(bytes.fromhex(m[2:]) for m in args["members"]),
                    threshold=int(args["threshold"]),
                    block_timestamp=self._timestamp(int(entry["blockNumber"])))
                self._changes[change.epoch] = change
                self.log.info("validator set epoch %d: %d members, k = %d, mined at %d "
                              "(windows from %d on)", change.epoch, len(change.members),
                              change.threshold, change.block_timestamp,
                              change.activation(self.activation_delay_s))
            self._next_block = end + 1

    def _timestamp(self, block: int) -> int:
        found = self._timestamps.get(block)
        if found is None:
            found = self._timestamps[block] = int(self.w3.eth.get_block(block)["timestamp"])
        return found

    def _read_terms(self, head: int) -> Mapping[str, list[MethodologyTerm]]:
        registry = self._registry
        on_chain = set(registry.functions.projectIds().call(block_identifier=head))
        terms: dict[str, list[MethodologyTerm]] = {}
        for project in self.network.projects:
            if project.id not in on_chain:
                self._warn_once(project.id, "project %s is not in the ProjectRegistry; its "
                                "terms are the network file's", project.id)
                terms[project.id] = [MethodologyTerm(0, project.methodology_version,
                                                     project.grid_ef_g_per_kwh)]
                continue
            if project.id not in self._checked:
                _owner, window_seconds, _registered, _hash, methodology = \
                    registry.functions.project(project.id).call(block_identifier=head)
                if (window_seconds, methodology) != (project.window_seconds,
                                                     project.methodology):
                    self._warn_once(f"grid {project.id}", "project %s: the registry says %s "
                                    "windows of %d s, the network file %s windows of %d s; the "
                                    "credit contract will refuse its attestations", project.id,
                                    methodology, window_seconds, project.methodology,
                                    project.window_seconds)
                else:
                    self._checked.add(project.id)
            terms[project.id] = [MethodologyTerm(int(effective), int(version), int(ef))
                                 for version, ef, effective in
                                 registry.functions.terms(project.id).call(
                                     block_identifier=head)]
        return terms

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warning(message, *args)
