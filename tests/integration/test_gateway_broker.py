"""The gateway against a real Mosquitto started on the config the gateway generated: per-device
accounts over TLS, the ACL, revocation, and registry records that reach validators even when
the broker was down at approval time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.client import approve_enrollments, revoke_device
from gateway.config import GatewayConfig
from senken_core.keys import DeviceKey
from senken_core.registry import DeviceRegistry, SignedDeviceRecord
from senken_core.topics import device_topic, registry_filter, registry_topic, validator_topic
from tests.support.gateway import (
    Harness,
    MqttProbe,
    gateway_config,
    gateway_mosquitto,
    mosquitto_readable_dir,
    postgres_database,
)
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.tls import make_server_tls
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]
PROJECT = "pv-plant-7"
VALIDATOR = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
VALIDATOR_PASSWORD = "validator-password-1"


@dataclass
class Site:
    """A gateway (API, publisher) and the Mosquitto it manages."""

    cfg: GatewayConfig
    gateway: Gateway
    broker: Mosquitto
    h: Harness
    tmp: Path
    prefix: str

    @property
    def tls_port(self) -> int:
        return self.cfg.broker.tls_port

    @property
    def plain_port(self) -> int:
        return self.cfg.broker.plain_port

    def validator(self, *filters: str) -> MqttProbe:
        probe = MqttProbe(self.plain_port, VALIDATOR, VALIDATOR_PASSWORD)
        assert probe.connected_ok(), probe.reason
        probe.subscribe(*filters)
        return probe

    def device_probe(self, credentials: dict[str, Any]) -> MqttProbe:
        """A client with a device's credentials, over TLS with the CA the gateway sent."""
        ca = self.tmp / f"ca-{credentials['username']}.pem"
        ca.write_text(credentials["ca_pem"])
        assert credentials["tls"] and credentials["port"] == self.tls_port
        return MqttProbe(self.tls_port, credentials["username"], credentials["password"], ca)

    def enroll(self, token: str, device: str) -> tuple[DeviceKey, dict[str, Any]]:
        return self.h.enroll(token, device, location="roof", technician="A. Tech")


@pytest.fixture
def site(tmp_path: Path, topic_prefix: str) -> Iterator[Site]:
    with mosquitto_readable_dir() as shared, postgres_database() as database_url:
        tls = make_server_tls(shared / "pki")
        tls_port, plain_port = free_port(), free_port()
        root = os.geteuid() == 0
        cfg = gateway_config(
            tmp_path, database_url, prefix=topic_prefix, tls=tls,
            broker_dir=shared / "broker-files", mqtt_port=plain_port, tls_port=tls_port,
            plain_port=plain_port,
            extra={"broker": {"file_owner": "mosquitto" if root else None,
                              "pid_file": str(shared / "mosquitto" / "mosquitto.pid")}})
        gateway = Gateway(cfg)
        gateway.prepare()  # the files Mosquitto starts from
        gateway.service.add_service_account(VALIDATOR, "validator", VALIDATOR_PASSWORD)
        broker = gateway_mosquitto(shared / "mosquitto", cfg)
        broker.start()
        from fastapi.testclient import TestClient

        try:
            with TestClient(gateway.api()) as http:  # starts the registry publisher
                h = Harness(gateway.service, None, None, None, http)  # type: ignore[arg-type]
                yield Site(cfg, gateway, broker, h, tmp_path, topic_prefix)
        finally:
            broker.stop()


def decode_records(payloads: list[bytes], owner: DeviceKey) -> DeviceRegistry:
    registry = DeviceRegistry({PROJECT: owner.public_key})
    for payload in payloads:
        registry.apply(SignedDeviceRecord.from_wire(payload))
    return registry


def test_devices_publish_only_as_themselves_until_revoked(site: Site) -> None:
    h, prefix = site.h, site.prefix
    owner, api_token = h.register()
    token_a, token_b = h.tokens(PROJECT, api_token, count=2)
    key_a, enrollment_a = site.enroll(token_a, "meter-a")
    _key_b, enrollment_b = site.enroll(token_b, "meter-b")
    validator = site.validator(f"{prefix}/devices/+/readings", registry_filter(prefix))

    _records, answer = approve_enrollments(h.client(api_token), PROJECT, owner, lambda e: True)
    assert answer and answer["broker"]["reloaded"], answer  # SIGHUP through the pid file
    a, b = h.poll(enrollment_a)["mqtt"], h.poll(enrollment_b)["mqtt"]

    # the gateway published both owner-signed records, retained, where validators read them
    wait_until(lambda: len(validator.received()) >= 2, 10, "the registry records")
    registry = decode_records(validator.received(), owner)
    record_a = registry.lookup("meter-a")
    assert record_a is not None and record_a.public_key == key_a.public_key
    assert registry.lookup("meter-b") is not None
    assert {t for t, _ in validator.messages} == {registry_topic("meter-a", prefix),
                                                 registry_topic("meter-b", prefix)}

    # device A, over TLS with the CA the gateway handed it, once the broker reloaded
    device_a = site.device_probe(a)
    wait_until(device_a.connected_ok, 10, "meter-a's account to work")
    own, other = device_topic("meter-a", "readings", prefix), device_topic("meter-b",
                                                                           "readings", prefix)
    assert not device_a.publish(own, b"reading from a").is_failure
    wait_until(lambda: validator.received(own) == [b"reading from a"], 10,
               "the validator to receive meter-a's reading")

    # A cannot publish as B, nor into the registry, nor as a validator
    refused = device_a.publish(other, b"forged by a")
    assert refused.is_failure and "authori" in str(refused).lower(), refused
    assert device_a.publish(registry_topic("meter-b", prefix), b"forged").is_failure
    assert device_a.publish(validator_topic(bytes.fromhex(VALIDATOR[2:]), "agreement",
                                            prefix), b"x").is_failure
    assert not device_a.publish(own, b"marker").is_failure
    wait_until(lambda: b"marker" in validator.received(own), 10, "the marker")
    assert validator.received(other) == []  # what A sent on B's topic never arrived
    device_a.close()

    # a wrong password, no credentials, or plain MQTT with a device's account on the TLS port
    assert MqttProbe(site.tls_port, "meter-a", "wrong", device_a_ca(site)).connect().is_failure
    anonymous = MqttProbe(site.plain_port).connect()
    assert anonymous.is_failure, anonymous
    assert not MqttProbe(site.tls_port, "meter-a", a["password"]).connected_ok()

    # revocation: the owner signs version 2, revoked; the account goes, the record updates
    connected_a = site.device_probe(a)
    assert connected_a.connected_ok()
    _record, answer = revoke_device(h.client(), "meter-a", owner, lambda p: api_token)
    assert answer["broker"]["reloaded"], answer
    # Mosquitto drops a connected client whose account is gone when it reloads
    wait_until(lambda: not connected_a.client.is_connected(), 10,
               "the broker to drop meter-a's open connection")
    connected_a.close()
    wait_until(lambda: not site.device_probe(a).connected_ok(), 10,
               "meter-a to be refused after revocation")
    wait_until(lambda: len(validator.received(registry_topic("meter-a", prefix))) >= 2, 10,
               "the revoked record")
    registry_messages = [p for t, p in validator.messages if t.startswith(f"{prefix}/registry/")]
    revoked = decode_records(registry_messages, owner).lookup("meter-a")
    assert revoked is not None and (revoked.version, revoked.revoked) == (2, True)
    # B is untouched
    device_b = site.device_probe(b)
    assert device_b.connected_ok()
    assert not device_b.publish(other, b"reading from b").is_failure
    wait_until(lambda: validator.received(other) == [b"reading from b"], 10, "b's reading")
    device_b.close()
    validator.close()


def device_a_ca(site: Site) -> Path:
    return site.tmp / "ca-meter-a.pem"


def test_records_approved_while_the_broker_is_down_are_published_when_it_returns(
        site: Site) -> None:
    h, prefix = site.h, site.prefix
    owner, api_token = h.register()
    _key, enrollment = site.enroll(h.tokens(PROJECT, api_token)[0], "meter-c")
    site.broker.stop()
    _records, answer = approve_enrollments(h.client(api_token), PROJECT, owner, lambda e: True)
    assert answer and answer["broker"]["reloaded"] is False  # stored; the broker was told nothing
    store = site.gateway.store
    assert [r.device for r in store.unpublished()] == ["meter-c"]

    site.broker.start()  # it reads the files the gateway wrote while it was down
    wait_until(lambda: not store.unpublished(), 20, "the publisher to publish on reconnect")
    validator = site.validator(registry_filter(prefix))  # a late subscriber: retained
    wait_until(lambda: len(validator.received()) == 1, 10, "the retained record")
    record = decode_records(validator.received(), owner).lookup("meter-c")
    assert record is not None and record.technician == "A. Tech"
    validator.close()
    device = site.device_probe(h.poll(enrollment)["mqtt"])
    assert device.connected_ok()
    device.close()
