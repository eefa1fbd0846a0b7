"""``senken chain dev-node``: eth-tester's chain over JSON-RPC on loopback, the demo's chain.

Shown here: the product's deployment and the ledger's minter work over it exactly as over a
real node, foundry's ``cast`` reads from it, and any body at all gets a JSON-RPC answer
(never an exception, never a dropped connection).
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.chain_node import ChainNode
from ledger.chain_tx import TxSender
from ledger.credit_store import CreditStore
from ledger.deploy import ProjectSpec, deploy_all
from ledger.devchain import DevChain, DevChainError
from ledger.minting import MintWorker
from ledger.service import Ledger
from ledger.store import LedgerStore
from senken.cli import cli
from senken_core.credit_contracts import batch_token_id
from tests.support.anvil import cast_call
from tests.support.chain import TEST_GOVERNANCE
from tests.unit.test_ledger_support import EF, HOUR, PROJECT, World


@pytest.fixture(scope="module")
def chain() -> Iterator[DevChain]:
    c = DevChain()
    c.start()
    yield c
    c.stop()


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def is_answer(reply: object) -> bool:
    if isinstance(reply, list):
        return bool(reply) and all(is_answer(r) for r in reply)
    return isinstance(reply, dict) and reply.get("jsonrpc") == "2.0" and (
        "result" in reply or ("error" in reply and isinstance(reply["error"]["code"], int)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4), max_leaves=12)
requests = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "id": st.integers(0, 99),
     "method": st.sampled_from(["eth_chainId", "eth_getBalance", "eth_call", "eth_getLogs",
                                "eth_sendRawTransaction", "eth_getBlockByNumber",
                                "eth_estimateGas", "no_such_method"]),
     "params": st.lists(json_values, max_size=3)})


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=200) | requests.map(lambda r: json.dumps(r).encode())
       | st.lists(requests, min_size=1, max_size=3).map(lambda r: json.dumps(r).encode())
       | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_body_gets_a_json_rpc_answer(chain: DevChain, body: bytes) -> None:
    reply = chain.answer(body)
    assert is_answer(reply)
    json.dumps(reply)  # and it is JSON as it stands


def test_over_http_bad_requests_are_answered_and_the_node_goes_on(chain: DevChain) -> None:
    status, reply = post(chain.url, b"{not json")
    assert status == 200 and reply["error"]["code"] == -32700  # type: ignore[index]
    status, reply = post(chain.url, b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}')
    assert status == 200 and reply == {"jsonrpc": "2.0", "id": 1,
                                       "result": hex(131277322940537)}
    status, reply = post(chain.url, b"x" * 10, {"Content-Length": str(64 * 1024 * 1024)})
    assert status == 413


def test_the_dev_node_listens_on_loopback_only() -> None:
    with pytest.raises(DevChainError, match="loopback"):
        DevChain(host="0.0.0.0")


def test_deploy_mint_and_cast_over_the_dev_node(chain: DevChain, tmp_path: Path) -> None:
    """The product's deployment, the ledger's minter and cast, all through its URL."""
    node = ChainNode.connect(chain.url)
    deployer, minter_key, owner_key = (secrets.token_bytes(32) for _ in range(3))
    addresses_of = [TxSender(node, k).address for k in (deployer, minter_key, owner_key)]
    for address in addresses_of:
        chain.fund(address)
    world = World()
    addresses = deploy_all(node, deployer, [k.address for k in world.validators], 3,
                           [ProjectSpec(PROJECT, addresses_of[2], window_seconds=HOUR,
                                        grid_ef_g_per_kwh=EF)],
                           settings=TEST_GOVERNANCE)

    class Here(World):
        def network_dict(self) -> dict[str, object]:
            return {**super().network_dict(), "chain_id": addresses.chain_id,
                    "credit_contract": addresses.credits.lower()}

    here = Here()
    store = LedgerStore.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        ledger = Ledger(here.network, store)
        assert ledger.on_registry(here.record().to_wire(), here.device) == "applied"
        window = here.certify(0)
        assert ledger.on_certificate(window.to_wire()).result == "appended"
        credits = CreditStore(store)
        MintWorker(credits, TxSender(node, minter_key), addresses.credits,
                   first_block=addresses.deployed_block).run_until_idle()
        row = credits.mint_row(window.attestation.id)
        assert row is not None and row.state == "minted", row
    finally:
        store.close()
    token_id = batch_token_id(PROJECT, 2026, window.attestation.methodology)
    [balance] = json.loads(cast_call(chain.url, addresses.credits,
                                     "balanceOf(address,uint256)(uint256)", addresses_of[2],
                                     token_id, "--json"))
    assert int(balance) == window.attestation.co2e_mg // 1000 == 350


def test_dev_node_command_refuses_a_bad_address() -> None:
    result = CliRunner().invoke(cli, ["chain", "dev-node", "--port", "0", "--fund", "0x12"])
    assert result.exit_code == 2 and "--fund" in result.output
