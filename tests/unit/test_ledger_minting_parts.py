"""The minting's pure parts: nonces, fees, revert decoding, event decoding, URLs, key files,
the [chain] config and the addresses file (no chain, no database)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address

from ledger.chain_app import load_minter_key
from ledger.chain_events import EventCodec, json_value
from ledger.chain_node import RawLog, decode_revert, redact_url, revert_data
from ledger.chain_tx import Fees, NonceBook
from ledger.config import LedgerConfig
from ledger.deploy import Addresses, AddressesError, DeployError, ProjectSpec, network_mismatch
from senken_core.eip712 import keccak256
from senken_core.errors import ConfigError, KeyFileError
from senken_core.network import NetworkConfig, ProjectConfig
from senken_core.secp256k1 import ValidatorKey
from tests.unit.test_ledger_support import World

ADDRESS = "0x" + "ab" * 20


def test_nonces_count_on_and_holes_are_handed_out_first() -> None:
    book = NonceBook()
    book.reset(5)
    assert [book.take() for _ in range(3)] == [5, 6, 7]
    book.give_back(6)
    assert book.take() == 6 and book.take() == 8
    # a restart: the chain counts 10, our rows hold 10 (dropped) and 12 (sent)
    book.reset(10, held=[10, 12])
    assert [book.take() for _ in range(3)] == [11, 13, 14]
    book.give_back(99)  # never taken: ignored
    assert book.take() == 15


def test_fees_bump_every_field_by_the_percentage_rounding_up() -> None:
    eip1559 = Fees(max_fee_per_gas=1000, max_priority_fee_per_gas=10)
    assert eip1559.bumped(20) == Fees(1200, 12)
    assert eip1559.bumped(10, levels=2) == Fees(1210, 13)  # 10 -> 11 -> 12.1 rounds up
    assert Fees(gas_price=1).bumped(10).gas_price == 2  # at least 1 wei
    assert eip1559.params() == {"type": 2, "maxFeePerGas": 1000, "maxPriorityFeePerGas": 10}
    assert Fees(gas_price=7).params() == {"gasPrice": 7} and Fees(gas_price=7).cap == 7


def test_custom_errors_are_named_with_their_arguments() -> None:
    data = keccak256(b"TooFewSignatures(uint256,uint256)")[:4] + abi_encode(
        ["uint256", "uint256"], [2, 3])
    assert decode_revert(data) == ("TooFewSignatures", (2, 3))
    minted = keccak256(b"AlreadyMinted(bytes32)")[:4] + b"\x11" * 32
    assert decode_revert(minted) == ("AlreadyMinted", (b"\x11" * 32,))
    require = bytes.fromhex("08c379a0") + abi_encode(["string"], ["nope"])
    assert decode_revert(require) == ("Error", ("nope",))
    assert decode_revert(b"") == ("", ())
    assert decode_revert(b"\xde\xad\xbe\xef") == ("unknown", (b"\xde\xad\xbe\xef",))
    assert decode_revert(minted[:10])[0] == "AlreadyMinted"  # truncated: named, not raised


def test_revert_data_is_found_in_web3_and_eth_tester_errors() -> None:
    class Revert(Exception):
        pass

    class Web3Style(Exception):
        def __init__(self, data: str) -> None:
            super().__init__("execution reverted")
            self.data = data

    assert revert_data(Web3Style("0x1234")) == b"\x12\x34"
    inner = Revert(b"\x01\x02")
    try:
        try:
            raise inner
        except Revert as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert revert_data(outer) == b"\x01\x02"
    assert revert_data(Exception("execution reverted: b'\\x05\\x06'")) == b"\x05\x06"
    assert revert_data(Exception("something else")) is None


def test_node_urls_lose_credentials_paths_and_queries() -> None:
    assert redact_url("eth-tester") == "eth-tester"
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert redact_url("https://user:pw@rpc.example.org/v3/SECRETKEY?x=1") == \
        "https://rpc.example.org/..."
    assert "SECRET" not in redact_url("https://rpc.example.org/SECRET")


def test_events_decode_by_address_and_topic() -> None:
    codec = EventCodec({"ValidatorSet": ADDRESS})
    topic = codec.topic("ValidatorSet", "ValidatorSetChanged")
    members = ["0x" + "01" * 20, "0x" + "02" * 20]
    raw = RawLog(to_checksum_address(ADDRESS), (topic, (7).to_bytes(32, "big")),
                 abi_encode(["address[]", "uint256"], [members, 2]), 5, b"\x00" * 32,
                 b"\x01" * 32, 0)
    event = codec.decode(raw)
    assert event is not None and (event.contract, event.name) == ("ValidatorSet",
                                                                  "ValidatorSetChanged")
    assert event.args["epoch"] == 7 and event.args["threshold"] == 2
    assert [m.lower() for m in event.args["members"]] == members
    other = RawLog(to_checksum_address("0x" + "cd" * 20), raw.topics, raw.data, 5,
                   b"\x00" * 32, b"\x01" * 32, 0)
    assert codec.decode(other) is None  # not one of ours
    garbage = RawLog(raw.address, raw.topics, b"\x00", 5, b"\x00" * 32, b"\x01" * 32, 0)
    assert EventCodec({"ValidatorSet": ADDRESS}).decode(garbage) is None
    assert json_value({"a": b"\x01", "b": 2**60, "c": (1, 2)}) == {
        "a": "0x01", "b": str(2**60), "c": [1, 2]}


def test_minter_key_files_must_be_private_and_well_formed(tmp_path: Path) -> None:
    key = ValidatorKey(b"\x07" * 32)
    senken = tmp_path / "senken.key"
    key.save(senken)
    assert load_minter_key(senken) == b"\x07" * 32
    plain = tmp_path / "plain.key"
    plain.write_text("0x" + "07" * 32 + "\n")
    plain.chmod(0o600)
    assert load_minter_key(plain) == b"\x07" * 32
    plain.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_minter_key(plain)
    bad = tmp_path / "bad.key"
    bad.write_text("zz" * 32)
    bad.chmod(0o600)
    with pytest.raises(KeyFileError) as caught:
        load_minter_key(bad)
    assert "zz" not in str(caught.value)


def test_the_chain_section_is_checked() -> None:
    cfg = LedgerConfig.from_dict({"chain": {"url": "eth-tester", "confirmations": 3}})
    assert cfg.chain.url == "eth-tester" and cfg.chain.confirmations == 3
    assert LedgerConfig.from_dict({}).chain.url is None  # no chain: no minting
    with pytest.raises(ConfigError) as caught:
        LedgerConfig.from_dict({"chain": {"url": "ws://node", "fee_bump_percent": 5,
                                          "colour": "blue"}})
    problems = "\n".join(caught.value.problems)
    assert "chain.url" in problems and "chain.fee_bump_percent" in problems
    assert "chain.colour: unknown setting" in problems


def test_the_ledger_uses_the_network_files_activation_delay_and_refuses_another() -> None:
    from dataclasses import replace

    from ledger.chain_app import activation_delay, open_chain
    from ledger.config import ChainConfig

    network = World().network
    mine = ChainConfig(url="http://127.0.0.1:1", activation_delay_s=60)
    assert activation_delay(ChainConfig(url="x"), network) == 600  # neither: the default
    assert activation_delay(mine, network) == 60  # its own where the file has none
    assert activation_delay(ChainConfig(url="x"), replace(network, activation_delay_s=45)) == 45
    with pytest.raises(ConfigError, match="60 in \\[chain\\] of the ledger's config but 45"):
        # refused before any connection is made (nothing listens on port 1)
        open_chain(mine, replace(network, activation_delay_s=45), None)  # type: ignore[arg-type]


def test_addresses_round_trip_and_must_match_the_network_file(tmp_path: Path) -> None:
    a = Addresses(31337, *(["0x" + f"{i:040x}" for i in range(1, 7)]), deployed_block=3)
    path = tmp_path / "addresses.json"
    a.save(path)
    loaded = Addresses.load(path)
    assert loaded.credits.lower() == a.credits and loaded.deployed_block == 3
    assert json.loads(path.read_text())["schema"] == 1
    path.write_text("{}")
    with pytest.raises(AddressesError, match="schema"):
        Addresses.load(path)
    with pytest.raises(AddressesError, match="senken chain deploy"):
        Addresses.load(tmp_path / "missing.json")
    network = World().network
    assert network_mismatch(network, loaded) == [f'credit_contract = "{a.credits}"']
    moved = NetworkConfig.from_dict({**World().network_dict(), "chain_id": 1,
                                     "credit_contract": a.credits})
    assert network_mismatch(moved, loaded) == ["chain_id = 31337"]


def test_a_project_needs_an_owner_address_to_be_deployed() -> None:
    project = World().network.projects[0]
    assert project.owner_address is None
    with pytest.raises(DeployError, match="owner_address"):
        ProjectSpec.of(project)
    data = {**World().network_dict()}
    data["projects"] = [{**data["projects"][0], "owner_address": ADDRESS}]  # type: ignore[index]
    owned: ProjectConfig = NetworkConfig.from_dict(data).projects[0]
    spec = ProjectSpec.of(owned)
    assert spec.owner.lower() == ADDRESS and spec.window_seconds == owned.window_seconds
    data["projects"] = [{**data["projects"][0], "owner_address": "0x12"}]  # type: ignore[index]
    with pytest.raises(ConfigError, match="owner_address"):
        NetworkConfig.from_dict(data)
