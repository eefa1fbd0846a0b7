"""Deploy Senken's contracts with web3.py and drive a test chain (eth-tester or anvil).

:func:`deploy_all` deploys the whole set from the committed artifacts
(senken_core.credit_contracts) and hands governance to the timelock; a later step moves it
into the product. :class:`Chain` hides what differs between eth-tester and anvil (snapshots,
moving time); :func:`reverts` names a custom-error revert; :func:`pass_proposal` runs a
governance proposal from propose to execute.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from eth_typing import HexStr
from eth_utils.address import to_checksum_address
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.types import TxReceipt

try:  # eth-tester is only there with the chain extra
    from eth_tester.exceptions import TransactionFailed
except ImportError:  # pragma: no cover
    class TransactionFailed(Exception):  # type: ignore[no-redef]
        pass

from ledger.chain_node import decode_revert as ledger_decode_revert
from ledger.chain_node import revert_data
from ledger.deploy import GovernanceSettings
from senken_core.attestation import Attestation
from senken_core.credit_contracts import load_artifact
from tests.support.anvil import running_anvil

ZERO_ADDRESS = "0x" + "00" * 20
# the chain tests run on both: eth-tester in process, and a real anvil (marked integration)
BACKENDS = ["eth-tester", pytest.param("anvil", marks=pytest.mark.integration)]
TOKEN_SUPPLY = 10**9 * 10**18  # the governance token's supply (18 decimals)


def fresh_chain(kind: str, stack: ExitStack, folder: Path) -> tuple[str, Web3]:
    """(url, web3) of a new chain of ``kind`` (see BACKENDS): anvil started in ``folder`` and
    stopped with ``stack``, or eth-tester in this process (url "eth-tester")."""
    if kind == "anvil":
        url = stack.enter_context(running_anvil(folder))
        return url, Web3(Web3.HTTPProvider(url))
    return "eth-tester", Web3(EthereumTesterProvider())


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    """A project to register at deployment (its first methodology term included)."""

    project_id: str
    owner: str
    methodology: str = "CDM AMS-I.D"
    window_seconds: int = 900
    methodology_version: int = 1
    grid_ef_g_per_kwh: int = 400
    effective_from: int = 0


# governance in minutes for tests (the product's defaults are days), and in seconds for
# tests that run whole proposals
TEST_GOVERNANCE = GovernanceSettings(voting_delay_s=60, voting_period_s=3600,
                                     proposal_threshold_votes=0, quorum_percent=4,
                                     timelock_delay_s=600)
FAST_GOVERNANCE = GovernanceSettings(voting_delay_s=1, voting_period_s=3,
                                     proposal_threshold_votes=0, quorum_percent=4,
                                     timelock_delay_s=1)


@dataclass(frozen=True, slots=True)
class Addresses:
    token: str
    timelock: str
    governor: str
    validator_set: str
    registry: str
    credits: str


@dataclass(frozen=True, slots=True)
class Deployment:
    """Addresses plus web3 contract objects for them."""

    addresses: Addresses
    settings: GovernanceSettings
    token: Contract
    timelock: Contract
    governor: Contract
    validator_set: Contract
    registry: Contract
    credits: Contract
    receipts: dict[str, TxReceipt] = field(default_factory=dict)


def contract_at(w3: Web3, name: str, address: str) -> Contract:
    return w3.eth.contract(address=to_checksum_address(address), abi=load_artifact(name).abi)


def send(fn: Any, sender: str, gas: int | None = None) -> TxReceipt:
    """Send a contract call from ``sender`` and wait for its receipt; fail on a revert."""
    params: dict[str, Any] = {"from": sender}
    if gas is not None:
        params["gas"] = gas
    tx_hash = fn.transact(params)
    receipt = fn.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if receipt["status"] != 1:
        raise AssertionError(f"transaction {tx_hash.hex()} reverted")
    return cast(TxReceipt, receipt)


def _deploy(w3: Web3, name: str, deployer: str, *args: Any) -> tuple[str, TxReceipt]:
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx_hash = factory.constructor(*args).transact({"from": deployer})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if receipt["status"] != 1 or receipt["contractAddress"] is None:
        raise AssertionError(f"deploying {name} failed")
    return receipt["contractAddress"], receipt


def deploy_contract(w3: Web3, name: str, deployer: str, *args: Any) -> Contract:
    """Deploy one contract from its artifact; the contract object at its address."""
    address, _ = _deploy(w3, name, deployer, *args)
    return contract_at(w3, name, address)


def deploy_all(w3: Web3, deployer: str, validators: Sequence[bytes | str], threshold: int, *,
               token_holder: str | None = None, token_supply: int = 10**9 * 10**18,
               settings: GovernanceSettings | None = None,
               base_uri: str = "https://credits.senken.example/",
               projects: Sequence[ProjectSpec] = ()) -> Addresses:
    """Deploy token, timelock, governor, validator set, project registry and credit contract;
    register ``projects``; hand governance of the last three to the timelock and renounce the
    deployer's timelock admin role. Afterwards only a proposal can change anything."""
    return deploy_all_with_receipts(w3, deployer, validators, threshold,
                                    token_holder=token_holder, token_supply=token_supply,
                                    settings=settings, base_uri=base_uri,
                                    projects=projects).addresses


def deploy_all_with_receipts(
    w3: Web3, deployer: str, validators: Sequence[bytes | str], threshold: int, *,
    token_holder: str | None = None, token_supply: int = 10**9 * 10**18,
    settings: GovernanceSettings | None = None,
    base_uri: str = "https://credits.senken.example/", projects: Sequence[ProjectSpec] = (),
) -> Deployment:
    """:func:`deploy_all`, returning contract objects and the deployment receipts too."""
    s = settings or TEST_GOVERNANCE
    receipts: dict[str, TxReceipt] = {}
    members = [to_checksum_address(v) for v in validators]

    def deploy(name: str, *args: Any) -> str:
        address, receipts[f"deploy {name}"] = _deploy(w3, name, deployer, *args)
        return address

    token = deploy("SenkenToken", "Senken Governance", "SKG", token_holder or deployer,
                   token_supply)
    timelock = deploy("SenkenTimelock", s.timelock_delay_s, [], [ZERO_ADDRESS], deployer)
    governor = deploy("SenkenGovernor", token, timelock, s.voting_delay_s, s.voting_period_s,
                      s.proposal_threshold_votes, s.quorum_percent)
    validator_set = deploy("ValidatorSet", deployer, members, threshold)
    registry = deploy("ProjectRegistry", deployer)
    credits = deploy("SenkenCredits", deployer, validator_set, registry, base_uri)
    addresses = Addresses(token, timelock, governor, validator_set, registry, credits)

    tl = contract_at(w3, "SenkenTimelock", timelock)
    for role in ("PROPOSER_ROLE", "CANCELLER_ROLE"):
        send(tl.functions.grantRole(tl.functions[role]().call(), governor), deployer)
    reg = contract_at(w3, "ProjectRegistry", registry)
    for p in projects:
        receipts[f"register {p.project_id}"] = send(reg.functions.registerProject(
            p.project_id, to_checksum_address(p.owner), p.methodology, p.window_seconds,
            p.methodology_version, p.grid_ef_g_per_kwh, p.effective_from), deployer)
    for name, address in (("ValidatorSet", validator_set), ("ProjectRegistry", registry),
                          ("SenkenCredits", credits)):
        send(contract_at(w3, name, address).functions.transferGovernance(timelock), deployer)
    send(tl.functions.renounceRole(tl.functions.DEFAULT_ADMIN_ROLE().call(), deployer),
         deployer)
    return Deployment(
        addresses, s, contract_at(w3, "SenkenToken", token), tl,
        contract_at(w3, "SenkenGovernor", governor),
        contract_at(w3, "ValidatorSet", validator_set), reg,
        contract_at(w3, "SenkenCredits", credits), receipts)


def attestation_args(a: Attestation) -> tuple[Any, ...]:
    """The Solidity ``Attestation`` struct as web3 takes it (EIP-712 member order)."""
    return (a.project, a.device, a.window_start, a.window_seconds, a.methodology,
            a.methodology_version, a.readings_accepted, a.readings_rejected, a.quantity,
            a.co2e_mg, a.readings_root, a.model_hash)


class Chain:
    """What differs between the two test chains: snapshots and moving time."""

    def __init__(self, w3: Web3, kind: str) -> None:
        if kind not in ("eth-tester", "anvil"):
            raise ValueError(kind)
        self.w3 = w3
        self.kind = kind

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def snapshot(self) -> Any:
        return self.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]

    @contextmanager
    def restored(self) -> Iterator[None]:
        """Whatever the block runs on the chain is undone after it (a snapshot reverted)."""
        snapshot = self.snapshot()
        try:
            yield
        finally:
            self.revert(snapshot)

    def revert(self, snapshot: Any) -> None:
        result = self.w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
        if "error" in result:
            raise AssertionError(f"evm_revert failed: {result['error']}")

    def advance(self, seconds: int) -> int:
        """Mine a block at least ``seconds`` after the latest one; return its timestamp."""
        target = self.now() + seconds
        if self.kind == "eth-tester":
            self.w3.provider.make_request("testing_timeTravel", [target])  # type: ignore[arg-type]
            self.w3.provider.make_request("evm_mine", [1])  # type: ignore[arg-type]
        else:
            self.w3.provider.make_request("evm_setNextBlockTimestamp", [target])  # type: ignore[arg-type]
            self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        return self.now()


@dataclass
class Revert:
    """What :func:`reverts` caught: the custom error's name and decoded arguments."""

    name: str = ""
    args: tuple[Any, ...] = ()


def decode_revert(exc: BaseException) -> Revert:
    """The custom error ``exc`` carries, decoded as the ledger decodes it
    (ledger.chain_node); an AssertionError where it carries none or an unknown one."""
    raw = revert_data(exc)
    if raw is None or len(raw) < 4:
        raise AssertionError(f"revert without custom error data: {exc!r}") from exc
    name, args = ledger_decode_revert(raw)
    if name == "unknown":
        raise AssertionError(f"unknown error selector {raw[:4].hex()}: {exc!r}") from exc
    return Revert(name, args)


@contextmanager
def reverts(name: str, *args: Any) -> Iterator[Revert]:
    """Expect the block to revert with custom error ``name`` (and ``args``, when given)."""
    caught = Revert()
    try:
        yield caught
    except (ContractLogicError, TransactionFailed) as exc:
        got = decode_revert(exc)
        caught.name, caught.args = got.name, got.args
    else:
        raise AssertionError(f"expected a revert with {name}, but nothing reverted")
    if caught.name != name:
        raise AssertionError(f"expected {name}, reverted with {caught.name}{caught.args}")
    if args and caught.args != args:
        raise AssertionError(f"{name}: expected arguments {args}, got {caught.args}")


PROPOSAL_STATES = ("Pending", "Active", "Canceled", "Defeated", "Succeeded", "Queued",
                   "Expired", "Executed")


def proposal_state(d: Deployment, proposal_id: int) -> str:
    return PROPOSAL_STATES[d.governor.functions.state(proposal_id).call()]


def pass_proposal(d: Deployment, chain: Chain, proposer: str,
                  actions: Sequence[tuple[str, bytes | str]], description: str,
                  votes: Sequence[tuple[str, int]], *, execute: bool = True,
                  receipts: dict[str, TxReceipt] | None = None) -> tuple[int, str]:
    """Propose ``actions`` ((target, calldata), value 0), let ``votes`` ((voter, support:
    0 against, 1 for, 2 abstain)) vote, and, if it succeeded, queue and execute it through the
    timelock. Returns the proposal id and its final state name."""
    s = d.settings
    targets = [to_checksum_address(t) for t, _ in actions]
    values = [0] * len(actions)
    calldatas = [Web3.to_bytes(hexstr=HexStr(c)) if isinstance(c, str) else c for _, c in actions]
    description_hash = Web3.keccak(text=description)
    record = receipts if receipts is not None else {}
    record["propose"] = send(d.governor.functions.propose(targets, values, calldatas,
                                                          description), proposer)
    proposal_id = d.governor.functions.hashProposal(targets, values, calldatas,
                                                    description_hash).call()
    chain.advance(s.voting_delay_s + 1)
    for i, (voter, support) in enumerate(votes):
        record[f"castVote {i}"] = send(d.governor.functions.castVote(proposal_id, support),
                                       voter)
    chain.advance(s.voting_period_s + 1)
    state = proposal_state(d, proposal_id)
    if state != "Succeeded" or not execute:
        return proposal_id, state
    record["queue"] = send(d.governor.functions.queue(targets, values, calldatas,
                                                      description_hash), proposer)
    chain.advance(s.timelock_delay_s + 1)
    record["execute"] = send(d.governor.functions.execute(targets, values, calldatas,
                                                          description_hash), proposer)
    return proposal_id, proposal_state(d, proposal_id)


def calldata(contract: Contract, fn_name: str, *args: Any) -> str:
    return str(contract.encode_abi(fn_name, args=list(args)))
