"""The demo's chain: a development chain, the contracts deployed on it, and the owner's side.

The embedded default chain is eth-tester (py-evm). The demo serves it on loopback
(:class:`ledger.devchain.DevChain`), so that the demo (deploying, then retiring credits as the
project owner) and the ledger's minter (another process) use one chain, and ``cast`` can too.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senken.demo_broker import DemoError, get_json, wait_for

__all__ = ["DemoChain", "Retired"]

MINTS_LIMIT = 1000  # the API's most per page: a demo run mints fewer
# Governance parameters of the demo's deployment, in seconds: short, it is a demo
VOTING_DELAY_S, VOTING_PERIOD_S, TIMELOCK_DELAY_S = 60, 600, 60


@dataclass(frozen=True)
class Retired:
    units: int
    token_id: str
    beneficiary: str
    record: dict[str, Any]


class DemoChain:
    """Start, keys, deploy (``deploy``), the ledger's ``[chain]`` section, retire, stop."""

    def __init__(self, home: Path) -> None:
        from ledger.devchain import DevChain
        from senken_core.secp256k1 import ValidatorKey

        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.dev = DevChain()
        self.url = self.dev.start()
        self.secrets: dict[str, bytes] = {}
        addresses = {}
        for name in ("deployer", "minter", "owner"):
            secret = secrets.token_bytes(32)  # below the group order: 2^-128 odds otherwise
            key = ValidatorKey(secret)
            key.save(home / f"{name}.key")
            self.secrets[name] = secret
            addresses[name] = "0x" + key.address.hex()
            self.dev.fund(addresses[name])
        self.owner_address = addresses["owner"]
        self.addresses: Any = None

    @property
    def what(self) -> str:
        return f"development chain (eth-tester) {self.url}, chain id {self.dev.chain_id}"

    def deploy(self, network_file: Path) -> Any:
        """Deploy every contract for ``network_file`` (validators, k, the project and its
        owner_address); write the addresses file. Returns the addresses."""
        from ledger.chain_node import ChainNode
        from ledger.chain_tx import TxSender
        from ledger.deploy import GovernanceSettings, deploy_network
        from senken_core.errors import SenkenError
        from senken_core.network import load_network_config

        try:
            node = ChainNode.connect(self.url)
            sender = TxSender(node, self.secrets["deployer"])
            self.addresses = deploy_network(
                node, sender, load_network_config(network_file),
                settings=GovernanceSettings(VOTING_DELAY_S, VOTING_PERIOD_S, 0, 4,
                                            TIMELOCK_DELAY_S))
        except SenkenError as exc:
            raise DemoError(f"deploying the contracts failed: {exc}") from None
        self.addresses.save(self.home / "addresses.json")
        return self.addresses

    def ledger_section(self) -> dict[str, Any]:
        return {"url": self.url, "addresses_file": self.home / "addresses.json",
                "minter_key_file": self.home / "minter.key", "poll_interval_s": 0.5,
                "reorg_depth": 2}

    def credits(self, ledger_url: str) -> tuple[int, int, list[dict[str, Any]]]:
        """(mints, units minted, the owner's balances) as the ledger's API shows them."""
        mints = get_json(f"{ledger_url}/credits/mints?limit={MINTS_LIMIT}", 5) or {}
        rows = mints.get("mints", [])
        units = sum(int(m.get("units") or 0) for m in rows)
        balances = (get_json(f"{ledger_url}/credits/balances/{self.owner_address}", 5)
                    or {}).get("balances", [])
        return int(mints.get("count", 0)), units, balances

    def failed(self, ledger_url: str) -> list[str]:
        """The mints the ledger gave up on, each with its error."""
        queue = get_json(f"{ledger_url}/credits/queue?state=failed", 5) or {}
        return [f"{str(r.get('attestation_id', '?'))[:16]}...: {r.get('error')} "
                f"{r.get('detail') or ''}".rstrip() for r in queue.get("mints", [])
                if isinstance(r, dict)]

    def wait_minted(self, ledger_url: str, windows: int, timeout_s: float) -> bool:
        """Whether every one of ``windows`` logged windows is settled (minted or failed) in
        the ledger's mint table, and every mint is in its mirror of the chain's events, within
        ``timeout_s``."""
        def done() -> bool:
            counts = (get_json(f"{ledger_url}/credits/queue", 5) or {}).get("counts", {})
            minted = counts.get("minted", 0)
            if minted + counts.get("failed", 0) < windows:
                return False
            mirrored = (get_json(f"{ledger_url}/credits/mints?limit={MINTS_LIMIT}", 5)
                        or {}).get("count", 0)
            return bool(mirrored >= minted)
        return bool(wait_for(done, timeout_s, 0.5))

    def retire(self, ledger_url: str, token_id: str, units: int, beneficiary: str,
               reason: str, jurisdiction: str) -> Retired:
        """The owner retires ``units`` of ``token_id``; the record as the ledger mirrors it."""
        from ledger.chain_node import ChainNode
        from ledger.chain_tx import TxSender
        from senken_core.credit_contracts import load_artifact
        from senken_core.errors import SenkenError

        try:
            node = ChainNode.connect(self.url)
            credits = node.w3.eth.contract(address=self.addresses.credits,
                                           abi=load_artifact("SenkenCredits").abi)
            data = credits.encode_abi("retire", args=[int(token_id, 16), units, beneficiary,
                                                      reason, jurisdiction])
            receipt = TxSender(node, self.secrets["owner"]).transact(
                self.addresses.credits, bytes.fromhex(data[2:]))
        except SenkenError as exc:
            raise DemoError(f"retiring credits failed: {exc}") from None
        if receipt.status != 1:
            raise DemoError("the retirement transaction reverted")
        found: list[dict[str, Any]] = []

        def mirrored() -> bool:
            rows = (get_json(f"{ledger_url}/credits/retirements", 5) or {}).get(
                "retirements", [])
            found[:] = [r for r in rows if r.get("beneficiary") == beneficiary]
            return bool(found)

        started = time.monotonic()
        if not wait_for(mirrored, 30, 0.3):
            raise DemoError(f"the retirement (block {receipt.block_number}) did not reach the "
                            f"ledger's mirror in {time.monotonic() - started:.0f} s")
        return Retired(units, token_id, beneficiary, found[0])

    def stop(self) -> None:
        self.dev.stop()
