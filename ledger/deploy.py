"""Deploying Senken's contracts, and the addresses file that names them.

:func:`deploy_all` deploys, from one key and with locally signed transactions
(:class:`~ledger.chain_tx.TxSender`, so it works against any node, not only one that holds
unlocked accounts):

1. ``SenkenToken`` (governance votes, the whole supply to ``token_holder``),
2. ``SenkenTimelock`` (delay ``timelock_delay_s``; anyone may execute),
3. ``SenkenGovernor`` (proposes to the timelock; it becomes its only proposer and canceller),
4. ``ValidatorSet`` (the validators and k of the network file),
5. ``ProjectRegistry`` (each project with its owner's EVM address and first methodology term),
6. ``SenkenCredits``,

then hands governance of the last three to the timelock and renounces the deployer's timelock
admin role: from then on only a passed proposal changes validators, k, projects or terms.

The result, :class:`Addresses`, is written as JSON (``senken chain deploy --out``) and read by
the ledger (``[chain] addresses_file``). Validators sign for the EIP-712 domain (chain id,
credit contract), so the network file's ``chain_id`` and ``credit_contract`` must then be set
to what was deployed; :func:`network_mismatch` says what differs.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from eth_utils.address import to_checksum_address
from web3 import Web3

from ledger.chain_node import ChainError, ChainNode
from ledger.chain_tx import TxSender
from senken_core.credit_contracts import load_artifact
from senken_core.errors import SenkenError
from senken_core.network import NetworkConfig, ProjectConfig

__all__ = ["Addresses", "AddressesError", "DeployError", "GovernanceSettings", "ProjectSpec",
           "deploy_all", "deploy_network", "network_mismatch"]

ZERO_ADDRESS = "0x" + "00" * 20
_SCHEMA = 1


class DeployError(SenkenError):
    """A deployment step failed (``step`` names it); contracts deployed before it stay."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"deployment step {step!r} failed: {message}")
        self.step = step


class AddressesError(SenkenError):
    """An addresses file that is missing, unreadable or malformed."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"addresses file {path}: {message}")
        self.path = path


@dataclass(frozen=True, slots=True)
class Addresses:
    """Where the contracts are, on which chain, since which block (checksummed 0x text)."""

    chain_id: int
    token: str
    timelock: str
    governor: str
    validator_set: str
    registry: str
    credits: str
    deployed_block: int = 0  # the first block of the deployment: the event mirror starts here
    deployer: str = ZERO_ADDRESS

    def by_contract(self) -> dict[str, str]:
        """Contract name (as in senken_core.credit_contracts) -> address."""
        return {"SenkenToken": self.token, "SenkenTimelock": self.timelock,
                "SenkenGovernor": self.governor, "ValidatorSet": self.validator_set,
                "ProjectRegistry": self.registry, "SenkenCredits": self.credits}

    def to_json(self) -> str:
        return json.dumps({"schema": _SCHEMA, **asdict(self)}, indent=2) + "\n"

    def save(self, path: Path) -> None:
        """Write the file atomically (a reader never sees half of it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Addresses:
        """Read a file :meth:`save` wrote; raises :class:`AddressesError`."""
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise AddressesError(path, "not found; `senken chain deploy --out` writes it") \
                from None
        except (OSError, ValueError) as exc:
            raise AddressesError(path, f"unreadable: {exc}") from None
        if not isinstance(data, dict) or data.get("schema") != _SCHEMA:
            raise AddressesError(path, f"not a Senken addresses file (schema {_SCHEMA})")
        try:
            values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
            for name in ("token", "timelock", "governor", "validator_set", "registry",
                         "credits", "deployer"):
                if name in values:
                    values[name] = to_checksum_address(values[name])
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise AddressesError(path, f"malformed: {exc}") from None


@dataclass(frozen=True, slots=True)
class GovernanceSettings:
    """The governor's and the timelock's parameters, in seconds (the token's clock is block
    time). The defaults suit a production network; tests use minutes."""

    voting_delay_s: int = 86_400
    voting_period_s: int = 7 * 86_400
    proposal_threshold_votes: int = 0
    quorum_percent: int = 4
    timelock_delay_s: int = 2 * 86_400


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    """A project to register at deployment, with its first methodology term."""

    project_id: str
    owner: str  # the EVM address credits are minted to
    methodology: str = "CDM AMS-I.D"
    window_seconds: int = 900
    methodology_version: int = 1
    grid_ef_g_per_kwh: int = 400
    effective_from: int = 0

    @classmethod
    def of(cls, project: ProjectConfig) -> ProjectSpec:
        """From the network file; raises DeployError without ``owner_address``."""
        if project.owner_address is None:
            raise DeployError(f"register {project.id}", f"project {project.id} has no "
                              "owner_address in the network file: add owner_address = "
                              "\"0x...\" (the EVM address its credits go to) to its "
                              "[[projects]] table")
        return cls(project.id, to_checksum_address(project.owner_address),
                   project.methodology, project.window_seconds, project.methodology_version,
                   project.grid_ef_g_per_kwh)


def _node(chain: Web3 | ChainNode) -> ChainNode:
    return chain if isinstance(chain, ChainNode) else ChainNode.connect("web3", w3=chain)


def deploy_all(chain: Web3 | ChainNode, deployer: bytes | TxSender,
               validators: Sequence[bytes | str], threshold: int,
               projects: Sequence[ProjectSpec] = (), *,
               settings: GovernanceSettings | None = None, token_holder: str | None = None,
               token_supply: int = 10**9 * 10**18,
               base_uri: str = "https://credits.senken.example/",
               timeout_s: float = 120.0,
               progress: Callable[[str], None] | None = None) -> Addresses:
    """Deploy the whole set (module docstring) from ``deployer`` (a 32-byte key, or a
    :class:`TxSender` to share its nonces); returns the addresses. ``progress`` is told each
    step. Raises :class:`DeployError` (a step reverted or was refused) and
    :class:`~ledger.chain_node.ChainError` (the node failed)."""
    node = _node(chain)
    sender = deployer if isinstance(deployer, TxSender) else TxSender(node, deployer)
    s = settings or GovernanceSettings()
    w3 = node.w3
    tell = progress or (lambda _step: None)
    first_block: list[int] = []

    def run(step: str, to: str | None, data: bytes) -> str | None:
        tell(step)
        try:
            receipt = sender.transact(to, data, timeout_s=timeout_s)
        except ChainError as exc:
            raise DeployError(step, str(exc)) from exc
        if receipt.status != 1:
            raise DeployError(step, f"transaction 0x{receipt.tx_hash.hex()} reverted")
        if not first_block:
            first_block.append(receipt.block_number)
        return receipt.contract_address

    def deploy(name: str, *args: Any) -> str:
        artifact = load_artifact(name)
        factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        data = bytes.fromhex(factory.constructor(*args).data_in_transaction[2:])
        address = run(f"deploy {name}", None, data)
        if address is None:
            raise DeployError(f"deploy {name}", "the receipt names no contract address")
        return address

    def call(step: str, name: str, address: str, fn: str, *args: Any) -> None:
        contract = w3.eth.contract(address=to_checksum_address(address),
                                   abi=load_artifact(name).abi)
        run(step, address, bytes.fromhex(contract.encode_abi(fn, args=list(args))[2:]))

    def view(name: str, address: str, fn: str) -> Any:
        contract = w3.eth.contract(address=to_checksum_address(address),
                                   abi=load_artifact(name).abi)
        data = bytes.fromhex(contract.encode_abi(fn, args=[])[2:])
        raw = node.call({"to": address, "data": "0x" + data.hex()})
        return w3.codec.decode(["bytes32"], raw)[0]

    me = sender.address
    members = [to_checksum_address("0x" + v.hex() if isinstance(v, bytes) else v)
               for v in validators]
    token = deploy("SenkenToken", "Senken Governance", "SKG",
                   to_checksum_address(token_holder or me), token_supply)
    timelock = deploy("SenkenTimelock", s.timelock_delay_s, [], [ZERO_ADDRESS], me)
    governor = deploy("SenkenGovernor", token, timelock, s.voting_delay_s, s.voting_period_s,
                      s.proposal_threshold_votes, s.quorum_percent)
    validator_set = deploy("ValidatorSet", me, members, threshold)
    registry = deploy("ProjectRegistry", me)
    credits = deploy("SenkenCredits", me, validator_set, registry, base_uri)
    for role in ("PROPOSER_ROLE", "CANCELLER_ROLE"):
        call(f"grant {role} to the governor", "SenkenTimelock", timelock, "grantRole",
             view("SenkenTimelock", timelock, role), governor)
    for p in projects:
        call(f"register {p.project_id}", "ProjectRegistry", registry, "registerProject",
             p.project_id, to_checksum_address(p.owner), p.methodology, p.window_seconds,
             p.methodology_version, p.grid_ef_g_per_kwh, p.effective_from)
    for name, address in (("ValidatorSet", validator_set), ("ProjectRegistry", registry),
                          ("SenkenCredits", credits)):
        call(f"hand {name} to the timelock", name, address, "transferGovernance", timelock)
    call("renounce the timelock admin role", "SenkenTimelock", timelock, "renounceRole",
         view("SenkenTimelock", timelock, "DEFAULT_ADMIN_ROLE"), me)
    return Addresses(sender.chain_id, token, timelock, governor, validator_set, registry,
                     credits, first_block[0] if first_block else 0, me)


def deploy_network(chain: Web3 | ChainNode, deployer: bytes | TxSender,
                   network: NetworkConfig, **options: Any) -> Addresses:
    """:func:`deploy_all` with the validators, k and projects of a network file."""
    projects = [ProjectSpec.of(p) for p in network.projects]
    return deploy_all(chain, deployer, list(network.validators), network.threshold, projects,
                      **options)


def network_mismatch(network: NetworkConfig, addresses: Addresses) -> list[str]:
    """What the network file must change to match the deployment: one line per setting
    (empty when it matches)."""
    wrong = []
    if network.chain_id != addresses.chain_id:
        wrong.append(f"chain_id = {addresses.chain_id}")
    if network.credit_contract.lower() != addresses.credits.lower():
        wrong.append(f'credit_contract = "{addresses.credits.lower()}"')
    return wrong
