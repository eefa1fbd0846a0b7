"""The ledger process killed (SIGKILL) between sending a mint and recording it: still exactly
one mint, whether the transaction was mined meanwhile or dropped by the node.

Real parts: ``senken ledger run`` as a process (SQLite), Mosquitto, anvil. anvil's automining
is switched off once the contracts are deployed, so the ledger's mint transaction stays in the
node's pool: the ledger has committed its row as ``sent`` and cannot see a receipt when it is
killed. Then either the node mines it, or drops it (as a node does under pressure), and the
ledger is started again on the same database.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ledger.chain_events import EventCodec
from ledger.chain_node import ChainNode
from ledger.chain_tx import TxSender
from ledger.deploy import Addresses, ProjectSpec, deploy_all
from senken_core.credit_contracts import batch_token_id, load_artifact
from senken_core.topics import registry_topic, validator_topic
from tests.support.anvil import rpc, running_anvil
from tests.support.chain import TEST_GOVERNANCE
from tests.support.ledger import LedgerProcess, get_json
from tests.support.mosquitto import free_port
from tests.support.waiting import wait_until
from tests.unit.test_ledger_support import EF, HOUR, PROJECT, World

pytestmark = pytest.mark.integration

BROKER = 1883
VINTAGE = 2026


class ChainWorld(World):
    """World's validators and device, for the deployed contract."""

    def __init__(self, prefix: str, addresses: Addresses, owner: str) -> None:
        self.addresses, self.owner_address = addresses, owner
        super().__init__(prefix=prefix)

    def network_dict(self) -> dict[str, object]:
        d = super().network_dict()
        d.update(chain_id=self.addresses.chain_id,
                 credit_contract=self.addresses.credits.lower())
        return d

    def write(self, path: Path) -> Path:
        d = self.network_dict()
        [p] = d["projects"]  # type: ignore[misc]
        validators = ", ".join(f'"{v}"' for v in d["validators"])  # type: ignore[attr-defined]
        path.write_text(
            f'topic_prefix = "{self.prefix}"\nchain_id = {d["chain_id"]}\n'
            f'credit_contract = "{d["credit_contract"]}"\nthreshold = 3\n'
            f"validators = [{validators}]\n\n[[projects]]\n"
            f'id = "{PROJECT}"\nowner_key = "{p["owner_key"]}"\n'
            f'owner_address = "{self.owner_address}"\nwindow_seconds = {HOUR}\n'
            f'grid_ef_g_per_kwh = {EF}\nmodel_sha256 = "{p["model_sha256"]}"\n', "utf-8")
        return path


class Setup:
    def __init__(self, tmp: Path, url: str) -> None:
        self.url = url
        self.node = ChainNode.connect(url)
        w3 = self.node.w3
        deployer, minter = secrets.token_bytes(32), secrets.token_bytes(32)
        for key in (deployer, minter):
            tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "value": 10**20,
                                          "to": TxSender(self.node, key).address})
            w3.eth.wait_for_transaction_receipt(tx, timeout=30)
        self.owner = w3.eth.accounts[5]
        world_validators = World().validators
        self.addresses = deploy_all(
            self.node, deployer, [k.address for k in world_validators], 3,
            [ProjectSpec(PROJECT, self.owner, window_seconds=HOUR, grid_ef_g_per_kwh=EF)],
            settings=TEST_GOVERNANCE)
        self.world = ChainWorld(f"kill-{uuid.uuid4().hex[:8]}/v1", self.addresses, self.owner)
        network = self.world.write(tmp / "network.toml")
        self.addresses.save(tmp / "addresses.json")
        key_file = tmp / "minter.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(minter.hex() + "\n")
        home = tmp / "ledger"
        home.mkdir()
        port = free_port()
        config = home / "ledger.toml"
        config.write_text(
            f'state_dir = "{home}"\nnetwork_file = "{network}"\n'
            f'[mqtt]\nport = {BROKER}\nclient_id = "kill-{uuid.uuid4().hex[:8]}"\n'
            f'session_expiry_s = 60\n[api]\nport = {port}\n'
            f'[chain]\nurl = "{url}"\naddresses_file = "{tmp / "addresses.json"}"\n'
            f'minter_key_file = "{key_file}"\npoll_interval_s = 0.2\n'
            f"receipt_timeout_s = 2\n")
        self.ledger = LedgerProcess(config, f"http://127.0.0.1:{port}")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", BROKER)
        client.loop_start()
        try:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
        finally:
            client.loop_stop()
            client.disconnect()

    def rows(self, state: str | None = None) -> list[dict[str, Any]]:
        query = f"?state={state}" if state else ""
        return get_json(f"{self.ledger.api}/credits/queue{query}")[  # type: ignore[no-any-return]
            "mints"]

    def mint_logs(self, attestation_id: bytes) -> int:
        topic = EventCodec().topic("SenkenCredits", "AttestationMinted")
        return len(self.node.logs([self.addresses.credits], 0, self.node.block_number(),
                                  [topic, attestation_id]))

    def balance(self, token_id: int) -> int:
        credits = self.node.w3.eth.contract(address=self.addresses.credits,
                                            abi=load_artifact("SenkenCredits").abi)
        return int(credits.functions.balanceOf(self.owner, token_id).call())


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with ExitStack() as stack:
        url = stack.enter_context(running_anvil(tmp_path / "anvil"))
        s = Setup(tmp_path, url)
        stack.callback(s.ledger.kill)
        record_topic = registry_topic(s.world.device, s.world.prefix)
        s.publish(record_topic, s.world.record().to_wire(), retain=True)
        stack.callback(lambda: s.publish(record_topic, b"", retain=True))
        yield s


@pytest.mark.parametrize("then", ["mined", "dropped"])
def test_killed_between_send_and_record_still_one_mint(setup: Setup, then: str) -> None:
    s = setup
    s.ledger.start()
    rpc(s.url, "evm_setAutomine", [False])  # the mint will wait in the pool
    window = s.world.certify(0)
    att_id = window.attestation.id
    sender = s.world.validators[0].address
    s.publish(validator_topic(sender, "certificates", s.world.prefix), window.to_wire())
    wait_until(lambda: any(r["attestation_id"] == att_id.hex() for r in s.rows("sent")), 30,
               "the mint sent and its row committed as sent")
    [sent] = [r for r in s.rows("sent") if r["attestation_id"] == att_id.hex()]
    tx_hash = sent["tx_hash"]
    pending = rpc(s.url, "eth_getTransactionByHash", [tx_hash])
    assert isinstance(pending, dict) and pending["blockNumber"] is None  # in the pool
    s.ledger.kill()  # between sending and recording
    if then == "mined":
        rpc(s.url, "evm_mine", [])
    else:
        rpc(s.url, "anvil_dropTransaction", [tx_hash])
        assert rpc(s.url, "eth_getTransactionByHash", [tx_hash]) is None
    rpc(s.url, "evm_setAutomine", [True])

    s.ledger.start()  # the same database: it reconciles from the chain
    wait_until(lambda: any(r["attestation_id"] == att_id.hex() for r in s.rows("minted")), 30,
               "the window minted after the restart")
    [row] = [r for r in s.rows() if r["attestation_id"] == att_id.hex()]
    assert row["nonce"] == sent["nonce"]  # the same nonce, whichever way
    if then == "mined":
        assert row["tx_hash"] == tx_hash  # found on chain, nothing sent again
    assert s.mint_logs(att_id) == 1
    token_id = batch_token_id(PROJECT, VINTAGE, window.attestation.methodology)
    assert s.balance(token_id) == window.attestation.co2e_mg // 1000 == 350
