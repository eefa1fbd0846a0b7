"""``senken demo``: the whole system built so far, on embedded defaults, with visible progress.

What runs (every part the real one; state under one directory, a temporary one by default)::

    simulated meters (ptys) -> edge agents (in this process) -> MQTT broker
       -> 4 validators, k = 3 (processes, re-running the anomaly model)
       -> ledger (process, SQLite, HTTP API)
    gateway (process, SQLite): the project, enrollment tokens, the owner-signed registry

The demo plays the project owner (an owner key; registers the project at the gateway, issues
one enrollment token per device, approves every enrollment by signing its registry record) and
the technician (each device enrolls with its token and collects its broker account). Then it
follows the ledger: one line per certified window, the validators' and agents' health now and
then, and at the end the log verified, one certificate checked offline as a buyer would, and
the totals.

The broker is the first that works of: one already listening on 127.0.0.1:1883; the
``mosquitto`` binary on a free port; the amqtt broker in-process (MQTT 3.1.1 only: the
gateway, the validators and the ledger are then told to speak 3.1.1).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import secrets
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from senken.demo_broker import Broker, DemoError, broker, free_port, get_json, wait_for
from senken.demo_chain import DemoChain

__all__ = ["demo_cmd"]

PROJECT = "demo-pv-plant"
GRID_EF = 700  # g CO2 per kWh, the project's combined-margin grid factor
VALIDATORS, THRESHOLD = 4, 3
GRACE_S = 1.0
# The model scores 0 until a stream has filled its window (320 values) and warm-up (50): the
# first meter gets a voltage surge after that, so the demo shows the model flag an anomaly.
SPIKE_AT_FRAME = 450
SERVER_MODULES = ("aiomqtt", "fastapi", "uvicorn", "sqlmodel", "httpx", "prometheus_client",
                  "web3", "eth_tester")


def _check_broker(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value not in (None, "mosquitto", "amqtt"):
        host, _, port = value.rpartition(":")
        if host not in ("127.0.0.1", "localhost") or not port.isdigit():
            raise click.BadParameter("use 127.0.0.1:PORT")
    return value


@click.command("demo")
@click.option("--devices", type=click.IntRange(1, 20), default=3, show_default=True,
              help="simulated electricity meters of one solar project")
@click.option("--duration", type=click.FloatRange(0), default=60.0, show_default=True,
              help="seconds the devices run (0: until Ctrl-C); the first meter's voltage surges "
              f"at frame {SPIKE_AT_FRAME}, after the model's warm-up")
@click.option("--window-seconds", type=click.IntRange(2, 3600), default=10, show_default=True,
              help="the project's window: readings are attested and credited per window")
@click.option("--rate", type=click.FloatRange(0.1, 200), default=10.0, show_default=True,
              help="frames per second per device")
@click.option("--broker", "broker_addr", default=None, callback=_check_broker,
              metavar="127.0.0.1:PORT|mosquitto|amqtt",
              help="use this broker, start mosquitto, or run amqtt in-process "
              "[default: 127.0.0.1:1883 if up, else mosquitto, else amqtt]")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="where every part keeps its keys, databases and logs [default: a temporary "
              "directory, removed at the end unless --keep]")
@click.option("--keep", is_flag=True, help="keep the temporary state directory")
def demo_cmd(devices: int, duration: float, window_seconds: int, rate: float,
             broker_addr: str | None, state_dir: Path | None, keep: bool) -> None:
    """Run meters -> edge agents -> broker -> validators -> ledger, with the gateway's
    enrollment, end to end; show each certified window, check the results as a buyer."""
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoError(f"the demo runs the services, which need {', '.join(missing)}: "
                        "pip install -e '.[demo,server,chain]' (or bash deploy/demo.sh)")
    if state_dir is not None and state_dir.is_dir() and any(state_dir.iterdir()):
        raise click.BadParameter(f"{state_dir} is not empty: every run starts a new network, "
                                 "give a new or empty directory", param_hint="--state-dir")
    temporary = state_dir is None
    state = Path(tempfile.mkdtemp(prefix="senken-demo-")) if state_dir is None else state_dir
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM too
    kept = keep or not temporary
    try:
        _Demo(state, devices, duration, window_seconds, rate).run(broker_addr)
    except click.ClickException:
        kept = True  # the logs say why
        raise
    except KeyboardInterrupt:
        click.echo("interrupted")
        raise SystemExit(130) from None
    finally:
        if kept:
            click.echo(f"state kept in {state} (keys, configs, databases, logs)")
        else:
            shutil.rmtree(state, ignore_errors=True)
            click.echo(f"state removed: {state} (--keep keeps it)")


def _n(count: int, thing: str) -> str:
    return f"{count} {thing}{'' if count == 1 else 's'}"


def _quiet(_line: str) -> None:
    pass


def _edge_config_check(path: Path) -> Any:
    """What ``senken edge enroll`` checks the agent's updated config with."""
    from edge_agent.config import EdgeConfig

    def check(data: dict[str, Any]) -> object:
        return EdgeConfig.from_dict(data, str(path))

    return check


class _Demo:
    def __init__(self, state: Path, devices: int, duration: float, window_seconds: int,
                 rate: float) -> None:
        self.state, self.devices, self.duration = state, devices, duration
        self.window_seconds, self.rate = window_seconds, rate
        self.logs = state / "logs"
        self.logs.mkdir(exist_ok=True)
        self.echo = click.echo
        self.run_id = secrets.token_hex(4)
        self.prefix = f"senken-demo-{self.run_id}/v1"
        self.names = [f"pv-meter-{i + 1:02d}" for i in range(devices)]

    def step(self, n: int, what: str, text: str) -> None:
        self.echo(f"[{n}/8] {what:<10} {text}" if n else f"      {what:<10} {text}")

    def run(self, broker_addr: str | None) -> None:
        logging.basicConfig(filename=self.logs / "agents.log", level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from senken.demo_services import stop_all

        self.echo(f"Senken demo: {_n(self.devices, 'simulated meter')} -> edge agents -> MQTT "
                  f"-> {VALIDATORS} validators (k = {THRESHOLD}) -> ledger; state in {self.state}")
        with contextlib.ExitStack() as stack:
            try:
                mqtt = stack.enter_context(broker(self.state, broker_addr))
                self.step(1, "broker", mqtt.what)
                if mqtt.external:  # once the services are gone, leave nothing retained there
                    stack.callback(lambda: mqtt.clear_retained(self.retained_topics()))
                self.chain = DemoChain(self.state / "chain")
                stack.callback(self.chain.stop)
                services = self.start_services(mqtt)
                stack.callback(stop_all, services)
                agents, sims = self.enroll_devices(mqtt, stack)
                self.step(7, "agents", f"{_n(len(agents), 'edge agent')} reading, scoring "
                          f"(model {agents[0][1].model.sha256.hex()[:16]}...), signing, "
                          "publishing")
                for _name, agent in agents:
                    agent.start()
                for sim in sims:
                    sim.start()
                self.follow(services, agents, sims)
            finally:  # before the stack stops everything, in reverse order of starting
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C must not orphan
                self.echo("stopping the devices, agents, validators, ledger, gateway, broker")

    def retained_topics(self) -> list[str]:
        """What the gateway, the agents and the validators left retained on the broker."""
        from senken_core.topics import device_topic, registry_topic, validator_topic

        topics = [t for name in self.names for t in (registry_topic(name, self.prefix),
                                                     device_topic(name, "status", self.prefix))]
        return topics + [validator_topic(bytes.fromhex(a[2:]), "status", self.prefix)
                         for a in getattr(self, "addresses", [])]

    # -- steps 2-4: keys, the network file, the services ----------------------------------------

    def start_services(self, mqtt: Broker) -> list[Any]:
        from senken.demo_services import (
            gateway_service,
            ledger_service,
            start_all,
            stop_all,
            validator_service,
            write_network,
        )
        from senken_core.anomaly import DEFAULT_MODEL_PATH
        from senken_core.keys import DeviceKey
        from senken_core.secp256k1 import ValidatorKey

        self.owner = DeviceKey.generate()
        self.owner.save(self.state / "owner" / "owner.key")
        self.homes = homes = [self.state / f"validator-{i + 1}" for i in range(VALIDATORS)]
        self.addresses = []
        for home in homes:
            home.mkdir(parents=True, exist_ok=True)
            key = ValidatorKey.generate()
            key.save(home / "validator.key")
            self.addresses.append("0x" + key.address.hex())
        self.step(2, "keys", f"project owner {self.owner.public_key.hex()[:16]}... "
                  f"(Ed25519), {VALIDATORS} validators (secp256k1): "
                  + ", ".join(self.addresses))
        self.model_sha = hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).hexdigest()
        self.network = self.state / "network.toml"
        project = {"id": PROJECT, "owner_key": self.owner.public_key.hex(),
                   "owner_address": self.chain.owner_address,
                   "window_seconds": self.window_seconds, "methodology": "CDM AMS-I.D",
                   "methodology_version": 1, "grid_ef_g_per_kwh": GRID_EF,
                   "model_sha256": self.model_sha}
        write_network(self.network, self.addresses, THRESHOLD, self.prefix, project)
        self.step(0, "chain", self.chain.what)
        deployed = self.chain.deploy(self.network)
        self.step(0, "contracts", f"credits {deployed.credits}, validator set "
                  f"{deployed.validator_set}, governor {deployed.governor} (timelock "
                  f"{deployed.timelock}); credits go to the owner's {self.chain.owner_address}")
        # validators sign for this chain and contract: the EIP-712 domain the contract checks
        write_network(self.network, self.addresses, THRESHOLD, self.prefix, project,
                      {"chain_id": deployed.chain_id,
                       "credit_contract": deployed.credits.lower()})
        self.step(3, "network", f"{self.network}: k = {THRESHOLD} of {VALIDATORS}; project "
                  f"{PROJECT}: CDM AMS-I.D, {GRID_EF} g CO2/kWh, {self.window_seconds} s "
                  f"windows; topics {self.prefix}/...; signatures for chain "
                  f"{deployed.chain_id}, contract {deployed.credits}")
        gateway_port, ledger_port = free_port(), free_port()
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
        self.ledger_url = f"http://127.0.0.1:{ledger_port}"
        self.gateway = gateway_service(self.state / "gateway", self.logs, mqtt, self.prefix,
                                       gateway_port, self.run_id)
        self.validators = [validator_service(home, self.logs, i + 1, mqtt, self.network,
                                             GRACE_S) for i, home in enumerate(homes)]
        self.ledger = ledger_service(self.state / "ledger", self.logs, mqtt, self.network,
                                     ledger_port, self.run_id, self.chain.ledger_section())
        services = [self.gateway, *self.validators, self.ledger]
        started = time.monotonic()
        try:
            start_all(services)
        except BaseException:
            stop_all(services)
            raise
        self.step(4, "services", f"gateway {self.gateway_url}, {VALIDATORS} validators "
                  f"(model check on, grace {GRACE_S:g} s), ledger {self.ledger_url} (SQLite); "
                  f"up in {time.monotonic() - started:.1f} s, logs in {self.logs}")
        return services

    # -- steps 5-6: the owner, the technicians, the devices ---------------------------------------

    def enroll_devices(self, mqtt: Broker, stack: contextlib.ExitStack,
                       ) -> tuple[list[tuple[str, Any]], list[Any]]:
        from edge_agent.app import EdgeAgent
        from edge_agent.config import load_edge_config
        from edge_agent.enroll import enroll
        from firmware_sim.device import SimulatedDevice
        from firmware_sim.faults import Fault
        from gateway.client import GatewayClient, approve_enrollments, register_project
        from gateway.domain import ProjectTerms
        from senken.demo_services import toml_value as q
        from senken.demo_services import write_secret
        from senken_core.errors import SenkenError
        from senken_core.keys import DeviceKey

        terms = ProjectTerms(project=PROJECT, owner_public_key=self.owner.public_key,
                             methodology="CDM AMS-I.D", model_sha256=bytes.fromhex(self.model_sha),
                             location="simulated 1 MW solar plant",
                             parameters={"grid_ef_g_per_kwh": GRID_EF})
        admin = (self.state / "gateway" / "admin.token").read_text().strip()
        try:
            client = GatewayClient(self.gateway_url)
            api_token = register_project(client, admin, self.owner, terms)
            client.close()
            write_secret(self.state / "owner" / "api.token", api_token)
            owner = GatewayClient(self.gateway_url, api_token)
            stack.callback(owner.close)
            tokens, _ = owner.issue_tokens(PROJECT, self.devices, 3600)
        except SenkenError as exc:
            raise DemoError(f"the gateway refused: {exc} (log: {self.gateway.log})") from None
        self.step(5, "gateway", f"project {PROJECT} registered (terms signed by the owner "
                  f"key); {_n(len(tokens), 'one-time enrollment token')} issued")

        # each simulated plant runs at noon UTC whatever the hour here, so that it exports:
        # the sun's curve follows a clock shifted to noon, the device's own clock (device_ms)
        # is shifted back to the real time from its first frame on
        shift = 12 * 3600 - time.time() % 86400
        sims, configs = [], []
        for i, (name, token) in enumerate(zip(self.names, tokens, strict=True)):
            faults = [Fault(fault="clock_jump", at_frame=0, ms=-round(shift * 1000))]
            if i == 0:
                faults.append(Fault(fault="spike", at_frame=SPIKE_AT_FRAME,
                                    channel="voltage_dv", factor=1.5))
            sim = SimulatedDevice("elec_meter", rate_hz=self.rate, seed=i,
                                  link=self.state / f"tty-{name}", faults=faults,
                                  clock=lambda: time.time() + shift)
            stack.callback(sim.stop)
            sims.append(sim)
            home = self.state / "devices" / name
            home.mkdir(parents=True, exist_ok=True)
            key = DeviceKey.generate()
            key.save(home / "device.key")
            config = home / "edge.toml"
            config.write_text(
                f"device_id = {q(name)}\nstate_dir = {q(str(home))}\n"
                "heartbeat_interval_s = 5.0\n\n[serial]\n"
                f"port = {q(sim.port_path)}\nkind = \"elec_meter\"\n\n[mqtt]\n"
                f"protocol = {q(mqtt.protocol)}\nsession_expiry_s = 300\n")
            configs.append(config)

            install = {"location": f"inverter {i + 1}", "calibration_date": "2025-03-01",
                       "technician": "demo"}
            try:
                enroll(config, home, name, key.public_key, "elec_meter", self.gateway_url,
                       token, install, 0, 0.1, _edge_config_check(config), echo=_quiet)
            except SenkenError as exc:
                raise DemoError(f"{name} could not enroll: {exc}") from None
            self.step(0, "enroll", f"{name} sent its public key {key.public_key.hex()[:16]}... "
                      f"with token {token[:22]}...: pending")
        try:
            records, _answer = approve_enrollments(owner, PROJECT, self.owner, lambda e: True)
        except SenkenError as exc:
            raise DemoError(f"the gateway refused the approval: {exc}") from None
        for record in records:
            self.step(0, "approve", f"owner signed {record.device}'s registry record "
                      f"v{record.version} (key {record.public_key.hex()[:16]}..., "
                      f"{record.kind})")
        self.wait_registry()
        agents = []
        for name, config, home in zip(self.names, configs,
                                      (c.parent for c in configs), strict=True):
            try:
                answer = enroll(config, home, name, DeviceKey.load(home / "device.key")
                                .public_key, "elec_meter", None, None, {}, 30, 0.1,
                                _edge_config_check(config), echo=_quiet)
            except SenkenError as exc:
                raise DemoError(f"{name} could not collect its broker account: {exc}") from None
            if answer.get("status") != "approved":
                raise DemoError(f"{name}'s enrollment is still {answer.get('status')}")
            cfg = load_edge_config(config)
            agent = EdgeAgent(cfg)
            stack.callback(agent.stop)
            agents.append((name, agent))
            self.step(0, "account", f"{name} collected its broker account (user "
                      f"{cfg.mqtt.username}, password in {cfg.mqtt.password_file})")
        for name, sim in zip(self.names, sims, strict=True):
            surge = (f"; voltage surge at frame {SPIKE_AT_FRAME} "
                     f"({SPIKE_AT_FRAME / self.rate:.0f} s)" if sim is sims[0] else "")
            self.step(6, "device", f"{name} 1 MW solar meter at noon UTC, {self.rate:g} "
                      f"frames/s on {sim.path}{surge}")
        return agents, sims

    def wait_registry(self) -> None:
        from senken.demo_services import validator_health

        def held() -> bool:
            for service in self.validators:
                service.check()
            self.ledger.check()
            at_validators = all((validator_health(home) or {}).get("registry_devices", 0)
                                >= self.devices for home in self.homes)
            ledger = (get_json(f"{self.ledger_url}/health", 2) or {}).get("ledger") or {}
            return at_validators and ledger.get("registry_devices", 0) >= self.devices

        if not wait_for(held, 30, 0.2):
            raise DemoError("the registry records did not reach every validator and the ledger "
                            f"in 30 s (logs: {self.gateway.log}, {self.ledger.log})")
        self.step(0, "registry", f"{_n(self.devices, 'record')} retained on "
                  f"{self.prefix}/registry/+, held by the {VALIDATORS} validators and the ledger")

    # -- step 8: follow the ledger; the end ------------------------------------------------------

    def follow(self, services: list[Any], agents: list[tuple[str, Any]],
               sims: list[Any]) -> None:
        from senken.demo_progress import LedgerWatch, check_offline, health_lines
        from senken.demo_services import validator_health
        from senken_core.network import load_network_config

        project = load_network_config(self.network).project(PROJECT)
        assert project is not None
        watch = LedgerWatch(self.ledger_url, PROJECT, project.anomaly_threshold_ppm, self.echo)
        how_long = "until Ctrl-C" if self.duration == 0 else f"{self.duration:g} s"
        self.step(8, "running", f"{how_long}; each {self.window_seconds} s window is certified "
                  f"about {GRACE_S:g}-3 s after it ends")
        started = time.monotonic()
        next_health = started + 10
        pause = threading.Event()
        interrupted = False
        try:
            while self.duration == 0 or time.monotonic() - started < self.duration:
                pause.wait(0.5)
                for service in services:
                    service.check()
                watch.poll()
                if time.monotonic() >= next_health:
                    next_health += 10
                    healths = [(a, validator_health(home))
                               for a, home in zip(self.addresses, self.homes, strict=True)]
                    for line in health_lines(time.monotonic() - started, healths, agents):
                        self.echo(line)
        except KeyboardInterrupt:
            interrupted = True
            self.echo("interrupted: stopping the devices")
        for sim in sims:
            sim.stop()
        if not interrupted:
            self.finish_windows(watch, agents)
        self.report(watch, agents, check_offline)

    def finish_windows(self, watch: Any, agents: list[tuple[str, Any]]) -> None:
        self.echo(f"{'finishing':<16} devices stopped; waiting for the agents' outboxes and "
                  "the last windows")
        wait_for(lambda: all(a.outbox.depth == 0 for _n, a in agents), 20, 0.2)
        last = {name: a.stats.last_reading_ms // 1000 // self.window_seconds
                * self.window_seconds for name, a in agents if a.stats.last_reading_ms}

        def done() -> bool:
            watch.poll()
            return all(watch.certified(name, start) for name, start in last.items())

        if not wait_for(done, self.window_seconds + GRACE_S + 30, 0.5):
            self.echo("  (not every last window was certified in time; see the validators' "
                      "logs)")

    def report(self, watch: Any, agents: list[tuple[str, Any]], check_offline: Any) -> None:
        self.echo("done")
        signed = sum(a.stats.readings_signed for _n, a in agents)
        acked = sum(a.stats.readings_acked for _n, a in agents)
        self.echo(f"  agents     {signed} readings signed, {acked} acknowledged by the broker")
        if not watch.seen:
            raise DemoError(f"no window was certified: see the logs in {self.logs}")
        verified = get_json(f"{self.ledger_url}/log/verify", 30) or {}
        if not verified.get("ok"):
            raise DemoError(f"the ledger's log did not verify: {verified} (log: "
                            f"{self.ledger.log})")
        self.echo(f"  log        verified: {verified['entries']} entries, hash chain intact, "
                  f"head {verified['head_hash'][:16]}...")
        # a buyer's check of the window with the most anomalous reading, else of the last one
        by_index = sorted(watch.seen.values(), key=lambda a: a["log_index"])
        chosen = max(by_index, key=lambda a: (watch.flagged[a["id"]].worst.anomaly_ppm
                                              if a["id"] in watch.flagged else -1,
                                              a["log_index"]))
        self.echo(f"  buyer      checks {chosen['device']}'s window at log #"
                  f"{chosen['log_index']} offline, trusting only the network file:")
        if not check_offline(self.ledger_url, chosen, self.network, self.state / "buyer",
                             self.echo):
            raise DemoError("the offline check of a certified window failed")
        total = get_json(f"{self.ledger_url}/projects/{PROJECT}/summary") or {}
        excluded = sum(f.excluded_wh for f in watch.flagged.values())
        self.echo(f"  summary    {total.get('attestations')} windows certified, "
                  f"{total.get('readings')} readings counted, "
                  f"{(total.get('quantity') or 0) / 1000:.3f} kWh exported, "
                  f"{(total.get('co2e_mg') or 0) / 1e6:.3f} kg CO2e avoided")
        if watch.flagged:
            count = sum(f.count for f in watch.flagged.values())
            self.echo(f"  anomalies  {count} reading(s) in {len(watch.flagged)} window(s) "
                      f"scored anomalous by the on-device model: {excluded} Wh not credited")
        self.report_credits(int(total.get("attestations") or 0), int(total.get("co2e_mg") or 0))

    def report_credits(self, windows: int, co2e_mg: int) -> None:
        """The credits minted on chain for the logged windows, and one retirement."""
        if not self.chain.wait_minted(self.ledger_url, windows, 60):
            raise DemoError(f"not every certified window was minted in 60 s (ledger log: "
                            f"{self.ledger.log}; /credits/queue on {self.ledger_url})")
        mints, units, balances = self.chain.credits(self.ledger_url)
        failed = self.chain.failed(self.ledger_url)
        if failed:
            raise DemoError(f"{len(failed)} window(s) could not be minted: {failed[0]} "
                            f"(ledger log: {self.ledger.log})")
        self.echo(f"  credits    {mints} windows minted on chain by the credit contract, which "
                  f"checked {THRESHOLD} validator signatures each: {units} units (1 unit = "
                  f"1 g CO2e; {co2e_mg // 1000} g attested, the rest carried in the batch)")
        for b in balances:
            self.echo(f"             owner {self.chain.owner_address} holds {b['units']} of "
                      f"batch {b['token_id'][:18]}... ({PROJECT}, vintage "
                      f"{time.gmtime().tm_year})")
        if balances and int(balances[0]["units"]) > 0:
            amount = max(1, int(balances[0]["units"]) // 2)
            retired = self.chain.retire(self.ledger_url, balances[0]["token_id"], amount,
                                        "Demo GmbH", "demo: Scope 2 emissions 2026", "DE")
            record = retired.record
            self.echo(f"  retired    {amount} units for {record['beneficiary']} "
                      f"({record['jurisdiction']}): retirement #{record['retirement_id']}, "
                      "burned on chain, recorded by the ledger's mirror")
