"""Governance changes the validators and the methodology on a real chain, and the validators
pick them up (issue 4): "a governance proposal that adds a validator and lowers nothing below
safety passes vote and timelock, and the validators pick the new set up".

On eth-tester and on anvil: the contracts are deployed (tests/support/chain.py deploy_all), a
real proposal (propose, vote, time travel, queue, execute) adds a fifth validator, the chain
watcher (validator/chain.py) reads it and hands the node a schedule whose switch is the
execution block's timestamp plus the activation delay; pure nodes driven by that schedule
certify the windows before the switch with the old set and those after it with the new one.
A proposal without quorum is defeated and changes no schedule. On anvil, five real
``senken validator run`` processes with ``[chain]`` pointing at it, on Mosquitto, certify a
window after the switch with the new validator's signature.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from web3 import Web3

from senken_core.evidence import CertifiedWindow
from senken_core.membership import MethodologyTerm, Schedule, first_window
from senken_core.network import NetworkConfig
from senken_core.quorum import verify_certificate
from senken_core.reading import encode_batch
from senken_core.secp256k1 import ValidatorKey, recover_address
from senken_core.topics import device_topic, registry_topic
from tests.support.anvil import running_anvil
from tests.support.chain import (
    BACKENDS,
    FAST_GOVERNANCE,
    TOKEN_SUPPLY,
    Chain,
    Deployment,
    ProjectSpec,
    calldata,
    deploy_all_with_receipts,
    fresh_chain,
    pass_proposal,
    send,
)
from tests.support.validator import TopicWatcher, ValidatorProcess, make_validator
from tests.support.validator_sim import MODEL, OWNER, PROJECT, Device, SimNet
from tests.support.waiting import wait_until
from validator.chain import ChainError, ChainWatcher
from validator.node import ValidatorNode

DELAY_S = 30  # activation delay of the watcher in the chain tests
BROKER = 1883


def _keys() -> list[ValidatorKey]:
    """Four founders and a newcomer with the lowest address of the five (a certificate holds
    the k lowest signers, so it is in every certificate it signs)."""
    founders = [ValidatorKey(hashlib.sha256(f"gov-validator-{i}".encode()).digest())
                for i in range(4)]
    i = 0
    while True:
        newcomer = ValidatorKey(hashlib.sha256(f"gov-newcomer-{i}".encode()).digest())
        if newcomer.address < min(k.address for k in founders):
            return [*founders, newcomer]
        i += 1


KEYS = _keys()
ADDR = [k.address for k in KEYS]


@dataclass
class Net:
    kind: str
    w3: Web3
    chain: Chain
    d: Deployment
    deployer: str
    small_voter: str

    def network(self, window_seconds: int, prefix: str = "gov/v1") -> NetworkConfig:
        """The network file every validator loads: the founders, this chain, its contract."""
        return NetworkConfig.from_dict({
            "validators": ["0x" + a.hex() for a in ADDR[:4]], "threshold": 3,
            "chain_id": self.w3.eth.chain_id, "credit_contract": self.d.addresses.credits,
            "topic_prefix": prefix,
            "projects": [{"id": PROJECT, "owner_key": OWNER.public_key.hex(),
                          "grid_ef_g_per_kwh": 691, "model_sha256": MODEL.hex(),
                          "window_seconds": window_seconds}]})

    def add_validator(self, key: ValidatorKey, k: int) -> tuple[str, int]:
        """Pass the proposal; (its final state, the execution block's timestamp)."""
        receipts: dict[str, Any] = {}
        _, state = pass_proposal(self.d, self.chain, self.deployer, [
            (self.d.addresses.validator_set,
             calldata(self.d.validator_set, "addValidator",
                      to_checksum_address(key.address), k))],
            f"Add validator {key.address.hex()} (k = {k}) {uuid.uuid4()}", [(self.deployer, 1)],
            receipts=receipts)
        block = self.w3.eth.get_block(receipts["execute"]["blockNumber"])
        return state, int(block["timestamp"])


def deploy(w3: Web3, kind: str, window_seconds: int) -> Net:
    accounts = list(w3.eth.accounts)
    deployer, small_voter = accounts[0], accounts[2]
    d = deploy_all_with_receipts(
        w3, deployer, ADDR[:4], 3, settings=FAST_GOVERNANCE,
        projects=[ProjectSpec(PROJECT, owner=accounts[1], window_seconds=window_seconds,
                              grid_ef_g_per_kwh=691)])
    send(d.token.functions.transfer(small_voter, TOKEN_SUPPLY // 100), deployer)
    send(d.token.functions.delegate(deployer), deployer)
    send(d.token.functions.delegate(small_voter), small_voter)
    chain = Chain(w3, kind)
    chain.advance(1)
    return Net(kind, w3, chain, d, deployer, small_voter)


@pytest.fixture(scope="module", params=BACKENDS)
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Net]:
    with ExitStack() as stack:
        _url, w3 = fresh_chain(request.param, stack, tmp_path_factory.mktemp("anvil"))
        yield deploy(w3, request.param, window_seconds=10)


@pytest.fixture
def env(net: Net) -> Iterator[Net]:
    with net.chain.restored():
        yield net


def watcher(env: Net, **kw: Any) -> ChainWatcher:
    return ChainWatcher(env.w3, env.network(10), activation_delay_s=DELAY_S, **kw)


def test_a_passed_proposal_reaches_the_node_with_its_activation(env: Net) -> None:
    watch = watcher(env)
    before = watch.poll()
    assert before is not None and watch.poll() is None  # nothing new: no new schedule
    assert [c.epoch for c in before.changes] == [1]
    assert before.latest.members == tuple(sorted(ADDR[:4])) and before.latest.threshold == 3
    assert before.term_for(PROJECT, 0) == MethodologyTerm(0, 1, 691)
    node = ValidatorNode(KEYS[0], env.network(10), schedule=before)

    state, executed_at = env.add_validator(KEYS[4], 3)
    assert state == "Executed"
    after = watch.poll()
    assert after is not None
    assert after.latest.epoch == 2 and after.latest.block_timestamp == executed_at
    assert after.activation_of(2) == executed_at + DELAY_S
    switch = first_window(executed_at + DELAY_S, 10)
    assert after.validators_for(switch).members == frozenset(ADDR)
    assert after.validators_for(switch - 10) == before.latest.validators  # the old set
    node.on_schedule(after, float(env.chain.now()))
    assert node.schedule == after and node.stats.schedule_epoch == 2
    assert node._view(_key(switch)).validators.members == frozenset(ADDR)  # type: ignore[union-attr]
    assert node._view(_key(switch - 10)).validators.threshold == 3  # type: ignore[union-attr]
    # a watcher that starts now reads the same schedule from the whole history
    assert watcher(env).poll() == after


def _key(start: int) -> Any:
    from validator.agreement import WindowKey

    return WindowKey(PROJECT, "meter-1", start)


def test_a_defeated_proposal_changes_no_schedule(env: Net) -> None:
    watch = watcher(env)
    before = watch.poll()
    d = env.d
    _, state = pass_proposal(d, env.chain, env.small_voter, [
        (d.addresses.validator_set,
         calldata(d.validator_set, "addValidator", to_checksum_address(ADDR[4]), 3)),
    ], "Add a validator with 1% of the votes", [(env.small_voter, 1)])
    assert state == "Defeated"
    assert watch.poll() is None and watch.last == before
    assert d.validator_set.functions.epoch().call() == 1


def test_a_methodology_term_passed_by_governance_is_read(env: Net) -> None:
    watch = watcher(env)
    watch.poll()
    effective = (env.chain.now() // 10 + 100) * 10
    d = env.d
    _, state = pass_proposal(d, env.chain, env.deployer, [
        (d.addresses.registry,
         calldata(d.registry, "addMethodologyTerm", PROJECT, 2, 500, effective))],
        "pv-plant-7: 500 g/kWh", [(env.deployer, 1)])
    assert state == "Executed"
    schedule = watch.poll()
    assert schedule is not None
    assert schedule.term_for(PROJECT, effective - 10) == MethodologyTerm(0, 1, 691)
    assert schedule.term_for(PROJECT, effective) == MethodologyTerm(effective, 2, 500)
    node = ValidatorNode(KEYS[0], env.network(10), schedule=schedule)
    view = node._view(_key(effective))
    assert view is not None and view.terms.methodology_version == 2
    assert view.terms.methodology_terms().grid_ef_g_per_kwh == 500


def test_a_wrong_chain_or_address_is_a_chain_error(env: Net) -> None:
    wrong = NetworkConfig.from_dict({**_as_dict(env.network(10)), "chain_id": 5})
    with pytest.raises(ChainError, match="chain id"):
        ChainWatcher(env.w3, wrong, activation_delay_s=0).poll()
    with pytest.raises(ChainError, match="no contract"):
        watcher(env, validator_set="0x" + "11" * 20).poll()
    # starting after the set's deployment, its first epoch cannot be found
    with pytest.raises(ChainError, match="from_block"):
        watcher(env, from_block=env.w3.eth.block_number).poll()


def _as_dict(network: NetworkConfig) -> dict[str, Any]:
    return {"validators": list(network.validators), "threshold": network.threshold,
            "chain_id": network.chain_id, "credit_contract": network.credit_contract,
            "topic_prefix": network.topic_prefix,
            "projects": [{"id": p.id, "owner_key": p.owner_key,
                          "grid_ef_g_per_kwh": p.grid_ef_g_per_kwh,
                          "model_sha256": p.model_sha256, "window_seconds": p.window_seconds}
                         for p in network.projects]}


def test_pure_nodes_follow_the_watchers_schedule_across_the_switch(env: Net) -> None:
    """Five pure nodes (k 3 -> 4, one founder down so the newcomer is needed) on a simulated
    network, fed the schedules the real watcher read, on the chain's clock."""
    watch = watcher(env)
    first = watch.poll()
    assert first is not None
    net = env.network(10, prefix="sim/v1")
    nodes = [ValidatorNode(k, net, schedule=first, grace_s=2.0, round_timeout_s=2.0)
             for k in KEYS]
    state, executed_at = env.add_validator(KEYS[4], 4)
    assert state == "Executed"
    second = watch.poll()
    assert second is not None
    switch = first_window(executed_at + DELAY_S, 10)
    start = switch - 30  # three windows before the switch, three after
    sim = SimNet(nodes, now=float(start - 5))
    sim.crash(1)
    for i in (0, 2, 3, 4):  # each node's watcher hands the schedule over at its own moment
        sim.give_schedule(i, second)
    device = Device("meter-1")
    sim.register(device)
    sim.deliver()
    for w in range(6):
        for j in range(5):
            t = start + w * 10 + j * 2 + 0.5
            sim.run_until(t)
            sim.publish_readings(device, [device.read(t)])
    sim.run_until(start + 60 + 60)
    certified = _certified(sim.certificates, second, nodes[0])
    assert sorted(certified) == [start + 10 * w for w in range(6)]
    for window_start, signers in certified.items():
        if window_start < switch:
            assert len(signers) == 3 and signers <= set(ADDR[:4])
        else:
            assert len(signers) == 4 and ADDR[4] in signers


def _certified(payloads: list[bytes], schedule: Schedule,
               node: ValidatorNode) -> dict[int, set[bytes]]:
    """window start -> the signers of its certificate, each checked against the window's set
    (one content per window)."""
    out: dict[int, set[bytes]] = {}
    contents: dict[int, bytes] = {}
    for payload in payloads:
        window = CertifiedWindow.from_wire(payload)
        att = window.attestation
        verify_certificate(window.certificate, schedule.validators_for(att.window_start),
                           node.domain)
        assert contents.setdefault(att.window_start, att.to_wire()) == att.to_wire()
        digest = att.digest(node.domain)
        out[att.window_start] = {recover_address(digest, s)
                                 for s in window.certificate.signatures}
    return out


# --- real validator processes against anvil and Mosquitto ------------------------------------

WINDOW_S = 2


def _network_file(path: Path, net: Net, prefix: str) -> Path:
    network = net.network(WINDOW_S, prefix)
    lines = [f'topic_prefix = "{prefix}"', f"threshold = {network.threshold}",
             "validators = [" + ", ".join(f'"{a}"' for a in network.validators) + "]",
             f"chain_id = {network.chain_id}", f'credit_contract = "{network.credit_contract}"',
             "", "[[projects]]", f'id = "{PROJECT}"',
             f'owner_key = "{OWNER.public_key.hex()}"', "grid_ef_g_per_kwh = 691",
             f'model_sha256 = "{MODEL.hex()}"', f"window_seconds = {WINDOW_S}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.integration
def test_validator_processes_pick_up_a_new_validator_from_the_chain(
        tmp_path: Path, topic_prefix: str) -> None:
    """Five ``senken validator run`` processes with ``[chain]`` on anvil (the fifth is in no
    network file: the chain makes it a member); founder 1 is down, so after the switch
    (k = 4 of 5) no certificate forms without the newcomer."""
    activation_delay_s = 3
    with ExitStack() as stack:
        url = stack.enter_context(running_anvil(tmp_path / "anvil"))
        net = deploy(Web3(Web3.HTTPProvider(url)), "anvil", window_seconds=WINDOW_S)
        network_file = _network_file(tmp_path / "network.toml", net, topic_prefix)
        domain = net.network(WINDOW_S, topic_prefix).domain()
        processes = []
        for i, key in enumerate(KEYS):
            if i == 1:
                continue  # founder 1 is down throughout
            config, _ = make_validator(
                tmp_path / f"v{i}", BROKER, network_file, key,
                chain={"url": url, "poll_s": 0.3, "activation_delay_s": activation_delay_s})
            process = ValidatorProcess(config)
            stack.callback(process.kill)
            processes.append(process)
        watch = stack.enter_context(
            TopicWatcher(BROKER, f"{topic_prefix}/validators/+/certificates"))
        with ThreadPoolExecutor(len(processes)) as pool:  # they start in parallel
            list(pool.map(lambda p: p.start(), processes))
        device = Device(f"meter-{uuid.uuid4().hex[:6]}")
        watch.client.publish(registry_topic(device.name, topic_prefix), device.record(),
                             qos=1, retain=True).wait_for_publish(10)
        stack.callback(lambda: watch.client.publish(
            registry_topic(device.name, topic_prefix), b"", qos=1, retain=True))
        feeder = _Feeder(watch, device, topic_prefix)
        stack.callback(feeder.stop)
        feeder.start()

        def certified() -> dict[int, set[bytes]]:
            return _signers_by_window(watch, domain)

        wait_until(lambda: len(certified()) >= 1, 30, "a certificate by the founders")
        state, executed_at = net.add_validator(KEYS[4], 4)
        assert state == "Executed"
        switch = first_window(executed_at + activation_delay_s, WINDOW_S)

        def after_switch() -> dict[int, set[bytes]]:
            return {w: s for w, s in certified().items() if w >= switch}

        wait_until(lambda: len(after_switch()) >= 2, 45,
                   f"two certificates of windows from {switch} on")
        for window_start, signers in certified().items():
            if window_start < switch:
                assert len(signers) == 3 and signers <= set(ADDR[:4])
            else:
                assert len(signers) == 4 and ADDR[4] in signers
        health = processes[-1].health()
        assert health is not None and health["attestations_signed"] >= 2
        # operators see the change on /metrics: the set's epoch, the schedule applied, and
        # the chain answering
        for process in processes:
            metrics = process.metrics()
            assert "senken_validator_validator_set_epoch 2.0" in metrics, metrics
            assert "senken_validator_chain_polls_failing 0.0" in metrics
            assert re.search(r"^senken_validator_schedules_applied_total [1-9]", metrics,
                             re.MULTILINE), metrics


class _Feeder:
    """One device publishing a signed reading every 0.4 s, stamped with the wall clock."""

    def __init__(self, watch: TopicWatcher, device: Device, prefix: str) -> None:
        self.watch, self.device = watch, device
        self.topic = device_topic(device.name, "readings", prefix)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.4):  # pacing the device, not synchronising the test
            self.watch.publish(self.topic, encode_batch([self.device.read(time.time())]))


def _signers_by_window(watch: TopicWatcher, domain: Any) -> dict[int, set[bytes]]:
    """window start -> the signers of the certified windows published for it."""
    with watch.lock:
        payloads = [p for t, p, _r in watch.messages if t.endswith("/certificates")]
    out: dict[int, set[bytes]] = {}
    for payload in payloads:
        window = CertifiedWindow.from_wire(payload)
        digest = window.attestation.digest(domain)
        out[window.attestation.window_start] = {recover_address(digest, s)
                                                for s in window.certificate.signatures}
    return out
