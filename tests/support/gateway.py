"""Gateway test helpers: a fresh PostgreSQL database per test, a gateway config, fakes for
the broker and the publisher, and a Mosquitto run on the gateway's generated config."""

from __future__ import annotations

import os
import pwd
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.broker_files import BrokerAccount
from gateway.config import GatewayConfig
from gateway.ports import BrokerSync
from tests.support.mosquitto import Mosquitto
from tests.support.tls import TlsFiles

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
ADMIN_TOKEN = "senken-admin_" + "A" * 43


@contextmanager
def postgres_database() -> Iterator[str]:
    """A database of the test's own on the local PostgreSQL (trust auth); its SQLAlchemy
    URL. Dropped afterwards, even if connections linger."""
    import psycopg

    name = f"gw_{uuid.uuid4().hex[:16]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"the gateway tests need PostgreSQL at 127.0.0.1:5432 (user "
                           f"postgres, trust auth, database test): {exc}") from None
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class FakeBroker:
    """BrokerControl that remembers what it was told."""

    syncs: list[list[BrokerAccount]] = field(default_factory=list)
    reloaded: bool = True

    def sync(self, accounts: Sequence[BrokerAccount]) -> BrokerSync:
        self.syncs.append(list(accounts))
        return BrokerSync(True, self.reloaded, "fake")

    @property
    def users(self) -> dict[str, str]:
        return {a.username: a.role for a in (self.syncs[-1] if self.syncs else [])}


@dataclass
class FakePublisher:
    wakes: int = 0

    def wake(self) -> None:
        self.wakes += 1


def secret_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def gateway_config(tmp: Path, database_url: str, *, prefix: str = "senken/v1",
                   tls: TlsFiles | None = None, broker_dir: Path | None = None,
                   mqtt_port: int = 1883, tls_port: int = 0, plain_port: int = 1883,
                   extra: dict[str, Any] | None = None) -> GatewayConfig:
    """A config with an admin token (``tmp/admin.token``) and a gateway broker account."""
    secret_file(tmp / "admin.token", ADMIN_TOKEN)
    secret_file(tmp / "gateway-mqtt.password", "gateway-password-" + uuid.uuid4().hex)
    broker: dict[str, Any] = {"dir": str(broker_dir or tmp / "broker"),
                              "public_host": "127.0.0.1", "public_port": tls_port or plain_port,
                              "tls_port": tls_port, "plain_port": plain_port,
                              "device_tls": tls is not None}
    if tls is not None:
        broker.update(ca_file=str(tls.ca), cert_file=str(tls.cert), key_file=str(tls.key))
    data: dict[str, Any] = {
        "state_dir": str(tmp / "state"), "topic_prefix": prefix,
        "api": {"admin_token_file": str(tmp / "admin.token")},
        "database": {"url": database_url},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "username": "gateway",
                 "password_file": str(tmp / "gateway-mqtt.password"), "retry_interval_s": 0.5},
        "broker": broker,
        "accounts": [{"name": "gateway", "role": "gateway",
                      "password_file": str(tmp / "gateway-mqtt.password")}],
    }
    for section, values in (extra or {}).items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return GatewayConfig.from_dict(data)


@contextmanager
def mosquitto_readable_dir() -> Iterator[Path]:
    """A directory outside pytest's temp tree for what Mosquitto reads. Mosquitto re-reads its
    config, certificates, password and ACL files as user mosquitto on every reload; pytest
    resets /tmp/pytest-of-<user> to mode 0700 whenever a session starts, which would lock a
    running broker out of files kept below it."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="senken-gw-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _let_mosquitto_read(path: Path) -> None:
    """Mosquitto drops root for user mosquitto: let it traverse to and read ``path``."""
    if os.geteuid() != 0:
        return
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, (mode & 0o7777) | 0o011)
    user = pwd.getpwnam("mosquitto")
    os.chown(path, user.pw_uid, user.pw_gid)


def gateway_mosquitto(broker_dir: Path, cfg: GatewayConfig) -> Mosquitto:
    """A Mosquitto on the gateway's generated mosquitto.conf (written by Gateway.prepare),
    plus persistence and a log. Its ``port`` is the plain listener."""
    assert shutil.which("mosquitto"), "the gateway tests need mosquitto"
    broker = Mosquitto(broker_dir, port=cfg.broker.plain_port)
    generated = (cfg.broker_dir / "mosquitto.conf").read_text()
    broker.conf.write_text(generated + f"persistence true\npersistence_location {broker_dir}/\n"
                           f"log_dest file {broker.log}\nlog_type all\n")
    for path in (broker.conf, *cfg.broker_dir.iterdir()):
        _let_mosquitto_read(path)
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(cfg.broker, name)
        if path is not None:
            _let_mosquitto_read(path)
    return broker


class Clock:
    """A settable clock (Unix ms) for token expiry."""

    def __init__(self, now_ms: int = 1_764_201_600_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Harness:
    """The gateway's service and API on a database, with a fake broker and publisher."""

    service: Any
    broker: FakeBroker
    publisher: FakePublisher
    clock: Clock
    http: Any  # fastapi.testclient.TestClient

    def client(self, token: str | None = None) -> Any:
        from gateway.client import GatewayClient

        return GatewayClient("http://testserver", token, http=self.http)

    def register(self, project: str = "pv-plant-7", **terms: Any) -> tuple[Any, str]:
        """Register a project; (owner key, owner API token)."""
        from gateway.client import register_project
        from gateway.domain import ProjectTerms
        from senken_core.keys import DeviceKey

        owner = DeviceKey.generate()
        fields: dict[str, Any] = {"methodology": "CDM AMS-I.D", "model_sha256": b"\xab" * 32,
                                  "location": "52.37,4.89",
                                  "parameters": {"grid_ef_g_per_kwh": 700}}
        fields.update(terms)
        api_token = register_project(self.client(), ADMIN_TOKEN, owner,
                                     ProjectTerms(project, owner.public_key, **fields))
        return owner, api_token

    def tokens(self, project: str, api_token: str, count: int = 1, ttl_seconds: int = 3600
               ) -> list[str]:
        return self.client(api_token).issue_tokens(project, count, ttl_seconds)[0]

    def enroll(self, token: str, device: str, kind: str = "elec_meter",
               **install: str) -> tuple[Any, dict[str, Any]]:
        """POST an enrollment; (device key, the response's JSON). Asserts a 201."""
        from senken_core.keys import DeviceKey

        key = DeviceKey.generate()
        response = self.http.post("/v1/enrollments", json={
            "token": token, "device": device, "public_key": key.public_key.hex(),
            "kind": kind, **install})
        assert response.status_code == 201, response.text
        return key, response.json()

    def poll(self, enrollment: dict[str, Any]) -> dict[str, Any]:
        response = self.http.get(f"/v1/enrollments/{enrollment['enrollment_id']}",
                                 headers={"Authorization": f"Bearer {enrollment['poll_secret']}"})
        assert response.status_code == 200, response.text
        return dict(response.json())


@contextmanager
def service_harness(database_url: str) -> Iterator[Harness]:
    from fastapi.testclient import TestClient

    from gateway.api import create_api
    from gateway.credentials import token_hash
    from gateway.service import BrokerInfo, GatewayService
    from gateway.store import GatewayStore, make_engine

    clock = Clock()
    engine = make_engine(database_url)
    store = GatewayStore(engine, clock)
    store.create_tables()
    broker, publisher = FakeBroker(), FakePublisher()
    service = GatewayService(store, broker, publisher,
                             BrokerInfo("broker.example.org", 8883, True, "senken/v1",
                                        "-----BEGIN CERTIFICATE-----\n"),
                             token_hash(ADMIN_TOKEN), clock)
    try:
        with TestClient(create_api(service)) as http:
            yield Harness(service, broker, publisher, clock, http)
    finally:
        engine.dispose()


class MqttProbe:
    """A paho MQTT 5 client for checking what the broker allows: connect, publish (with the
    PUBACK's reason code), subscribe and collect messages."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None,
                 ca_file: Path | None = None) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"probe-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.port = port
        self.reason: Any = None
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._connack = threading.Event()
        self._subscribed = threading.Event()
        self._acks: dict[int, Any] = {}
        self._acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.reason = reason
        self._connack.set()

    def _on_disconnect(self, *_a: Any) -> None:
        if not self._connack.is_set():  # closed before any CONNACK (e.g. no TLS on a TLS port)
            self.reason = ConnectionError("the broker closed the connection before CONNACK")
            self._connack.set()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._acked:
            self._acks[mid] = reason
            self._acked.notify_all()

    def connect(self, timeout: float = 5.0) -> Any:
        """The CONNACK's reason code (``.is_failure`` when refused); may be called again."""
        self._connack.clear()
        self.reason = None
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except OSError as exc:  # e.g. the TLS handshake failed
            return exc
        self.client.loop_start()
        assert self._connack.wait(timeout), "no CONNACK"
        if isinstance(self.reason, Exception) or self.reason.is_failure:
            self.close()
        return self.reason

    def connected_ok(self) -> bool:
        reason = self.connect()
        return not isinstance(reason, Exception) and not reason.is_failure

    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> Any:
        """Publish at QoS 1; the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self._acks, timeout), "no PUBACK"
            return self._acks.pop(info.mid)

    def subscribe(self, *filters: str, timeout: float = 5.0) -> None:
        self._subscribed.clear()
        self.client.subscribe([(f, 1) for f in filters])
        assert self._subscribed.wait(timeout), "no SUBACK"

    def received(self, topic: str | None = None) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if topic is None or t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
