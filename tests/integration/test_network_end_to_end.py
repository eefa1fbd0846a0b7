"""The validator network end to end, all real parts: simulated sensors on ptys, edge agents,
a Mosquitto, four validators (k = 3) as processes re-running the anomaly model, the ledger on
PostgreSQL exporting to a VictoriaMetrics and minting on an anvil (the contracts deployed for
the network file, as ``senken chain deploy`` does).

What a user would notice: windows get certified and logged, the log verifies, every
certificate checks offline down to the device-signed readings, readings reach the time-series
store exactly once even across its restart; one validator down changes nothing, two down stop
certificates until one returns; attacks published with mosquitto_pub are rejected with their
reason and never counted; a validator that signs something else is never in a certificate;
every logged window is minted once, and the project owner holds exactly the attested grams.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from firmware_sim.device import SimulatedDevice
from ledger.chain_node import ChainNode
from ledger.chain_tx import TxSender
from ledger.deploy import Addresses, deploy_network
from senken_core.credit_contracts import batch_token_id, load_artifact
from senken_core.evidence import CertifiedWindow, check_certified_window
from senken_core.keys import READING_TAG, DeviceKey
from senken_core.network import load_network_config
from senken_core.reading import Reading, decode_batch, encode_batch
from senken_core.registry import DeviceRecord, SignedDeviceRecord
from senken_core.secp256k1 import ValidatorKey, recover_address
from senken_core.topics import device_topic, registry_topic
from tests.support.agent import AgentProcess, make_device
from tests.support.anvil import running_anvil
from tests.support.chain import TEST_GOVERNANCE
from tests.support.ledger import LedgerProcess, get_json
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.postgres import fresh_database
from tests.support.validator import TopicWatcher, ValidatorProcess, make_validator, write_network
from tests.support.victoria import VictoriaMetrics
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "pv-plant-7"
WINDOW_S = 2
OWNER = DeviceKey.generate()
OWNER_ADDRESS = "0x" + ValidatorKey.generate().address.hex()  # the project's EVM account


def _model_sha() -> str:
    import hashlib
    path = ROOT / "senken_core" / "models" / "anomaly-v2.tflite"
    return hashlib.sha256(path.read_bytes()).hexdigest()


_get = get_json


@dataclass
class Network:
    dir: Path
    broker: Mosquitto
    prefix: str
    network_file: Path
    validators: list[ValidatorProcess]
    keys: list[ValidatorKey]
    ledger: LedgerProcess
    victoria: VictoriaMetrics
    chain_url: str = ""
    addresses: Addresses | None = None
    devices: dict[str, DeviceKey] = field(default_factory=dict)
    sims: list[SimulatedDevice] = field(default_factory=list)
    agents: list[AgentProcess] = field(default_factory=list)

    def register(self, device: str, public_key: bytes, version: int = 1,
                 revoked: bool = False) -> None:
        record = DeviceRecord(PROJECT, device, public_key, "elec_meter",
                              bytes.fromhex(_model_sha()), version, revoked)
        mosquitto_pub(self.broker.port, registry_topic(device, self.prefix),
                      record.sign(OWNER).to_wire(), retain=True)

    def certified(self) -> dict[tuple[str, int], dict[str, Any]]:
        return {(a["device"], a["window_start"]): a for a in self.ledger.attestations()}

    def metric(self, i: int, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.validators[i].metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()) and \
                    (head == name or head.startswith(name + "{")):
                total += float(value)
        return total


def four_validators(tmp_path: Path, prefix: str, keys: list[ValidatorKey] | None = None,
                    **top: Any) -> tuple[list[ValidatorKey], Path]:
    """Four validator keys and a network file with k = 3 and the project (its credits go to
    OWNER_ADDRESS); ``top``: e.g. the chain_id and credit_contract of a deployment."""
    keys = keys or [ValidatorKey.generate() for _ in range(4)]
    return keys, write_network(tmp_path / "network.toml", [k.address for k in keys], prefix,
                               threshold=3, projects=[{
                                   "id": PROJECT, "owner_key": OWNER.public_key.hex(),
                                   "owner_address": OWNER_ADDRESS,
                                   "grid_ef_g_per_kwh": 691, "model_sha256": _model_sha(),
                                   "window_seconds": WINDOW_S}], **top)


def deploy_contracts(url: str, tmp_path: Path, network_file: Path) -> tuple[Addresses, Path]:
    """The contracts on the chain at ``url`` for ``network_file`` (ledger.deploy, as
    ``senken chain deploy`` does); returns the addresses and a funded minter key file."""
    node = ChainNode.connect(url)
    deployer, minter = secrets.token_bytes(32), secrets.token_bytes(32)
    w3 = node.w3
    for key in (deployer, minter):
        tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "value": 10**20,
                                      "to": TxSender(node, key).address})
        w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    addresses = deploy_network(node, deployer, load_network_config(network_file),
                               settings=TEST_GOVERNANCE)
    key_file = tmp_path / "minter.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(minter.hex() + "\n")
    addresses.save(tmp_path / "addresses.json")
    return addresses, key_file


def mosquitto_pub(port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish with the Mosquitto command-line client, as an attacker or an operator would."""
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic,
                    "-s", *(["-r"] if retain else [])], input=payload, check=True, timeout=10)


@pytest.fixture
def network(tmp_path: Path, topic_prefix: str) -> Iterator[Network]:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    victoria = VictoriaMetrics(tmp_path / "victoria")
    victoria.start()
    keys, network_file = four_validators(tmp_path, topic_prefix)
    chain = ExitStack()
    anvil = chain.enter_context(running_anvil(tmp_path / "anvil", block_time_s=1))
    addresses, minter_key = deploy_contracts(anvil, tmp_path, network_file)
    # validators sign for the deployed contract's EIP-712 domain
    keys, network_file = four_validators(tmp_path, topic_prefix, keys,
                                         chain_id=addresses.chain_id,
                                         credit_contract=addresses.credits.lower())
    validators = []
    for i, key in enumerate(keys):
        config, _ = make_validator(tmp_path / f"validator-{i}", broker.port, network_file, key,
                                   model={"check": True})
        validators.append(ValidatorProcess(config))
    api_port = free_port()
    with chain, fresh_database("e2e") as db_url:
        ledger_dir = tmp_path / "ledger"
        ledger_dir.mkdir()
        config = ledger_dir / "ledger.toml"
        config.write_text(
            f'state_dir = "{ledger_dir}"\nnetwork_file = "{network_file}"\n'
            f'database_url = "{db_url}"\n'
            f'[mqtt]\nport = {broker.port}\nclient_id = "ledger-{topic_prefix[:15]}"\n'
            f'session_expiry_s = 300\n[api]\nport = {api_port}\n'
            f'[timeseries]\nurl = "{victoria.url}"\nretry_max_s = 1.0\n'
            f'[chain]\nurl = "{anvil}"\naddresses_file = "{tmp_path / "addresses.json"}"\n'
            f'minter_key_file = "{minter_key}"\npoll_interval_s = 0.3\n')
        net = Network(tmp_path, broker, topic_prefix, network_file, validators, keys,
                      LedgerProcess(config, f"http://127.0.0.1:{api_port}"), victoria, anvil,
                      addresses)
        try:
            for v in validators:
                v.start()
            net.ledger.start()
            yield net
        finally:
            for agent in net.agents:
                agent.kill()
            for sim in net.sims:
                sim.stop()
            for v in validators:
                if v.alive():
                    v.kill()
            net.ledger.stop()
            victoria.stop()
            broker.stop()


def start_devices(net: Network, count: int, rate_hz: float = 10) -> list[str]:
    names = []
    for i in range(count):
        name = f"meter-{i}"
        sim = SimulatedDevice("elec_meter", rate_hz=rate_hz, seed=i, link=net.dir / f"tty-{i}")
        net.sims.append(sim)
        config, public_key = make_device(net.dir / f"agent-{i}", name, str(sim.link),
                                         net.broker.port, net.prefix)
        net.devices[name] = DeviceKey.load(net.dir / f"agent-{i}" / "device.key")
        net.register(name, public_key)
        agent = AgentProcess(config)
        net.agents.append(agent)
        agent.start()
        sim.start()
        names.append(name)
    return names


def windows_of(certs: dict[tuple[str, int], dict[str, Any]], device: str) -> list[int]:
    return sorted(start for d, start in certs if d == device)


def check_offline(net: Network, att: dict[str, Any]) -> tuple[bytes, ...]:
    """What a buyer does: fetch the evidence and the registry record, check them offline."""
    evidence = CertifiedWindow.from_wire(
        _get(f"{net.ledger.api}/attestations/{att['id']}/evidence"))
    record = SignedDeviceRecord.from_wire(
        _get(f"{net.ledger.api}/attestations/{att['id']}/registry")).verify(OWNER.public_key)
    terms = load_network_config(net.network_file)
    return check_certified_window(evidence, terms.validator_set(), terms.domain(),
                                  {record.device: record.public_key}.get,
                                  terms.project(PROJECT).methodology_terms())


def test_windows_are_certified_logged_and_exported_and_survive_failures(
        network: Network) -> None:
    net = network
    devices = start_devices(net, 2)
    # 1. windows get certified by the quorum and logged
    wait_until(lambda: all(len(windows_of(net.certified(), d)) >= 3 for d in devices), 60,
               "three certified windows per device")
    for att in net.certified().values():
        assert len(check_offline(net, att)) >= 3  # k distinct registered validators signed
    report = _get(net.ledger.api + "/log/verify")
    assert report["first_bad_index"] is None and report["entries"] >= 6

    # 2. the time-series store goes away and comes back: no point lost, none doubled
    net.victoria.stop()
    before = {k for k in net.certified()}
    wait_until(lambda: len(net.certified().keys() - before) >= 4, 60,
               "windows certified while VictoriaMetrics is down")
    net.victoria.start()

    # 3. one validator down: certificates continue
    net.validators[3].kill()
    down_at = max(start for _, start in net.certified())
    wait_until(lambda: all(any(s > down_at + WINDOW_S for s in windows_of(net.certified(), d))
                           for d in devices), 60, "certificates with one validator down")

    # 4. two down: none; the windows wait and are certified when one returns
    net.validators[2].kill()
    stalled_from = max(start for _, start in net.certified()) + WINDOW_S
    rounds = net.metric(0, "senken_validator_rounds_timed_out_total")
    wait_until(lambda: net.metric(0, "senken_validator_rounds_timed_out_total") >= rounds + 6,
               60, "rounds timing out without a quorum")
    late = [k for k in net.certified() if k[1] > stalled_from + WINDOW_S]
    assert late == []  # 2 of 4 validators never make a certificate
    net.validators[2].start()  # its persistent session delivers what it missed
    wait_until(lambda: all(any(s > stalled_from + 2 * WINDOW_S
                               for s in windows_of(net.certified(), d)) for d in devices), 90,
               "certificates again after a validator returned")
    for agent in net.agents:
        agent.stop()

    # every certified reading is in VictoriaMetrics exactly once, VictoriaMetrics' outage
    # notwithstanding (the last windows are still being certified meanwhile: compare like
    # with like until the two agree)
    def exported() -> int:
        samples = net.victoria.samples('{__name__="reading_anomaly_ppm"}')
        return sum(len(v) for v in samples.values())

    def settled() -> bool:
        certified = sum(a["readings_accepted"] for a in net.certified().values())
        return exported() == certified == sum(a["readings_accepted"]
                                              for a in net.certified().values())

    wait_until(settled, 60, "every certified reading in VictoriaMetrics, once")
    certs = net.certified()
    report = _get(net.ledger.api + "/log/verify")
    assert report["first_bad_index"] is None and report["entries"] >= len(certs)
    # no reading counted twice: every (device, seq) in one window only, via the proofs API
    seen: set[tuple[str, int]] = set()
    for att in certs.values():
        evidence = CertifiedWindow.from_wire(
            _get(f"{net.ledger.api}/attestations/{att['id']}/evidence"))
        for item in evidence.readings:
            reading = Reading.from_canonical(item.body)
            assert (reading.device, reading.seq) not in seen
            seen.add((reading.device, reading.seq))
    device, seq = next(iter(seen))
    proof = _get(f"{net.ledger.api}/proofs/{device}/{seq}")
    assert proof["tree_size"] >= 1

    # every logged window minted on anvil, once, by the contract checking the quorum itself:
    # the owner holds exactly the attested grams of its batch (the mg below a gram carried).
    # The agents are stopped, but the last windows may still be certified meanwhile: compare
    # the chain with the log as it stands, until the two agree.
    assert net.addresses is not None
    credits = ChainNode.connect(net.chain_url).w3.eth.contract(
        address=net.addresses.credits, abi=load_artifact("SenkenCredits").abi)
    owner = Web3.to_checksum_address(OWNER_ADDRESS)
    held: dict[int, int] = {}

    def minted_as_attested() -> bool:
        counts = _get(f"{net.ledger.api}/credits/queue")["counts"]
        assert not counts.get("failed"), counts
        certified = net.certified().values()
        attested_mg: dict[int, int] = {}  # per credit batch (vintage: the window's UTC year)
        for att in certified:
            token = batch_token_id(PROJECT, time.gmtime(att["window_start"]).tm_year,
                                   "CDM AMS-I.D")
            attested_mg[token] = attested_mg.get(token, 0) + att["co2e_mg"]
        held.clear()
        held.update({t: int(credits.functions.balanceOf(owner, t).call()) for t in attested_mg})
        return counts.get("minted", 0) == len(certified) and held == {
            t: mg // 1000 for t, mg in attested_mg.items()}

    wait_until(minted_as_attested, 60, "every logged window minted, as attested")
    assert all(held.values())
    # and the ledger's mirror of the chain's events catches up to the same
    expected = sorted(({"token_id": f"0x{t:064x}", "units": str(u)} for t, u in held.items()),
                      key=lambda b: b["token_id"])
    wait_until(lambda: sorted(_get(f"{net.ledger.api}/credits/balances/{OWNER_ADDRESS}")
                              ["balances"], key=lambda b: b["token_id"]) == expected, 30,
               "the mirror to show the owner's balance")
    wait_until(lambda: sorted(m["attestation_id"] for m in _get(
        f"{net.ledger.api}/credits/mints?limit=1000")["mints"]) == sorted(
        a["id"] for a in net.certified().values()), 30, "one mint per logged window")


def test_attacks_published_with_mosquitto_pub_are_rejected_and_never_counted(
        network: Network) -> None:
    net = network
    (device,) = start_devices(net, 1)
    with TopicWatcher(net.broker.port, device_topic(device, "readings", net.prefix)) as tap:
        wait_until(lambda: len(tap.payloads(device_topic(device, "readings", net.prefix))) >= 5,
                   30, "the agent's readings")
        genuine = decode_batch(tap.payloads(device_topic(device, "readings", net.prefix))[2])[0]
    reading = Reading.from_canonical(genuine.body)
    topic = device_topic(device, "readings", net.prefix)

    def publish(body: bytes, signature: bytes, on: str = topic) -> None:
        from senken_core.reading import SignedReading
        mosquitto_pub(net.broker.port, on, encode_batch([SignedReading(body, signature)]))

    far = replace(reading, seq=reading.seq + 1_000_000)  # a sequence number the agent never uses
    # a forged signature
    publish(far.canonical(), bytes(64))
    # a changed value under the genuine signature
    changed = replace(reading, values=tuple((n, v + 1 if n == "power_w" else v)
                                            for n, v in reading.values))
    publish(changed.canonical(), genuine.signature)
    # a reading re-signed by another device's key for this device
    thief = DeviceKey.generate()
    net.register("meter-thief", thief.public_key)
    publish(far.canonical(), thief.sign(READING_TAG, far.canonical()))
    # the thief's own reading on the victim's topic
    theirs = replace(far, device="meter-thief")
    publish(theirs.canonical(), thief.sign(READING_TAG, theirs.canonical()))
    # an unregistered device
    stranger = DeviceKey.generate()
    alien = replace(far, device="meter-stranger")
    publish(alien.canonical(), stranger.sign(READING_TAG, alien.canonical()),
            device_topic("meter-stranger", "readings", net.prefix))
    # a replayed reading: the genuine one again
    publish(genuine.body, genuine.signature)
    # a revoked device
    net.register("meter-thief", thief.public_key, version=2, revoked=True)
    wait_until(lambda: all(net.metric(i, "senken_validator_registry_devices") >= 2
                           for i in range(4)), 20, "the revocation at every validator")
    late = replace(far, device="meter-thief", seq=far.seq + 1)
    publish(late.canonical(), thief.sign(READING_TAG, late.canonical()),
            device_topic("meter-thief", "readings", net.prefix))

    expected = {"bad_signature": 3, "wrong_topic": 1, "unknown_device": 1, "revoked_device": 1}

    def rejected(i: int) -> dict[str, float]:
        return {r: net.metric(i, "senken_validator_readings_rejected_total", reason=r)
                for r in expected}

    wait_until(lambda: all(rejected(i) == expected for i in range(4)), 30,
               "every attack rejected with its reason at every validator")
    assert all(net.metric(i, "senken_validator_readings_duplicate_total") >= 1 for i in range(4))
    wait_until(lambda: len(windows_of(net.certified(), device)) >= 2, 60, "certified windows")
    net.agents[0].stop()
    for att in net.certified().values():
        # the thief's and the stranger's readings count nowhere; the revoked and the unknown
        # device get no window at all
        assert att["device"] == device
        evidence = CertifiedWindow.from_wire(
            _get(f"{net.ledger.api}/attestations/{att['id']}/evidence"))
        seqs = [Reading.from_canonical(r.body).seq for r in evidence.readings]
        assert all(s < 1_000_000 for s in seqs)
        assert len(seqs) == len(set(seqs))


def test_a_validator_that_signs_something_else_is_never_in_a_certificate(
        tmp_path: Path, topic_prefix: str) -> None:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    keys, network_file = four_validators(tmp_path, topic_prefix)
    procs = []
    try:
        for i, key in enumerate(keys):
            config, _ = make_validator(tmp_path / f"v{i}", broker.port, network_file, key)
            procs.append(ValidatorProcess(config, inflate=i == 0).start())
        device = DeviceKey.generate()
        record = DeviceRecord(PROJECT, "meter-1", device.public_key, "elec_meter",
                              bytes.fromhex(_model_sha()), 1)
        mosquitto_pub(broker.port, registry_topic("meter-1", topic_prefix),
                      record.sign(OWNER).to_wire(), retain=True)
        with TopicWatcher(broker.port, f"{topic_prefix}/validators/+/certificates") as tap:
            import time
            energy = 1000
            for seq in range(12):  # readings a second apart, as a meter sends them
                now_ms = int(time.time() * 1000)
                energy += 7
                reading = Reading("meter-1", seq, now_ms, "elec_meter", seq + 1, now_ms,
                                  (("energy_export_wh", energy), ("power_w", 900),
                                   ("voltage_dv", 2300)), bytes.fromhex(_model_sha()), 0, 0)
                body = reading.canonical()
                tap.publish(device_topic("meter-1", "readings", topic_prefix),
                            encode_batch([_signed(body, device)]))
                wait_until(lambda t=now_ms: time.time() * 1000 >= t + 250, 5, "the next reading")
            filt = f"{topic_prefix}/validators/"

            def certificates() -> list[CertifiedWindow]:
                with tap.lock:
                    return [CertifiedWindow.from_wire(p) for t, p, _ in tap.messages
                            if t.startswith(filt)]

            wait_until(lambda: len({c.attestation.id for c in certificates()}) >= 2, 60,
                       "certificates")
        terms = load_network_config(network_file)
        for cert in certificates():
            signers = check_certified_window(cert, terms.validator_set(), terms.domain(),
                                             {"meter-1": device.public_key}.get,
                                             terms.project(PROJECT).methodology_terms())
            assert keys[0].address not in signers  # its inflated signature is in none
            digest = cert.attestation.digest(terms.domain())
            assert keys[0].address not in {recover_address(digest, s)
                                            for s in cert.certificate.signatures}
        assert procs[0].alive()  # it kept signing, and was outvoted every time
    finally:
        for p in procs:
            if p.alive():
                p.kill()
        broker.stop()


def _signed(body: bytes, key: DeviceKey):  # type: ignore[no-untyped-def]
    from senken_core.reading import SignedReading
    return SignedReading(body, key.sign(READING_TAG, body))
