"""The composition root: builds the gateway's parts from a :class:`GatewayConfig` and wires
them. Nothing is created at import time; ``senken gateway run`` and the tests call
:class:`Gateway`.

::

    HTTP (uvicorn) -> api.create_api -> GatewayService -> GatewayStore (SQLModel: SQLite/PostgreSQL)
                                                     -> MosquittoBroker (passwd, acl, SIGHUP)
                                                     -> RegistryPublisher.wake()
    RegistryPublisher thread: store.unpublished() -> MQTT retained QoS 1 -> store.mark_published()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType

from fastapi import FastAPI

from gateway.api import create_api
from gateway.broker import MosquittoBroker
from gateway.broker_files import BrokerAccount, mosquitto_hash
from gateway.config import GatewayConfig, read_secret_file
from gateway.credentials import token_hash
from gateway.ports import BrokerSync
from gateway.publisher import MqttSettings, RegistryPublisher
from gateway.service import BrokerInfo, GatewayService
from gateway.store import GatewayStore, make_engine
from senken_core.errors import ConfigError

__all__ = ["Gateway", "wall_clock_ms"]

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Gateway:
    """The gateway's parts for one config. ``prepare()`` makes the tables and the broker's
    files; ``start()`` also starts the registry publisher; ``api()`` is the ASGI app whose
    lifespan starts and stops it. Raises ConfigError for secrets it cannot read."""

    def __init__(self, cfg: GatewayConfig, now_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.cfg = cfg
        source = "gateway config"
        try:
            admin = (read_secret_file(cfg.api.admin_token_file, "api.admin_token_file")
                     if cfg.api.admin_token_file else None)
            mqtt_password = (read_secret_file(cfg.mqtt.password_file, "mqtt.password_file")
                             if cfg.mqtt.password_file else None)
            self._account_passwords = {
                a.name: read_secret_file(a.password_file, f"accounts ({a.name}) password_file")
                for a in cfg.accounts}
            ca_pem = (cfg.broker.ca_file.read_text("ascii")
                      if cfg.broker.device_tls and cfg.broker.ca_file else None)
        except (ValueError, OSError) as exc:
            raise ConfigError(source, [str(exc)]) from None
        self.engine = make_engine(cfg.database_url)
        self.store = GatewayStore(self.engine, now_ms)
        self.broker = MosquittoBroker(
            cfg.broker_layout(), cfg.topic_prefix, conf_file=cfg.broker_dir / "mosquitto.conf",
            file_owner=cfg.broker.file_owner, file_group=cfg.broker.file_group,
            reload_command=cfg.broker.reload_command)
        self.publisher = RegistryPublisher(
            self.store,
            MqttSettings(host=cfg.mqtt.host, port=cfg.mqtt.port, username=cfg.mqtt.username,
                         password=mqtt_password, tls_ca_file=cfg.mqtt.tls_ca_file,
                         client_id=cfg.mqtt.client_id, protocol=cfg.mqtt.protocol),
            cfg.topic_prefix, retry_interval_s=cfg.mqtt.retry_interval_s)
        info = BrokerInfo(host=cfg.broker.public_host, port=cfg.broker.public_port,
                          tls=cfg.broker.device_tls, topic_prefix=cfg.topic_prefix,
                          ca_pem=ca_pem)
        self.service = GatewayService(self.store, self.broker, self.publisher, info,
                                      token_hash(admin) if admin else None, now_ms)
        self._started = False

    def prepare(self) -> BrokerSync:
        """Create missing tables, add the config's service accounts, write mosquitto.conf and
        the password/ACL files, reload the broker. Idempotent."""
        self.load_accounts()
        conf = self.broker.write_conf()
        if conf is not None:
            log.info("broker config written to %s (include it from mosquitto.conf)", conf)
        return self.service.sync_broker()

    def load_accounts(self) -> None:
        """Create missing tables and store the config's service accounts (idempotent)."""
        if self.cfg.database_url.startswith("sqlite:///"):
            self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.store.create_tables()
        for account in self.cfg.accounts:
            self.store.put_service_account(BrokerAccount(
                account.name, account.role, mosquitto_hash(self._account_passwords[account.name])))

    def start(self) -> None:
        self.prepare()
        self.publisher.start()
        self._started = True

    def stop(self) -> None:
        if self._started:
            self.publisher.stop()
            self._started = False
        self.engine.dispose()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def api(self) -> FastAPI:
        """The ASGI app; its lifespan starts the gateway (publisher included) and stops it."""

        @asynccontextmanager
        async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
            await asyncio.to_thread(self.start)
            try:
                yield
            finally:
                await asyncio.to_thread(self.stop)

        return create_api(self.service, lifespan)
