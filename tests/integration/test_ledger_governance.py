"""The ledger follows governance as the validators do (issue 4), on eth-tester and on anvil.

The contracts are deployed for World's four founders (k = 3) and its project; a real
governance proposal (propose, vote, time travel, queue, execute: tests/support/chain.py)
changes the validator set or adds a methodology term. The ledger is wired as ``ledger.app``
wires it with a ``[chain]`` section (``open_chain(..., ledger=...)``: the schedule follower
and the minter), but driven step by step: ``follower.step()`` is one read of the chain,
``minter.run_until_idle()`` mints what the log holds. Each test runs on an EVM snapshot.

On anvil the ledger's database is PostgreSQL, on eth-tester the embedded SQLite.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from web3 import Web3

from ledger.chain_app import ChainServices, open_chain
from ledger.chain_node import ChainNode, ContractReverted
from ledger.chain_tx import TxSender
from ledger.config import ChainConfig
from ledger.deploy import Addresses
from ledger.minting import attestation_args
from ledger.service import Ledger
from ledger.store import LedgerStore
from senken_core.credit_contracts import batch_token_id
from senken_core.evidence import CertifiedWindow, window_attestation
from senken_core.membership import first_window
from senken_core.quorum import QuorumCertificate
from senken_core.secp256k1 import ValidatorKey
from tests.support.chain import (
    BACKENDS,
    FAST_GOVERNANCE,
    Chain,
    Deployment,
    ProjectSpec,
    calldata,
    deploy_all_with_receipts,
    fresh_chain,
    pass_proposal,
    send,
)
from tests.support.postgres import fresh_database
from tests.unit.test_ledger_support import EF, MODEL, PROJECT, World

WINDOW_S = 60
DELAY_S = 600  # the activation delay, as the validators' default
PER_WINDOW = 6  # readings: 5 increments of 100 Wh = 500 Wh, 350 g at 700 g/kWh


class GovWorld(World):
    """World's founders, device and project, on the deployed contracts' chain, with windows
    of a minute; and a fifth validator for governance to add."""

    def __init__(self, chain_id: int, credits: str) -> None:
        self.chain_id, self.credits = chain_id, credits
        super().__init__()
        self.newcomer = ValidatorKey(b"\x66" * 32)

    def network_dict(self) -> dict[str, object]:
        d = super().network_dict()
        d.update(chain_id=self.chain_id, credit_contract=self.credits.lower())
        d["projects"][0]["window_seconds"] = WINDOW_S  # type: ignore[index]
        return d

    def window(self, start: int, keys: Sequence[ValidatorKey], *, version: int = 1,
               grid_ef_g_per_kwh: int = EF) -> CertifiedWindow:
        """The certified window starting at ``start``, signed by ``keys``, under methodology
        ``version`` with its grid factor."""
        first = start // WINDOW_S * PER_WINDOW  # sequence numbers of its own
        readings = [self.reading(first + i, start + i * (WINDOW_S // PER_WINDOW))
                    for i in range(PER_WINDOW)]
        project = replace(self.network.projects[0], methodology_version=version,
                          grid_ef_g_per_kwh=grid_ef_g_per_kwh)
        att = window_attestation(
            project=PROJECT, device=self.device, window_start=start, window_seconds=WINDOW_S,
            methodology=project.methodology_terms(), model_hash=MODEL,
            readings=[(r, r.canonical()) for r in readings], boundary=None, rejected=0)
        return CertifiedWindow(QuorumCertificate(att, self.sign(att, keys)),
                               tuple(r.sign(self.device_key) for r in readings))


@dataclass
class Net:
    kind: str
    url: str
    w3: Web3
    chain: Chain
    d: Deployment
    addresses: Addresses
    deployer: str

    def propose(self, actions: list[tuple[str, str]], what: str) -> int:
        """Pass a proposal of ``actions``; the execution block's timestamp."""
        receipts: dict[str, Any] = {}
        _, state = pass_proposal(self.d, self.chain, self.deployer, actions,
                                 f"{what} {uuid.uuid4()}", [(self.deployer, 1)],
                                 receipts=receipts)
        assert state == "Executed"
        return int(self.w3.eth.get_block(receipts["execute"]["blockNumber"])["timestamp"])

    def set_call(self, fn: str, *args: Any) -> tuple[str, str]:
        return (self.d.addresses.validator_set, calldata(self.d.validator_set, fn, *args))

    def advance_past(self, timestamp: int) -> None:
        """Mine a block later than ``timestamp``."""
        self.chain.advance(max(1, timestamp - self.chain.now() + 1))


@pytest.fixture(scope="module", params=BACKENDS)
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Net]:
    with ExitStack() as stack:
        url, w3 = fresh_chain(request.param, stack, tmp_path_factory.mktemp("anvil"))
        accounts = list(w3.eth.accounts)
        deployer, owner = accounts[0], accounts[1]
        founders = World().validators
        d = deploy_all_with_receipts(
            w3, deployer, [k.address for k in founders], 3, settings=FAST_GOVERNANCE,
            projects=[ProjectSpec(PROJECT, owner=owner, window_seconds=WINDOW_S,
                                  grid_ef_g_per_kwh=EF)])
        send(d.token.functions.delegate(deployer), deployer)
        chain = Chain(w3, request.param)
        chain.advance(1)
        a = d.addresses
        first = min(int(r["blockNumber"]) for r in d.receipts.values())
        addresses = Addresses(int(w3.eth.chain_id), a.token, a.timelock, a.governor,
                              a.validator_set, a.registry, a.credits, first, deployer)
        yield Net(request.param, url, w3, chain, d, addresses, deployer)


@pytest.fixture
def env(net: Net) -> Iterator[Net]:
    with net.chain.restored():
        yield net


@contextmanager
def _database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "anvil":
        with fresh_database("ledger_gov") as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'ledger.db'}"


@dataclass
class LedgerSide:
    world: GovWorld
    store: LedgerStore
    ledger: Ledger
    services: ChainServices

    def submit(self, window: CertifiedWindow) -> str:
        return self.ledger.on_certificate(window.to_wire()).label

    def follow(self) -> None:
        assert self.services.follower is not None
        assert self.services.follower.step()

    def mint(self) -> None:
        self.services.minter.run_until_idle()

    def row(self, window: CertifiedWindow) -> Any:
        return self.services.credits.mint_row(window.attestation.id)


@pytest.fixture
def side(env: Net, tmp_path: Path) -> Iterator[LedgerSide]:
    """A ledger with ``[chain]`` on ``env``'s chain, the device registered, one read done."""
    world = GovWorld(env.addresses.chain_id, env.addresses.credits)
    with _database(env.kind, tmp_path) as url:
        store = LedgerStore.open(url)
        try:
            ledger = Ledger(world.network, store, follow_chain=True)
            assert ledger.on_registry(world.record().to_wire(), world.device) == "applied"
            if env.kind == "eth-tester":  # the chain in this process, as the demo has it
                config = ChainConfig(url="eth-tester", activation_delay_s=DELAY_S)
                services = open_chain(config, world.network, store, w3=env.w3,
                                      addresses=env.addresses, ledger=ledger)
            else:  # as a deployed ledger: key file, addresses file, a URL
                key = secrets.token_bytes(32)
                tx = env.w3.eth.send_transaction({
                    "from": env.deployer, "value": 10**20,
                    "to": TxSender(ChainNode.connect(env.url), key).address})
                env.w3.eth.wait_for_transaction_receipt(tx, timeout=30)
                key_file = tmp_path / "minter.key"
                ValidatorKey(key).save(key_file)
                addresses_file = tmp_path / "addresses.json"
                env.addresses.save(addresses_file)
                config = ChainConfig(url=env.url, minter_key_file=key_file,
                                     addresses_file=addresses_file, activation_delay_s=DELAY_S)
                services = open_chain(config, world.network, store, ledger=ledger)
            s = LedgerSide(world, store, ledger, services)
            s.follow()
            yield s
        finally:
            store.close()


def _units(window: CertifiedWindow) -> int:
    return window.attestation.co2e_mg // 1000


def test_a_new_validator_and_a_higher_k_apply_to_windows_from_the_switch(
        side: LedgerSide, env: Net) -> None:
    """k 3 of 4 -> 4 of 5. After the switch only the new set certifies; before it the old
    set does, and its certificate mints only if the current set (k = 4) accepts it."""
    w = side.world
    founders, newcomer = w.validators, w.newcomer
    assert side.ledger.schedule.latest.epoch == 1
    executed_at = env.propose([env.set_call("addValidator",
                                            to_checksum_address(newcomer.address), 4)],
                              "Add a fifth validator, k = 4")
    switch = first_window(executed_at + DELAY_S, WINDOW_S)
    before, after = switch - WINDOW_S, switch
    old_before = w.window(before, founders[:3])  # k = 3 of the old set
    all_old_before = w.window(before - WINDOW_S, founders)  # 4 old members: still k now
    old_after = w.window(after, founders[:3])  # 3 < the new k
    new_after = w.window(after, [newcomer, *founders[:3]])
    windows = [old_before, all_old_before, old_after, new_after]
    side.follow()  # read at the execution's block: epoch 2 known, its windows not final
    assert side.ledger.schedule.latest.epoch == 2
    assert [side.submit(x) for x in windows] == ["pending:schedule"] * 4
    assert side.store.pending_count() == 4
    env.advance_past(after + 2 * WINDOW_S)  # every window ended and final
    side.follow()
    counts = side.ledger.certificates
    assert side.store.pending_count() == 0
    assert counts["appended"] == 3  # old_before, all_old_before, new_after
    assert counts["refused:certificate:too_few"] == 1  # old_after: k = 4 after the switch
    assert side.submit(old_after) == "duplicate"  # its window is logged (k signatures)
    side.mint()
    assert side.row(new_after).state == "minted"
    assert side.row(all_old_before).state == "minted"
    stale = side.row(old_before)
    assert (stale.state, stale.error, stale.tx_hash, stale.attempts) == (
        "failed", "StaleQuorum", None, 0)
    assert "needs re-signing by the current set" in stale.detail
    credits = env.d.credits.functions
    assert credits.mintedIn(old_before.attestation.id).call() == 0
    token = batch_token_id(PROJECT, time.gmtime(after).tm_year,
                           new_after.attestation.methodology)
    owner = env.d.registry.functions.project(PROJECT).call()[0]
    assert credits.balanceOf(owner, token).call() == _units(new_after) + _units(all_old_before)
    status = side.services.status()
    assert status["schedule"]["epoch"] == 2 and status["schedule"]["last_error"] is None
    assert status["minting"]["validator_set"] == {"epoch": 2, "threshold": 4, "members": 5}


def test_a_certificate_waits_until_the_chain_is_read_past_its_window(
        side: LedgerSide, env: Net) -> None:
    """Final once a block later than the window's start is read; not at an equal one."""
    start = (env.chain.now() // WINDOW_S + 3) * WINDOW_S
    window = side.world.window(start, side.world.validators[:3])
    assert side.submit(window) == "pending:schedule"
    side.follow()  # no new block: still not final
    assert side.store.pending_count() == 1 and side.ledger.waiting_for() == start
    assert side.submit(window) == "pending:schedule"  # delivered again: kept once
    assert side.store.pending_count() == 1
    if env.kind == "anvil":  # a block stamped exactly at the window's start is not enough
        env.chain.advance(start - env.chain.now())
        assert env.chain.now() == start
        side.follow()
        assert side.store.pending_count() == 1
        assert side.submit(window) == "pending:schedule"  # delivered again: still waits
    env.advance_past(start + WINDOW_S)
    side.follow()
    assert side.store.pending_count() == 0 and side.ledger.waiting_for() is None
    assert side.ledger.certificates["appended"] == 1
    assert side.submit(window) == "duplicate"
    side.mint()
    assert side.row(window).state == "minted"


def test_a_removed_validators_signature_is_left_out_of_the_mint(
        side: LedgerSide, env: Net) -> None:
    """Founder 3 leaves, the newcomer joins, k stays 3. A window before the switch certified
    by all four founders is minted with founder 3's signature left out (the contract would
    revert UnknownSigner on it); one whose other signers are fewer than k is StaleQuorum."""
    w = side.world
    f = w.validators
    executed_at = env.propose([
        env.set_call("addValidator", to_checksum_address(w.newcomer.address), 3),
        env.set_call("removeValidator", to_checksum_address(f[3].address), 3)],
        "Replace founder 3")
    switch = first_window(executed_at + DELAY_S, WINDOW_S)
    four = w.window(switch - WINDOW_S, f)
    short = w.window(switch - 2 * WINDOW_S, [f[0], f[1], f[3]])
    removed_after = w.window(switch, [f[0], f[1], f[3]])  # not a member of the new set
    env.advance_past(switch + 2 * WINDOW_S)
    side.follow()
    assert [side.submit(x) for x in (four, short, removed_after)] == [
        "appended", "appended", "refused:certificate:unknown_signer"]
    # as logged, with founder 3's signature, the certificate would not mint
    unfiltered = env.d.credits.encode_abi("mint", args=[
        attestation_args(four.attestation), list(four.certificate.signatures)])
    with pytest.raises(ContractReverted) as refused:
        side.services.node.call({"to": env.addresses.credits, "data": unfiltered})
    assert refused.value.error == "UnknownSigner"
    side.mint()
    minted = side.row(four)
    assert minted.state == "minted" and minted.units == str(_units(four))
    receipt = side.services.node.receipt(minted.tx_hash)
    assert receipt is not None and receipt.status == 1
    stale = side.row(short)
    assert (stale.state, stale.error, stale.tx_hash) == ("failed", "StaleQuorum", None)
    assert "2 of its 3 signers" in stale.detail


def test_a_methodology_term_from_governance_decides_the_version(
        side: LedgerSide, env: Net) -> None:
    """Version 2 at 500 g/kWh from ``effective`` on: a certificate there under version 1 is
    refused (wrong_methodology), one under version 2 is appended and minted at 500 g/kWh;
    the window before keeps version 1."""
    w = side.world
    effective = (env.chain.now() // WINDOW_S + 20) * WINDOW_S
    env.propose([(env.d.addresses.registry,
                  calldata(env.d.registry, "addMethodologyTerm", PROJECT, 2, 500, effective))],
                f"{PROJECT}: version 2, 500 g/kWh")
    keys = w.validators[:3]
    old_version = w.window(effective, keys)
    new_version = w.window(effective, keys, version=2, grid_ef_g_per_kwh=500)
    wrong_factor = w.window(effective + WINDOW_S, keys, version=2)  # 700 g/kWh: not the term's
    earlier = w.window(effective - WINDOW_S, keys)
    env.advance_past(effective + 3 * WINDOW_S)
    side.follow()
    assert [side.submit(x) for x in (old_version, new_version, wrong_factor, earlier)] == [
        "refused:wrong_methodology", "appended", "refused:wrong_attestation", "appended"]
    side.mint()
    assert side.row(new_version).state == "minted"
    assert side.row(new_version).units == str(500 * 500 // 1000)
    assert side.row(earlier).state == "minted"
