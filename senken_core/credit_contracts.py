"""The built Solidity contracts (issue 4: credits on chain), as committed JSON artifacts.

``contracts/build.py`` compiles ``contracts/src`` with the pinned solc and writes one
``senken_core/contracts/<Name>.json`` per deployable contract: ABI, creation and runtime
bytecode, compiler version, settings and the sha256 of every source. The runtime needs
neither node nor solc, only these files: :func:`load_artifact` reads them from the package.

The contracts (``contracts/README.md`` has the design):

* ``SenkenToken``: the ERC20Votes governance token (timestamp clock);
* ``SenkenTimelock``: OpenZeppelin's TimelockController, governance of all that follows;
* ``SenkenGovernor``: the OpenZeppelin Governor that proposes to the timelock;
* ``ValidatorSet``: validator addresses and the threshold k (2k > n), with an epoch counter;
* ``ProjectRegistry``: project id -> owner, methodology, window grid, methodology terms
  (version, grid emission factor, effective from);
* ``SenkenCredits``: the ERC-1155 credits, minted from k-of-n signed attestations and retired
  by burning.

No web3 here: callers hand ``abi`` and ``bytecode`` to whatever client they use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from senken_core.eip712 import StructType, keccak256

__all__ = ["CONTRACT_NAMES", "CREDIT_BATCH_TYPE", "UNITS_PER_CREDIT", "UNIT_MG", "Artifact",
           "batch_token_id", "error_signatures", "load_artifact"]

CONTRACT_NAMES = ("SenkenToken", "SenkenTimelock", "SenkenGovernor", "ValidatorSet",
                  "ProjectRegistry", "SenkenCredits")

UNIT_MG = 1000  # 1 token unit = 1 g CO2e = 1000 mg (SenkenCredits.UNIT_MG)
UNITS_PER_CREDIT = 1_000_000  # 1 credit = 1 t CO2e

# SenkenCredits' token id of a batch is this struct's hashStruct (as a uint256).
CREDIT_BATCH_TYPE = StructType("CreditBatch", (
    ("project", "string"),
    ("vintage", "uint16"),
    ("methodology", "string"),
))


@dataclass(frozen=True, slots=True)
class Artifact:
    """One compiled contract. ``bytecode`` and ``deployed_bytecode`` are 0x-prefixed hex."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler_version: str
    settings: dict[str, Any]
    sources: dict[str, str]  # source unit -> sha256 hex

    def errors(self) -> dict[bytes, str]:
        """The contract's custom errors: 4-byte selector -> signature, e.g.
        ``UnknownSigner(address)``."""
        out: dict[bytes, str] = {}
        for item in self.abi:
            if item.get("type") == "error":
                signature = f"{item['name']}({','.join(_abi_type(i) for i in item['inputs'])})"
                out[keccak256(signature.encode())[:4]] = signature
        return out


def _abi_type(item: dict[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + kind[5:]
    return kind


def load_artifact(name: str) -> Artifact:
    """The artifact of contract ``name`` (one of :data:`CONTRACT_NAMES`)."""
    if name not in CONTRACT_NAMES:
        raise ValueError(f"unknown contract {name!r}: expected one of {CONTRACT_NAMES}")
    text = resources.files("senken_core").joinpath("contracts", f"{name}.json").read_text(
        encoding="utf-8")
    data = json.loads(text)
    return Artifact(name=data["contractName"], abi=data["abi"], bytecode=data["bytecode"],
                    deployed_bytecode=data["deployedBytecode"],
                    compiler_version=data["compiler"]["version"], settings=data["settings"],
                    sources=data["sources"])


def error_signatures() -> dict[bytes, str]:
    """Every custom error of every contract, by selector: a revert from any of them (the
    credit contract passes on ValidatorSet's and ProjectRegistry's) can be named."""
    out: dict[bytes, str] = {}
    for name in CONTRACT_NAMES:
        out.update(load_artifact(name).errors())
    return out


def batch_token_id(project: str, vintage: int, methodology: str) -> int:
    """SenkenCredits' token id of the batch (project, vintage year, methodology name)."""
    digest = CREDIT_BATCH_TYPE.hash_struct({"project": project, "vintage": vintage,
                                            "methodology": methodology})
    return int.from_bytes(digest, "big")
