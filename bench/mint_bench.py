"""Minting benchmark: logged attestations minted per second on anvil, against plain ether
transfers through the same sending path.

    PYTHONPATH=. .venv/bin/python bench/mint_bench.py [--attestations 600] [--transfers 600]
        [--in-flight 256] [--rounds 2]

Starts an anvil (contracts/node_modules, as the tests do), deploys the contracts with
``ledger.deploy.deploy_all``, logs ``--attestations`` certified windows of one device (real
device and validator signatures) in a ledger on SQLite, then times :class:`MintWorker`
until every row is minted: per mint an ``eth_estimateGas`` (the pre-flight that names a
revert), a local signature, one commit of the batch's rows as ``sent`` before any broadcast,
``eth_sendRawTransaction``, and a receipt look-up and commit as ``minted``. Transactions are
pipelined (up to ``--in-flight`` sent before their receipts are read); anvil automines one
block per transaction.

Baseline, in the same run (the machine is shared: compare ratios): ``--transfers`` ether
transfers through the same :class:`TxSender` and the same JSON-RPC batches (estimates, local
signatures, broadcasts, receipts, ``--in-flight`` at a time), without database, evidence or
contract. ``ratio = mints/s / transfers/s``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from web3 import Web3

from ledger.chain_node import ChainNode
from ledger.chain_tx import TxSender
from ledger.credit_store import CreditStore
from ledger.deploy import Addresses, GovernanceSettings, ProjectSpec, deploy_all
from ledger.minting import MintWorker
from ledger.service import Ledger
from ledger.store import LedgerStore
from tests.support.anvil import running_anvil
from tests.unit.test_ledger_support import EF, HOUR, PROJECT, T0, World


class BenchWorld(World):
    def __init__(self, addresses: Addresses) -> None:
        self.addresses = addresses
        super().__init__()

    def network_dict(self) -> dict[str, object]:
        d = super().network_dict()
        d.update(chain_id=self.addresses.chain_id, credit_contract=self.addresses.credits.lower())
        return d


def fund(w3: Web3, address: str) -> None:
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address, "value": 10**21})
    w3.eth.wait_for_transaction_receipt(tx, timeout=30)


def transfers_per_s(node: ChainNode, key: bytes, n: int, in_flight: int) -> float:
    """Plain transfers through TxSender: estimate, sign, broadcast (pipelined), receipts."""
    sender = TxSender(node, key)
    sender.sync_nonce()
    to = "0x" + "11" * 20
    start = time.perf_counter()
    done = 0
    while done < n:
        size = min(in_flight, n - done)
        gases = sender.estimate_many(to, [b""] * size)
        fees = sender.fees()
        batch = [sender.sign(to, b"", nonce=sender.nonces.take(),
                             gas=sender.with_margin(int(gas)), fees=fees) for gas in gases]
        assert sender.broadcast_many(batch) == [None] * size
        waiting = [tx.tx_hash for tx in batch]
        deadline = time.monotonic() + 60
        while waiting:  # anvil mines them one by one after taking the batch
            assert time.monotonic() < deadline, "transfers not mined"
            receipts = node.receipts(waiting)
            assert all(r.status == 1 for r in receipts if r is not None)
            waiting = [h for h, r in zip(waiting, receipts, strict=True) if r is None]
        done += size
    return n / (time.perf_counter() - start)


def mints_per_s(node: ChainNode, addresses: Addresses, minter_key: bytes,
                windows: list[bytes], world: World, db: Path, in_flight: int) -> float:
    store = LedgerStore.open(f"sqlite:///{db}")
    try:
        ledger = Ledger(world.network, store)
        ledger.on_registry(world.record().to_wire(), world.device)
        for payload in windows:
            assert ledger.on_certificate(payload).result == "appended"
        credits = CreditStore(store)
        # receipt_timeout_s 5: anvil takes a JSON-RPC batch concurrently, and with automine a
        # transaction that arrived before its predecessor can sit in the pool until the next
        # one arrives; a replacement after 5 s (counted below) gets it mined
        worker = MintWorker(credits, TxSender(node, minter_key), addresses.credits,
                            first_block=addresses.deployed_block, max_in_flight=in_flight,
                            receipt_timeout_s=5.0)
        worker.reconcile()
        start = time.perf_counter()
        worker.run_until_idle(max_rounds=100_000)
        elapsed = time.perf_counter() - start
        counts = credits.mint_counts()
        assert counts["minted"] == len(windows), counts
        if worker.counts["replaced"]:
            print(f"  ({worker.counts['replaced']} transactions replaced after 5 s)")
        return len(windows) / elapsed
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attestations", type=int, default=600)
    parser.add_argument("--transfers", type=int, default=600)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_anvil(Path(tmp) / "anvil") as url:
        node = ChainNode.connect(url)
        w3 = node.w3
        keys = [secrets.token_bytes(32) for _ in range(3)]
        for k in keys:
            fund(w3, TxSender(node, k).address)
        base = World()
        addresses = deploy_all(node, keys[0], [v.address for v in base.validators], 3,
                               [ProjectSpec(PROJECT, w3.eth.accounts[5], window_seconds=HOUR,
                                            grid_ef_g_per_kwh=EF)],
                               settings=GovernanceSettings(60, 3600, 0, 4, 600))
        world = BenchWorld(addresses)
        n = args.attestations
        total = n * args.rounds
        # every window must have ended by the chain's clock
        w3.provider.make_request("evm_setNextBlockTimestamp",  # type: ignore[arg-type]
                                 [T0 + (total + 2) * HOUR])
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        t = time.perf_counter()
        payloads = [world.certify(h).to_wire() for h in range(total)]
        print(f"{total} certified windows built in {time.perf_counter() - t:.1f} s")
        results = []
        for r in range(args.rounds):
            base_rate = transfers_per_s(node, keys[1], args.transfers, args.in_flight)
            mint_rate = mints_per_s(node, addresses, keys[2], payloads[r * n:(r + 1) * n],
                                    world, Path(tmp) / f"ledger-{r}.db", args.in_flight)
            results.append((mint_rate, base_rate))
            print(f"round {r + 1}: {mint_rate:7.1f} mints/s   {base_rate:7.1f} transfers/s   "
                  f"ratio {mint_rate / base_rate:.2f}")
        ratios = [m / b for m, b in results]
        print(f"best: {max(m for m, _ in results):.1f} attestations minted/s (target >= 200); "
              f"baseline {max(b for _, b in results):.1f} transfers/s; ratio "
              f"{min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
