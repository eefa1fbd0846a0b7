"""The ledger's HTTP API (FastAPI): the log, attestations, evidence and proofs, read-only.

Endpoints (docs/ledger.md has examples)::

    GET /health                               db, mqtt, log size and head hash
    GET /log/head                             size and head hash
    GET /log/verify                           recompute the chain (LogReport)
    GET /attestations?project=&device=&since=&limit=
    GET /attestations/{id}                    + certificate signatures, signers, log entry
    GET /attestations/{id}/evidence           application/cbor: CertifiedWindow.to_wire()
    GET /attestations/{id}/registry           application/cbor: the device's signed record
    GET /proofs/{device}/{seq}                signed reading + RFC 6962 audit path
    GET /telemetry/{device}?since_ms=&limit=  recent counted readings
    GET /projects/{project}/summary           totals
    GET /metrics                              Prometheus text
    GET /credits/..., /chain/events           with a chain: mints, retirements, balances,
                                              the mint queue (ledger.credit_api)

Bytes are lower-case hex in JSON. A bad parameter answers 400 ``{"error": ...}``, an unknown
id 404, a failing database 503. Handlers are plain functions: FastAPI runs them on its thread
pool, so database work never blocks the event loop the MQTT ingest shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ledger.credit_api import credit_router
from ledger.credit_store import CreditStore
from ledger.params import (
    ParamError,
    parse_attestation_id,
    parse_identifier,
    parse_int,
    parse_limit,
)
from ledger.queries import LedgerQueries
from ledger.service import Ledger
from ledger.store import LedgerStore, StoreError

__all__ = ["CBOR", "create_api"]

CBOR = "application/cbor"
StatusFn = Callable[[], dict[str, Any]]


class _NotFound(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)


def create_api(store: LedgerStore, ledger: Ledger | None = None, *,
               mqtt_status: StatusFn | None = None,
               timeseries_status: StatusFn | None = None,
               credits: CreditStore | None = None,
               chain_status: StatusFn | None = None) -> FastAPI:
    """The API over ``store``; ``ledger`` (counters, the network's projects) and the status
    callables are optional, for /health and /metrics; with ``credits`` (the ledger mints)
    the credit endpoints too."""
    queries = LedgerQueries(store)
    app = FastAPI(title="Senken ledger", version="1",
                  description="The central ledger of certified windows (docs/ledger.md).")
    if credits is not None:
        app.include_router(credit_router(credits, chain_status))

    @app.exception_handler(ParamError)
    async def _bad_param(_request: Request, exc: ParamError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(_NotFound)
    async def _not_found(_request: Request, exc: _NotFound) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(StoreError)
    async def _store_down(_request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.get("/health")
    def health() -> JSONResponse:
        db_ok = store.ping()
        body: dict[str, Any] = {"db": "ok" if db_ok else "down", "backend": store.backend}
        if db_ok:
            size, head = store.head()
            body.update(log_size=size, head_hash=head.hex())
        body["mqtt"] = mqtt_status() if mqtt_status else None
        body["mqtt_connected"] = bool(body["mqtt"] and body["mqtt"].get("connected"))
        if timeseries_status is not None:
            body["timeseries"] = timeseries_status()
        if ledger is not None:
            body["ledger"] = ledger.stats()
        if chain_status is not None:
            body["chain"] = chain_status()
        return JSONResponse(body, status_code=200 if db_ok else 503)

    @app.get("/log/head")
    def log_head() -> dict[str, Any]:
        size, head = store.head()
        return {"size": size, "head_hash": head.hex()}

    @app.get("/log/verify")
    def log_verify() -> dict[str, Any]:
        return store.verify_log().to_dict()

    @app.get("/attestations")
    def attestations(project: str | None = None, device: str | None = None,
                     since: str | None = None, limit: str | None = None) -> dict[str, Any]:
        items = queries.attestations(
            project=parse_identifier(project, "project"),
            device=parse_identifier(device, "device"),
            since=parse_int(since, "since"), limit=parse_limit(limit))
        return {"attestations": items, "count": len(items)}

    def _attestation(id_hex: str) -> dict[str, Any]:
        found = queries.attestation(parse_attestation_id(id_hex))
        if found is None:
            raise _NotFound(f"no attestation {id_hex} in the log")
        return found

    @app.get("/attestations/{id_hex}")
    def attestation(id_hex: str) -> dict[str, Any]:
        return _attestation(id_hex)

    @app.get("/attestations/{id_hex}/evidence")
    def evidence(id_hex: str) -> Response:
        data = store.evidence(parse_attestation_id(id_hex))
        if data is None:
            raise _NotFound(f"no attestation {id_hex} in the log")
        return Response(data, media_type=CBOR, headers={
            "Content-Disposition": f'attachment; filename="{id_hex.lower()}.cbor"'})

    @app.get("/attestations/{id_hex}/registry")
    def registry(id_hex: str) -> Response:
        device = _attestation(id_hex)["device"]
        data = store.registry_record(device)
        if data is None:
            raise _NotFound(f"no registry record for {device}")
        return Response(data, media_type=CBOR, headers={
            "Content-Disposition": f'attachment; filename="{device}.registry.cbor"'})

    @app.get("/proofs/{device}/{seq}")
    def proof(device: str, seq: str) -> dict[str, Any]:
        name = parse_identifier(device, "device")
        number = parse_int(seq, "seq")
        assert name is not None and number is not None
        found = queries.proof(name, number)
        if found is None:
            raise _NotFound(f"reading {device}#{seq} is not counted in any logged window")
        return found

    @app.get("/telemetry/{device}")
    def telemetry(device: str, since_ms: str | None = None,
                  limit: str | None = None) -> dict[str, Any]:
        name = parse_identifier(device, "device")
        assert name is not None
        items = queries.telemetry(name, since_ms=parse_int(since_ms, "since_ms"),
                                  limit=parse_limit(limit))
        return {"device": name, "readings": items, "count": len(items)}

    @app.get("/projects/{project}/telemetry")
    def project_telemetry(project: str, since_ms: str | None = None,
                          limit: str | None = None) -> dict[str, Any]:
        name = parse_identifier(project, "project")
        assert name is not None
        if ledger is not None and ledger.network.project(name) is None:
            raise _NotFound(f"project {name} is not in this network")
        items = queries.project_telemetry(name, since_ms=parse_int(since_ms, "since_ms"),
                                          limit=parse_limit(limit))
        return {"project": name, "readings": items, "count": len(items)}

    @app.get("/projects/{project}/summary")
    def project_summary(project: str) -> dict[str, Any]:
        name = parse_identifier(project, "project")
        assert name is not None
        if ledger is not None and ledger.network.project(name) is None:
            raise _NotFound(f"project {name} is not in this network")
        return queries.project_summary(name)

    metrics_registry = CollectorRegistry(auto_describe=True)
    metrics_registry.register(_LedgerCollector(store, ledger, mqtt_status, timeseries_status))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _LedgerCollector(Collector):
    """Reads the counters at scrape time (nothing is registered globally)."""

    def __init__(self, store: LedgerStore, ledger: Ledger | None, mqtt_status: StatusFn | None,
                 timeseries_status: StatusFn | None) -> None:
        self.store, self.ledger = store, ledger
        self.mqtt_status, self.timeseries_status = mqtt_status, timeseries_status

    def collect(self):  # type: ignore[no-untyped-def]
        try:
            size, _ = self.store.head()
            entries = GaugeMetricFamily("senken_ledger_log_entries", "entries in the log")
            entries.add_metric([], size)
            yield entries
        except StoreError:
            pass
        if self.ledger is not None:
            stats = self.ledger.stats()
            certs = CounterMetricFamily("senken_ledger_certificates",
                                        "certificate payloads by outcome", labels=["outcome"])
            for outcome, n in sorted(stats["certificates"].items()):
                certs.add_metric([outcome], n)
            yield certs
            records = CounterMetricFamily("senken_ledger_registry_records",
                                          "registry payloads by outcome", labels=["outcome"])
            for outcome, n in sorted(stats["registry"].items()):
                records.add_metric([outcome], n)
            yield records
            devices = GaugeMetricFamily("senken_ledger_registry_devices", "devices registered")
            devices.add_metric([], stats["registry_devices"])
            yield devices
            if stats["pending_certificates"] is not None:
                pending = GaugeMetricFamily("senken_ledger_pending_certificates",
                                            "certificates waiting for their device's record")
                pending.add_metric([], stats["pending_certificates"])
                yield pending
        if self.mqtt_status is not None:
            status = self.mqtt_status()
            up = GaugeMetricFamily("senken_ledger_mqtt_connected", "1 if connected")
            up.add_metric([], 1 if status.get("connected") else 0)
            yield up
            messages = CounterMetricFamily("senken_ledger_mqtt_messages", "messages handled")
            messages.add_metric([], status.get("messages", 0))
            yield messages
        if self.timeseries_status is not None:
            ts = self.timeseries_status()
            for key in ("lag", "written"):
                if isinstance(ts.get(key), int | float):
                    gauge = GaugeMetricFamily(f"senken_ledger_timeseries_{key}",
                                              f"time-series exporter: {key}")
                    gauge.add_metric([], ts[key])
                    yield gauge
