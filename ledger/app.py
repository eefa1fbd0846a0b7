"""The ledger's composition root: config in, running services out.

::

    LedgerConfig ─▶ LedgerStore (SQLite / PostgreSQL)
                 ─▶ Ledger (checks, appends) ◀── MqttIngest (certificates, registry records)
                 ─▶ FastAPI app ── uvicorn, in the same event loop
                 ─▶ TimeSeriesExporter (only with [timeseries] url) ◀── LedgerPointSource
                 ─▶ MintWorker + ChainMirror (only with [chain] url) ◀── the log (ledger.chain_app)
                 ─▶ ScheduleFollower (only with [chain] url) ──▶ Ledger: validator sets and
                    methodology terms from the chain instead of the network file's

Nothing is created at import time. :meth:`LedgerApp.run` runs until its ``stop`` event is set
or a part stops (the HTTP server on SIGINT/SIGTERM); then it stops the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

import uvicorn

from ledger.api import create_api
from ledger.config import LedgerConfig
from ledger.mqtt import MqttIngest
from ledger.points import LedgerPointSource
from ledger.service import Ledger
from ledger.store import LedgerStore
from senken_core.network import NetworkConfig, load_network_config

__all__ = ["LedgerApp"]

log = logging.getLogger(__name__)


class LedgerApp:
    """Everything the ledger process runs. Raises ConfigError (network file) and StoreError
    (database) when built."""

    def __init__(self, config: LedgerConfig, network: NetworkConfig | None = None, *,
                 w3: Any = None, addresses: Any = None) -> None:
        """``w3`` and ``addresses`` (a ``web3.Web3`` and ``ledger.deploy.Addresses``): mint
        on a chain this process made and deployed to already (the demo's eth-tester)."""
        self.config = config
        self.network = network or load_network_config(config.network_path)
        self.store = LedgerStore.open(config.db_url)
        self.ledger = Ledger(self.network, self.store, follow_chain=bool(config.chain.url))
        self.ingest = MqttIngest(self.ledger, config.mqtt, self.network.topic_prefix)
        self.exporter: Any = None
        ts = config.timeseries
        if ts.url:
            from ledger.timeseries import TimeSeriesExporter

            self.exporter = TimeSeriesExporter(
                LedgerPointSource(self.store), ts.url, ts.token or "", ts.org, ts.bucket,
                batch_size=ts.batch_size, retry_max_s=ts.retry_max_s)
        self.chain: Any = None
        if config.chain.url:
            from ledger.chain_app import open_chain

            self.chain = open_chain(config.chain, self.network, self.store, w3=w3,
                                    addresses=addresses, ledger=self.ledger)
        self.api = create_api(
            self.store, self.ledger, mqtt_status=self.ingest.status,
            timeseries_status=self.exporter.status if self.exporter is not None else None,
            credits=self.chain.credits if self.chain is not None else None,
            chain_status=self.chain.status if self.chain is not None else None)
        self._server: uvicorn.Server | None = None

    @property
    def api_port(self) -> int | None:
        """The port the API listens on, once it does (useful with ``[api] port = 0``)."""
        server = self._server
        if server is None or not server.started or not server.servers:
            return None
        return int(server.servers[0].sockets[0].getsockname()[1])

    async def run(self, stop: asyncio.Event) -> None:
        """Run ingest, API, exporter, minter and event mirror until ``stop`` is set or one of
        them ends."""
        await asyncio.to_thread(self.ledger.start)
        self._server = uvicorn.Server(uvicorn.Config(
            self.api, host=self.config.api.host, port=self.config.api.port,
            log_level="warning", access_log=False, lifespan="off"))
        parts: list[Coroutine[Any, Any, Any]] = [self.ingest.run(stop), self._server.serve()]
        if self.exporter is not None:
            parts.append(self.exporter.run(stop))
        if self.chain is not None:
            parts.append(self.chain.run_minter(stop))
            if self.chain.mirror is not None:
                parts.append(self.chain.mirror.run(stop))
            if self.chain.follower is not None:
                parts.append(self.chain.follower.run(stop))
        tasks = [asyncio.create_task(p) for p in parts]
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.set()
            self._server.should_exit = True
            done, pending = await asyncio.wait(tasks, timeout=15)
            for task in pending:
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("ledger part failed", exc_info=task.exception())
            stopping.cancel()
            if self.exporter is not None:
                self.exporter.close()
            await asyncio.to_thread(self.store.close)

    def run_forever(self) -> None:
        """Run until SIGINT or SIGTERM."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            await self.run(stop)

        asyncio.run(main())
