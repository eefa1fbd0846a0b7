"""``senken ledger ...``: run the central ledger, verify its log, check evidence offline."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from ledger.config import DEFAULT_STATE_DIR, LedgerConfig, load_ledger_config
from senken_core.errors import ConfigError, SenkenError

__all__ = ["ledger_group"]

_CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=None,
    help="config file [default: $SENKEN_LEDGER_CONFIG or ~/.senken/ledger/ledger.toml]",
)


def _load(config_path: Path | None) -> LedgerConfig:
    try:
        return load_ledger_config(config_path)
    except SenkenError as exc:
        raise click.ClickException(str(exc)) from None


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@click.group(name="ledger", help="The central ledger: certified windows in a hash-chained log.")
def ledger_group() -> None:
    pass


@ledger_group.command("init")
@click.option("--network-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              required=True, help="the network's terms (senken network init writes one)")
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR,
              show_default=True, help="where the config and the embedded database live")
@click.option("--database-url", default=None,
              help="postgresql://user@host/db [default: SQLite in the state dir]")
@click.option("--broker-host", default="127.0.0.1", show_default=True)
@click.option("--broker-port", type=click.IntRange(1, 65535), default=1883, show_default=True)
@click.option("--tls-ca-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="CA certificate to trust for the broker (enables TLS)")
@click.option("--api-host", default="127.0.0.1", show_default=True)
@click.option("--api-port", type=click.IntRange(0, 65535), default=8470, show_default=True)
@click.option("--timeseries-url", default=None,
              help="InfluxDB / VictoriaMetrics URL to export readings to (optional)")
def init_cmd(network_file: Path, state_dir: Path, database_url: str | None, broker_host: str,
             broker_port: int, tls_ca_file: Path | None, api_host: str, api_port: int,
             timeseries_url: str | None) -> None:
    """Write the ledger's config (refuses to overwrite one)."""
    import tomllib

    from senken_core.network import load_network_config

    state_dir = state_dir.expanduser().resolve()
    q = json.dumps
    lines = [f"state_dir = {q(str(state_dir))}",
             f"network_file = {q(str(network_file.resolve()))}"]
    if database_url:
        lines.append(f"database_url = {q(database_url)}")
    lines += ["", "[mqtt]", f"host = {q(broker_host)}", f"port = {broker_port}"]
    if tls_ca_file:
        lines.append(f"tls_ca_file = {q(str(tls_ca_file.resolve()))}")
    lines += ["", "[api]", f"host = {q(api_host)}", f"port = {api_port}"]
    if timeseries_url:
        lines += ["", "[timeseries]", f"url = {q(timeseries_url)}"]
    text = "\n".join(lines) + "\n"
    try:
        LedgerConfig.from_dict(tomllib.loads(text))
        load_network_config(network_file)
    except ConfigError as exc:
        raise click.BadParameter("; ".join(exc.problems)) from None
    config_file = state_dir / "ledger.toml"
    if config_file.exists():
        raise click.ClickException(f"{config_file} already exists; the ledger is initialised")
    state_dir.mkdir(parents=True, exist_ok=True)
    config_file.write_text(text, "utf-8")
    click.echo(f"config:   {config_file}")
    click.echo(f"next:     senken ledger run --config {config_file}")


@ledger_group.command("run")
@_CONFIG_OPTION
@click.option("-v", "--verbose", is_flag=True, help="log every message")
def run_cmd(config_path: Path | None, verbose: bool) -> None:
    """Run the ledger until SIGINT/SIGTERM: MQTT ingest, HTTP API, time-series export."""
    cfg = _load(config_path)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ledger.app import LedgerApp

    try:
        app = LedgerApp(cfg)
    except SenkenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"ledger: database {_shown_url(cfg.db_url)}, broker {cfg.mqtt.host}:"
               f"{cfg.mqtt.port}, API http://{cfg.api.host}:{cfg.api.port}")
    try:
        app.run_forever()
    except SenkenError as exc:
        raise click.ClickException(str(exc)) from None


@ledger_group.command("verify")
@_CONFIG_OPTION
def verify_cmd(config_path: Path | None) -> None:
    """Recompute the log's hash chain and check every entry; exit 1 at the first bad one."""
    from ledger.store import LedgerStore

    cfg = _load(config_path)
    try:
        store = LedgerStore.open(cfg.db_url, create=False)
        report = store.verify_log()
        store.close()
    except SenkenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


@ledger_group.command("status")
@_CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="print the raw status as JSON")
def status_cmd(config_path: Path | None, as_json: bool) -> None:
    """Show the log's size and head, waiting certificates, and whether the ledger runs."""
    import httpx

    from ledger.store import LedgerStore

    cfg = _load(config_path)
    status: dict[str, object] = {"database": _shown_url(cfg.db_url)}
    try:
        store = LedgerStore.open(cfg.db_url, create=False)
        size, head = store.head()
        status.update(log_size=size, head_hash=head.hex(), pending=store.pending_count(),
                      registry_devices=len(store.registry_records()))
        store.close()
    except SenkenError as exc:
        status["database_error"] = str(exc)
    host = "127.0.0.1" if cfg.api.host in ("0.0.0.0", "::") else cfg.api.host
    try:
        health = httpx.get(f"http://{host}:{cfg.api.port}/health", timeout=2.0).json()
        status.update(running=True, mqtt_connected=health.get("mqtt_connected"))
    except (httpx.HTTPError, ValueError):
        status.update(running=False, mqtt_connected=None)
    if as_json:
        click.echo(json.dumps(status, indent=1, sort_keys=True))
        return
    click.echo(f"database:   {status['database']}")
    if "database_error" in status:
        click.echo(f"            {status['database_error']}")
    else:
        click.echo(f"log:        {status['log_size']} entries, head {status['head_hash']}")
        click.echo(f"registry:   {status['registry_devices']} devices")
        click.echo(f"pending:    {status['pending']} certificates wait for a registry record")
    running = "running" if status["running"] else "not running (API not reachable)"
    click.echo(f"ledger:     {running} (http://{host}:{cfg.api.port})")
    if status["running"]:
        click.echo(f"broker:     {'connected' if status['mqtt_connected'] else 'not connected'}")


@ledger_group.command("check-evidence")
@click.argument("evidence", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--registry", "registry_file", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="the device's owner-signed registry record (GET .../registry)")
@click.option("--network", "network_file", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="the network file (validators, threshold, projects' owner keys)")
def check_evidence_cmd(evidence: Path, registry_file: Path, network_file: Path) -> None:
    """Check a certified window offline, as a buyer: certificate, device signatures, Merkle
    root, quantity. Prints signers and credits; exit 1 with the reason if anything fails."""
    from ledger.offline import check_evidence
    from senken_core.evidence import EvidenceError
    from senken_core.network import load_network_config

    try:
        network = load_network_config(network_file)
    except SenkenError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        checked = check_evidence(evidence.read_bytes(), registry_file.read_bytes(), network)
    except EvidenceError as exc:
        click.echo(f"REFUSED ({exc.reason}): {exc}")
        sys.exit(1)
    att = checked.attestation
    click.echo(f"OK        attestation {att.id.hex()}")
    click.echo(f"window    {att.project}/{att.device} from {att.window_start} for "
               f"{att.window_seconds} s")
    click.echo(f"readings  {att.readings_accepted} accepted, {att.readings_rejected} rejected")
    click.echo(f"quantity  {att.quantity} ({att.methodology} v{att.methodology_version})")
    click.echo(f"co2e      {att.co2e_mg} mg ({att.co2e_mg / 1e9:.6f} t)")
    click.echo(f"signers   {len(checked.signers)} of threshold "
               f"{network.threshold}: " + ", ".join("0x" + s.hex() for s in checked.signers))
