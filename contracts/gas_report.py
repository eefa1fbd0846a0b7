"""Write contracts/GAS.md: gas used by Senken's contracts, from real receipts on anvil.

Run with the project's Python from the repository root after ``npm ci`` in contracts/::

    .venv/bin/python contracts/gas_report.py

It starts anvil (the npm package's binary), deploys the whole set with the tests' deploy
helper (tests/support/chain.py), and records the receipts of: each deployment; a mint with
k = 3 signatures of n = 4 validators (the first of a batch, which creates the batch, and a
later one); retirements; and a governance proposal (add a validator) through propose, vote,
queue and execute.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eth_utils.address import to_checksum_address  # noqa: E402
from web3 import Web3  # noqa: E402

from senken_core.attestation import Attestation, senken_domain  # noqa: E402
from senken_core.credit_contracts import batch_token_id, load_artifact  # noqa: E402
from senken_core.secp256k1 import ValidatorKey  # noqa: E402
from tests.support.anvil import running_anvil  # noqa: E402
from tests.support.chain import (  # noqa: E402
    Chain,
    ProjectSpec,
    attestation_args,
    calldata,
    deploy_all_with_receipts,
    pass_proposal,
    send,
)

T2024 = 1_704_067_200


def measure() -> tuple[list[tuple[str, int, str]], str]:
    rows: list[tuple[str, int, str]] = []
    with tempfile.TemporaryDirectory() as tmp, running_anvil(Path(tmp)) as url:
        w3 = Web3(Web3.HTTPProvider(url))
        chain = Chain(w3, "anvil")
        accounts = list(w3.eth.accounts)
        deployer, owner, relayer = accounts[0], accounts[1], accounts[2]
        keys = [ValidatorKey(hashlib.sha256(f"gas-report-{i}".encode()).digest())
                for i in range(5)]
        d = deploy_all_with_receipts(w3, deployer, [k.address for k in keys[:4]], 3,
                                     projects=[ProjectSpec("solar-farm-1", owner)])
        for name in ("SenkenToken", "SenkenTimelock", "SenkenGovernor", "ValidatorSet",
                     "ProjectRegistry", "SenkenCredits"):
            size = len(load_artifact(name).deployed_bytecode) // 2 - 1
            rows.append((f"deploy {name}", d.receipts[f"deploy {name}"]["gasUsed"],
                         f"runtime code {size:,} bytes"))
        rows.append(("registerProject (deployer, before hand-over)",
                     d.receipts["register solar-farm-1"]["gasUsed"], "first methodology term"))
        send(d.token.functions.delegate(deployer), deployer)
        chain.advance(1)
        domain = senken_domain(w3.eth.chain_id, bytes.fromhex(d.addresses.credits[2:]))

        def mint(i: int, quantity: int) -> Any:
            a = Attestation("solar-farm-1", "meter-001", T2024 + 900 * i, 900, "CDM AMS-I.D",
                            1, 15, 0, quantity, quantity * 400, b"\x01" * 32, b"\x02" * 32)
            digest = a.digest(domain)
            sigs = [k.sign_digest(digest) for k in keys[:3]]
            return send(d.credits.functions.mint(attestation_args(a), sigs), relayer)

        rows.append(("mint, k = 3 of n = 4, first of its batch", mint(0, 1234)["gasUsed"],
                     "creates the batch (name, totals)"))
        # 493,600 mg: 493 units, 600 mg carried; then 937,600 + 600: 938 units, 200 carried
        rows.append(("mint, k = 3 of n = 4, later in the batch", mint(1, 2344)["gasUsed"],
                     "typical"))
        rows.append(("mint, k = 3 of n = 4, no whole unit", mint(2, 1)["gasUsed"],
                     "400 + 200 mg carried: remainder only, no transfer"))
        token_id = batch_token_id("solar-farm-1", 2024, "CDM AMS-I.D")
        first = send(d.credits.functions.retire(token_id, 100, "ACME GmbH",
                                                "2024 scope 2", "DE"), owner)
        rows.append(("retire (first retirement)", first["gasUsed"],
                     "burn + record + event; short strings"))
        second = send(d.credits.functions.retire(token_id, 100, "ACME GmbH",
                                                 "2024 scope 2", "DE"), owner)
        rows.append(("retire (later)", second["gasUsed"], ""))
        receipts: dict[str, Any] = {}
        _, state = pass_proposal(d, chain, deployer, [
            (d.addresses.validator_set,
             calldata(d.validator_set, "addValidator", to_checksum_address(keys[4].address),
                      3)),
        ], "Add a fifth validator, k stays 3", [(deployer, 1)], receipts=receipts)
        if state != "Executed":
            raise RuntimeError(f"governance proposal ended {state}")
        rows.append(("governance: propose (addValidator)", receipts["propose"]["gasUsed"], ""))
        rows.append(("governance: castVote", receipts["castVote 0"]["gasUsed"], ""))
        rows.append(("governance: queue (timelock schedule)", receipts["queue"]["gasUsed"], ""))
        rows.append(("governance: execute (timelock, addValidator)",
                     receipts["execute"]["gasUsed"], "n 4 -> 5, epoch 1 -> 2"))
        version = str(w3.client_version)
    return rows, version


def render(rows: list[tuple[str, int, str]], client: str) -> str:
    artifact = load_artifact("SenkenCredits")
    settings = artifact.settings
    lines = [
        "# Gas report",
        "",
        "Generated by `contracts/gas_report.py` from real transaction receipts on a local "
        f"anvil ({client}, hardfork prague); do not edit by hand. Compiler "
        f"{artifact.compiler_version}, optimizer runs {settings['optimizer']['runs']}, "
        f"evmVersion {settings['evmVersion']}.",
        "",
        "| operation | gas used | note |",
        "| --- | ---: | --- |",
    ]
    lines += [f"| {name} | {gas:,} | {note} |" for name, gas, note in rows]
    lines += ["", "Gas includes the 21,000 base cost and calldata of each transaction.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "GAS.md")
    args = parser.parse_args(argv)
    rows, client = measure()
    args.out.write_text(render(rows, client))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
