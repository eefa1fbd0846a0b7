"""The ledger mints what it logs, on eth-tester (in process) and on a real anvil: real
certificates (device-signed readings, validators' secp256k1 signatures over the EIP-712 digest
for the deployed contract), the product's deployment (ledger.deploy), the real contracts.

One deployment per chain (module scope); every test runs on an EVM snapshot and reverts it.
The network file the ledger checks certificates against says k = 2 while the chain's
ValidatorSet says k = 3 (as after a governance vote the file has not caught up with): a
2-signature certificate is logged and then refused on chain with TooFewSignatures.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from web3 import Web3

from ledger.api import create_api
from ledger.chain_app import open_chain
from ledger.chain_events import EventCodec
from ledger.chain_mirror import ChainMirror
from ledger.chain_node import ChainNode
from ledger.chain_tx import TxSender
from ledger.config import ChainConfig
from ledger.credit_store import CreditStore
from ledger.deploy import Addresses, ProjectSpec, deploy_all
from ledger.minting import MintHooks, MintWorker
from ledger.service import Ledger
from ledger.store import LedgerStore
from senken.cli import cli
from senken_core.credit_contracts import batch_token_id, load_artifact
from senken_core.evidence import CertifiedWindow
from senken_core.secp256k1 import ValidatorKey
from tests.support.anvil import cast_call, running_anvil
from tests.support.chain import BACKENDS, TEST_GOVERNANCE, fresh_chain
from tests.support.postgres import fresh_database
from tests.support.waiting import wait_until
from tests.unit.test_ledger_support import EF, HOUR, PROJECT, World

VINTAGE = 2026  # T0 (tests/unit/test_ledger_support.py) is in November 2026


class MintWorld(World):
    """World's network, for the deployed contract and chain, with the file's k = 2."""

    def __init__(self, addresses: Addresses) -> None:
        self.addresses = addresses
        super().__init__()

    def network_dict(self) -> dict[str, object]:
        d = super().network_dict()
        d.update(chain_id=self.addresses.chain_id, threshold=2,
                 credit_contract=self.addresses.credits.lower())
        return d


@dataclass
class Net:
    kind: str
    url: str
    w3: Web3
    node: ChainNode
    addresses: Addresses
    owner_key: bytes
    owner: str
    minter_key: bytes

    def world(self) -> MintWorld:
        return MintWorld(self.addresses)

    def credits(self) -> Any:
        return self.w3.eth.contract(address=self.addresses.credits,
                                    abi=load_artifact("SenkenCredits").abi)

    def balance(self, token_id: int, who: str | None = None) -> int:
        return int(self.credits().functions.balanceOf(who or self.owner, token_id).call())

    def minted_in(self, attestation_id: bytes) -> int:
        return int(self.credits().functions.mintedIn(attestation_id).call())

    def mint_logs(self, attestation_id: bytes) -> int:
        topic = EventCodec().topic("SenkenCredits", "AttestationMinted")
        return len(self.node.logs([self.addresses.credits], 0, self.node.block_number(),
                                  [topic, attestation_id]))

    def rpc(self, method: str, params: list[Any]) -> Any:
        reply = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]


def _fund(w3: Web3, address: str) -> None:
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address,
                                  "value": 10**20})
    w3.eth.wait_for_transaction_receipt(tx, timeout=30)


@pytest.fixture(scope="module", params=BACKENDS)
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Net]:
    with ExitStack() as stack:
        url, w3 = fresh_chain(request.param, stack, tmp_path_factory.mktemp("anvil"))
        node = ChainNode.connect(url) if request.param == "anvil" else ChainNode.connect(
            url, w3=w3)
        keys = [secrets.token_bytes(32) for _ in range(3)]
        deployer, owner, minter = (TxSender(node, k).address for k in keys)
        for address in (deployer, owner, minter):
            _fund(node.w3, address)
        world = World()
        addresses = deploy_all(node, keys[0], [k.address for k in world.validators], 3,
                               [ProjectSpec(PROJECT, owner, window_seconds=HOUR,
                                            grid_ef_g_per_kwh=EF)],
                               settings=TEST_GOVERNANCE)
        yield Net(request.param, url, node.w3, node, addresses, keys[1], owner, keys[2])


@pytest.fixture
def env(net: Net) -> Iterator[Net]:
    snapshot = net.rpc("evm_snapshot", [])
    try:
        yield net
    finally:
        net.rpc("evm_revert", [snapshot])


class LedgerSide:
    """A ledger (its own database) with the device registered, and a minter for it."""

    def __init__(self, net: Net, url: str) -> None:
        self.net = net
        self.world = net.world()
        self.url = url
        self.store = LedgerStore.open(url)
        self.ledger = Ledger(self.world.network, self.store)
        assert self.ledger.on_registry(self.world.record().to_wire(),
                                       self.world.device) == "applied"
        self.credits = CreditStore(self.store)

    def minter(self, hooks: MintHooks | None = None, **options: Any) -> MintWorker:
        sender = TxSender(self.net.node, self.net.minter_key)
        return MintWorker(self.credits, sender, self.net.addresses.credits,
                          first_block=self.net.addresses.deployed_block, hooks=hooks,
                          **options)

    def append(self, window: CertifiedWindow) -> bytes:
        outcome = self.ledger.on_certificate(window.to_wire())
        assert outcome.result == "appended", outcome
        return window.attestation.id

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def side(env: Net, tmp_path: Path) -> Iterator[LedgerSide]:
    s = LedgerSide(env, f"sqlite:///{tmp_path / 'ledger.db'}")
    yield s
    s.close()


def token_of(window: CertifiedWindow) -> int:
    return batch_token_id(PROJECT, VINTAGE, window.attestation.methodology)


def minted(side: LedgerSide, count: int) -> list[CertifiedWindow]:
    """``count`` certified windows appended to the ledger and minted."""
    windows = [side.world.certify(h) for h in range(count)]
    for w in windows:
        side.append(w)
    side.minter().run_until_idle()
    return windows


def retire_as_owner(env: Net, token_id: int, amount: int, beneficiary: str, reason: str,
                    country: str) -> Any:
    """The project owner retires ``amount`` units of ``token_id``: its receipt."""
    call = env.credits().encode_abi("retire", args=[token_id, amount, beneficiary, reason,
                                                    country])
    return TxSender(env.node, env.owner_key).transact(env.addresses.credits,
                                                      bytes.fromhex(call[2:]))


# ---------------------------------------------------------------- minting


def test_an_appended_certificate_mints_its_credits_to_the_project_owner(
        side: LedgerSide, env: Net) -> None:
    window = side.world.certify(0)
    att_id = side.append(window)
    side.minter().run_until_idle()
    row = side.credits.mint_row(att_id)
    assert row is not None and row.state == "minted", row
    units = window.attestation.co2e_mg // 1000  # 1 unit = 1 g CO2e; 500 Wh x 700 g/kWh
    assert units == 350 and row.units == str(units)
    token_id = token_of(window)
    assert row.token_id == f"0x{token_id:064x}"
    assert env.balance(token_id) == units
    assert env.minted_in(att_id) == token_id
    receipt = env.node.receipt(row.tx_hash or b"")
    assert receipt is not None and receipt.status == 1 and receipt.block_number == \
        row.block_number


def test_a_certificate_below_the_chains_k_is_failed_with_its_error_and_mints_nothing(
        side: LedgerSide, env: Net) -> None:
    short = side.world.certify(0, keys=side.world.validators[:2])  # k - 1 on chain
    att_id = side.append(short)  # the network file's k = 2 lets the ledger log it
    good = side.append(side.world.certify(1))
    minter = side.minter()
    minter.run_until_idle()
    row = side.credits.mint_row(att_id)
    assert row is not None
    assert (row.state, row.error, row.detail) == ("failed", "TooFewSignatures",
                                                  "TooFewSignatures(2, 3)")
    assert row.tx_hash is None and row.attempts == 0  # refused before anything was sent
    assert env.minted_in(att_id) == 0
    assert env.balance(token_of(short)) == 350  # only the good window's
    assert side.credits.mint_row(good).state == "minted"  # type: ignore[union-attr]
    minter.run_until_idle()  # never retried
    assert side.credits.mint_row(att_id).state == "failed"  # type: ignore[union-attr]
    assert minter.counts["failed:TooFewSignatures"] == 1


def test_a_replayed_attestation_is_not_minted_twice(side: LedgerSide, env: Net,
                                                    tmp_path: Path) -> None:
    window = side.world.certify(0)
    att_id = side.append(window)
    side.minter().run_until_idle()
    assert side.ledger.on_certificate(window.to_wire()).result == "duplicate"
    # the same row sent again (an operator's mistake): the contract says AlreadyMinted
    side.credits.update_mints([(att_id, {"state": "queued"})])
    minter = side.minter()
    minter.run_until_idle()
    row = side.credits.mint_row(att_id)
    assert row is not None and row.state == "minted" and row.units == "350"
    # another ledger (a lost database) logs and mints the same certificate
    other = LedgerSide(env, f"sqlite:///{tmp_path / 'other.db'}")
    try:
        other.append(window)
        other.minter().run_until_idle()
        again = other.credits.mint_row(att_id)
        assert again is not None and again.state == "minted" and again.units == "350"
        assert again.tx_hash == row.tx_hash  # the first (and only) mint, found on chain
    finally:
        other.close()
    assert env.balance(token_of(window)) == 350
    assert env.mint_logs(att_id) == 1


class Crash(BaseException):
    """The process dies (a BaseException: nothing on the way catches it)."""


def _crash(_attestation_id: bytes, _tx: Any) -> None:
    raise Crash


@pytest.mark.integration
@pytest.mark.parametrize("point", ["after", "before"])
def test_a_crash_between_send_and_record_is_reconciled_to_one_mint(env: Net,
                                                                   point: str) -> None:
    """On PostgreSQL. ``after``: the transaction reached the chain, the minter died before
    recording its outcome. ``before``: the row says sent, the transaction never left."""
    with fresh_database("minting") as url:
        side = LedgerSide(env, url)
        try:
            window = side.world.certify(0)
            att_id = side.append(window)
            hooks = MintHooks(**{f"{point}_broadcast": _crash})
            with pytest.raises(Crash):
                side.minter(hooks).run_until_idle()
            row = side.credits.mint_row(att_id)
            assert row is not None and row.state == "sent" and row.tx_hash is not None
            assert env.minted_in(att_id) == (0 if point == "before" else token_of(window))
        finally:
            side.close()
        # a new process: its own engine on the same database, a new minter
        store = LedgerStore.open(url)
        try:
            credits = CreditStore(store)
            minter = MintWorker(credits, TxSender(env.node, env.minter_key),
                                env.addresses.credits, first_block=env.addresses.deployed_block)
            outcome = minter.reconcile()
            assert outcome == ({"minted": 1} if point == "after" else {"resent": 1})
            minter.run_until_idle()
            after = credits.mint_row(att_id)
            assert after is not None and after.state == "minted" and after.units == "350"
            assert after.nonce == row.nonce  # the same nonce, whichever way
        finally:
            store.close()
    assert env.balance(token_of(window)) == 350
    assert env.mint_logs(att_id) == 1


@pytest.mark.integration
# anvil only: eth-tester mines every transaction as it is sent, so none is ever left unmined
@pytest.mark.parametrize("net", ["anvil"], indirect=True)
def test_a_dropped_transaction_is_resent_with_its_nonce_and_a_higher_fee(
        side: LedgerSide, env: Net) -> None:
    att_id = side.append(side.world.certify(0))
    env.rpc("evm_setAutomine", [False])
    try:
        minter = side.minter(receipt_timeout_s=0.3)
        minter.step()
        first = side.credits.mint_row(att_id)
        assert first is not None and first.state == "sent" and first.tx_hash is not None
        assert env.node.is_pending(first.tx_hash)
        env.rpc("anvil_dropTransaction", ["0x" + first.tx_hash.hex()])
        assert not env.node.is_pending(first.tx_hash)

        def resent() -> bool:
            minter.step()
            row = side.credits.mint_row(att_id)
            return row is not None and row.fee_level == 1

        wait_until(resent, 20, "the dropped mint to be re-sent")
        second = side.credits.mint_row(att_id)
        assert second is not None and second.nonce == first.nonce
        assert second.tx_hash != first.tx_hash
        assert (second.fee_cap_wei or 0) > (first.fee_cap_wei or 0)
        assert env.node.is_pending(second.tx_hash or b"")
    finally:
        env.rpc("evm_setAutomine", [True])
    env.rpc("evm_mine", [])
    minter.run_until_idle()
    row = side.credits.mint_row(att_id)
    assert row is not None and row.state == "minted" and row.tx_hash == second.tx_hash
    assert env.mint_logs(att_id) == 1


# ---------------------------------------------------------------- the mirror and the API


def test_mints_and_a_retirement_appear_in_the_api(side: LedgerSide, env: Net) -> None:
    windows = minted(side, 2)
    token_id = token_of(windows[0])
    assert retire_as_owner(env, token_id, 100, "Acme GmbH", "2026 emissions", "DE").status == 1
    mirror = ChainMirror(side.credits, env.node, env.addresses, reorg_depth=5)
    mirror.run_until_idle()
    api = TestClient(create_api(side.store, side.ledger, credits=side.credits))
    mints = api.get("/credits/mints", params={"owner": env.owner.lower()}).json()
    assert mints["count"] == 2
    assert [m["attestation_id"] for m in mints["mints"]] == [w.attestation.id.hex()
                                                             for w in windows]
    assert {m["units"] for m in mints["mints"]} == {"350"}
    assert mints["mints"][0]["project"] == PROJECT
    retired = api.get("/credits/retirements").json()["retirements"]
    assert len(retired) == 1
    assert (retired[0]["holder"], retired[0]["amount"], retired[0]["beneficiary"],
            retired[0]["jurisdiction"]) == (env.owner, "100", "Acme GmbH", "DE")
    balances = api.get(f"/credits/balances/{env.owner}").json()
    assert balances["balances"] == [{"token_id": f"0x{token_id:064x}", "units": "600"}]
    assert env.balance(token_id) == 600
    batches = api.get("/credits/batches").json()["batches"]
    assert [(b["project"], b["vintage"]) for b in batches] == [(PROJECT, VINTAGE)]
    changed = api.get("/chain/events", params={"contract": "ValidatorSet",
                                               "event": "ValidatorSetChanged"}).json()
    assert changed["count"] == 1 and changed["events"][0]["args"]["threshold"] == 3
    queue = api.get("/credits/queue").json()
    assert queue["counts"]["minted"] == 2
    assert api.get("/credits/balances/0x12").status_code == 400
    # a restart: the cursor is kept, the last blocks are read again, nothing doubles
    cursor = side.credits.chain_cursor()
    again = ChainMirror(side.credits, env.node, env.addresses, reorg_depth=5)
    assert again.step() == 0 and side.credits.chain_cursor() == cursor
    assert api.get("/credits/mints").json()["count"] == 2
    assert len(api.get("/credits/retirements").json()["retirements"]) == 1


def test_the_minter_runs_in_the_background_beside_appends(env: Net, tmp_path: Path) -> None:
    """The ledger's wiring (config, open_chain, the asyncio tasks): certificates appended
    while the minter and the mirror run on their own are minted and mirrored."""
    world = env.world()
    store = LedgerStore.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    if env.kind == "eth-tester":  # the process's own chain, shared with the deployment
        config = ChainConfig(url="eth-tester", poll_interval_s=0.05)
        services = open_chain(config, world.network, store, w3=env.w3,
                              addresses=env.addresses)
    else:  # as a deployed ledger: key file, addresses file, a URL
        key_file = tmp_path / "minter.key"
        ValidatorKey(env.minter_key).save(key_file)
        addresses_file = tmp_path / "addresses.json"
        env.addresses.save(addresses_file)
        config = ChainConfig(url=env.url, minter_key_file=key_file,
                             addresses_file=addresses_file, poll_interval_s=0.05)
        services = open_chain(config, world.network, store)
    ledger = Ledger(world.network, store)
    ledger.on_registry(world.record().to_wire(), world.device)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    mirror = services.mirror
    assert mirror is not None

    async def main() -> None:
        await asyncio.gather(services.run_minter(stop), mirror.run(stop))

    runner = threading.Thread(target=loop.run_until_complete, args=(main(),))
    runner.start()
    try:
        api = TestClient(create_api(store, ledger, credits=services.credits,
                                    chain_status=services.status))
        for hour in range(3):
            assert ledger.on_certificate(world.certify(hour).to_wire()).result == "appended"

        def all_mirrored() -> bool:
            return api.get("/credits/mints").json()["count"] == 3

        wait_until(all_mirrored, 30, "three mints mirrored")
        assert api.get("/credits/queue").json()["counts"]["minted"] == 3
        health = api.get("/health").json()
        assert health["chain"]["disabled"] is None
        assert health["chain"]["minting"]["reconciled"] is True
    finally:
        loop.call_soon_threadsafe(stop.set)
        runner.join(timeout=30)
        loop.close()
        store.close()


# ---------------------------------------------------------------- senken chain deploy


def _anvil_key(w3: Web3, tmp_path: Path) -> tuple[Path, bytes]:
    key = secrets.token_bytes(32)
    _fund(w3, TxSender(ChainNode.connect("anvil", w3=w3), key).address)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "deployer.key"
    path.write_text("0x" + key.hex() + "\n")
    path.chmod(0o600)
    return path, key


@pytest.mark.integration
def test_senken_chain_deploy_writes_addresses_that_work(tmp_path: Path) -> None:
    with running_anvil(tmp_path / "anvil") as url:
        w3 = Web3(Web3.HTTPProvider(url))
        key_file, _ = _anvil_key(w3, tmp_path)
        owner = w3.eth.accounts[7]
        world = World()
        network_file = world.write_network(tmp_path / "network.toml")
        text = network_file.read_text().replace(
            f'id = "{PROJECT}"\n', f'id = "{PROJECT}"\nowner_address = "{owner.lower()}"\n')
        network_file.write_text(text)
        out = tmp_path / "addresses.json"
        result = CliRunner().invoke(cli, [
            "chain", "deploy", "--url", url, "--key-file", str(key_file), "--network",
            str(network_file), "--out", str(out), "--voting-delay-s", "60",
            "--voting-period-s", "3600", "--timelock-delay-s", "600"])
        assert result.exit_code == 0, result.output
        addresses = Addresses.load(out)
        assert addresses.chain_id == 31337
        assert f'credit_contract = "{addresses.credits.lower()}"' in result.output
        assert "chain_id" not in result.output.split("now set in")[1].split("and in")[0]
        assert key_file.read_text().strip()[2:] not in result.output
        # the addresses work: the registry knows the project and its owner, and a
        # certificate for the deployed domain mints to that owner
        registry = w3.eth.contract(address=addresses.registry,
                                   abi=load_artifact("ProjectRegistry").abi)
        assert registry.functions.projectIds().call() == [PROJECT]
        vs = w3.eth.contract(address=addresses.validator_set,
                             abi=load_artifact("ValidatorSet").abi)
        members, k, _epoch = vs.functions.validators().call()
        assert k == 3 and {m.lower() for m in members} == {
            "0x" + v.address.hex() for v in world.validators}
        net = Net("anvil", url, w3, ChainNode.connect(url), addresses, b"", owner,
                  _anvil_key(w3, tmp_path / "m")[1])
        side = LedgerSide(net, f"sqlite:///{tmp_path / 'ledger.db'}")
        try:
            window = side.world.certify(0)
            att_id = side.append(window)
            side.minter().run_until_idle()
            assert side.credits.mint_row(att_id).state == "minted"  # type: ignore[union-attr]
            assert net.balance(token_of(window), owner) == 350
        finally:
            side.close()
        again = CliRunner().invoke(cli, ["chain", "deploy", "--url", url, "--key-file",
                                         str(key_file), "--network", str(network_file),
                                         "--out", str(out)])
        assert again.exit_code != 0 and "exists" in again.output


@pytest.mark.integration
# anvil only: cast, foundry's own client, talks JSON-RPC to a node (eth-tester is in process)
@pytest.mark.parametrize("net", ["anvil"], indirect=True)
def test_cast_reads_the_balances_and_retirements_the_ledger_shows(side: LedgerSide,
                                                                  env: Net) -> None:
    """An independent check: foundry's ``cast`` reads, from anvil itself, the balances, the
    mint of each attestation and the retirement record that the ledger's API shows."""
    windows = minted(side, 3)
    token_id = token_of(windows[0])
    assert retire_as_owner(env, token_id, 250, "Stadtwerke Süd", "Scope 2, 2026",
                           "AT").status == 1
    ChainMirror(side.credits, env.node, env.addresses, reorg_depth=5).run_until_idle()
    api = TestClient(create_api(side.store, side.ledger, credits=side.credits))
    credits = env.addresses.credits

    def cast(signature: str, *args: object) -> list[Any]:
        return json.loads(cast_call(env.url, credits, signature, *args, "--json"))

    [balance] = cast("balanceOf(address,uint256)(uint256)", env.owner, token_id)
    shown = api.get(f"/credits/balances/{env.owner}").json()["balances"]
    assert shown == [{"token_id": f"0x{token_id:064x}", "units": str(int(balance))}]
    assert int(balance) == 3 * 350 - 250
    for mint in api.get("/credits/mints").json()["mints"]:
        [minted_in] = cast("mintedIn(bytes32)(uint256)", "0x" + mint["attestation_id"])
        assert f"0x{int(minted_in):064x}" == mint["token_id"]
    [record] = api.get("/credits/retirements").json()["retirements"]
    [count] = cast("retirementCount()(uint256)")
    assert int(count) == 1
    [on_chain] = cast("retirement(uint256)((address,uint64,bytes2,uint256,uint256,string,"
                      "string))", record["retirement_id"])
    holder, _timestamp, jurisdiction, tid, amount, beneficiary, reason = on_chain
    assert (holder.lower(), int(tid), str(int(amount)), beneficiary, reason) == (
        record["holder"].lower(), token_id, record["amount"], record["beneficiary"],
        record["reason"])
    assert bytes.fromhex(jurisdiction[2:]).decode() == record["jurisdiction"] == "AT"
