"""``senken validator ...``: a validator operator's commands (init, run, status)."""

from __future__ import annotations

import json
import logging
import os
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

import click

from validator.config import DEFAULT_STATE_DIR, load_validator_config

__all__ = ["validator_group"]

_CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=None,
    help="config file [default: $SENKEN_VALIDATOR_CONFIG or ~/.senken/validator/validator.toml]",
)


def _fail(message: str, code: int) -> NoReturn:
    """One line on stderr and exit ``code``: what is wrong and what to do, no traceback."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _one_line(exc: Exception) -> str:
    from senken_core.errors import ConfigError

    if isinstance(exc, ConfigError):
        return f"invalid configuration in {exc.source}: " + "; ".join(exc.problems)
    return " ".join(str(exc).split())


@click.group(name="validator", help="A validator: verify every reading, attest per window.")
def validator_group() -> None:
    pass


@validator_group.command("init")
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR,
              show_default=True, help="where the key, config and status live")
@click.option("--network", "network_file", type=click.Path(path_type=Path), default=None,
              help="the network file (senken network init) [default: STATE_DIR/network.toml]")
@click.option("--mqtt-host", default="127.0.0.1", show_default=True)
@click.option("--mqtt-port", type=click.IntRange(1, 65535), default=1883, show_default=True)
@click.option("--mqtt-username", default=None, help="broker user (e.g. the 0x address)")
@click.option("--mqtt-password-file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="file holding the broker password")
@click.option("--tls-ca-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="CA certificate to trust for the broker (enables TLS)")
@click.option("--http-port", type=click.IntRange(0, 65535), default=9464, show_default=True,
              help="/metrics and /health on 127.0.0.1 (0: any free port)")
def init_cmd(state_dir: Path, network_file: Path | None, mqtt_host: str, mqtt_port: int,
             mqtt_username: str | None, mqtt_password_file: Path | None,
             tls_ca_file: Path | None, http_port: int) -> None:
    """Create this validator's secp256k1 key (mode 0600) and its config; print its address.

    Refuses to overwrite an existing key or config. Put the printed address in the network
    file's validators (senken network init --validator 0x...).
    """
    from senken_core.errors import ConfigError, SenkenError
    from senken_core.secp256k1 import ValidatorKey
    from validator.config import ValidatorConfig

    state_dir = state_dir.expanduser().resolve()
    network_file = (network_file or state_dir / "network.toml").expanduser().resolve()
    q = json.dumps  # a JSON string is a TOML basic string
    lines = [f"state_dir = {q(str(state_dir))}", f"network_file = {q(str(network_file))}",
             "grace_s = 2.0", "round_timeout_s = 2.0", "", "[mqtt]",
             f"host = {q(mqtt_host)}", f"port = {mqtt_port}"]
    if mqtt_username:
        lines.append(f"username = {q(mqtt_username)}")
    if mqtt_password_file:
        lines.append(f"password_file = {q(str(mqtt_password_file.resolve()))}")
    if tls_ca_file:
        lines.append(f"tls_ca_file = {q(str(tls_ca_file.resolve()))}")
    lines += ["", "[http]", 'host = "127.0.0.1"', f"port = {http_port}", "", "[model]",
              "check = true"]
    text = "\n".join(lines) + "\n"
    try:
        cfg = ValidatorConfig.from_dict(tomllib.loads(text))
    except ConfigError as exc:
        _fail("; ".join(exc.problems), 2)
    config_file = state_dir / "validator.toml"
    for existing in (cfg.key_path, config_file):
        if existing.exists():
            _fail(f"{existing} already exists: this validator is initialised (its key is its "
                  "identity; move it away first to start over)", 1)
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    key = ValidatorKey.generate()
    try:
        key.save(cfg.key_path)
    except SenkenError as exc:
        _fail(_one_line(exc), 1)
    config_file.write_text(text, "utf-8")
    click.echo(f"address:     0x{key.address.hex()}")
    click.echo(f"key file:    {cfg.key_path} (mode 0600)")
    click.echo(f"config:      {config_file}")
    click.echo(f"network:     {network_file}"
               + ("" if network_file.exists() else " (not there yet)"))
    click.echo("next:        put the address in the network file (senken network init "
               f"--validator 0x{key.address.hex()} ...), then senken validator run "
               f"--config {config_file}")


@validator_group.command("run")
@_CONFIG_OPTION
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def run_cmd(config_path: Path | None, verbose: bool) -> None:
    """Run the validator until SIGINT/SIGTERM.

    Exit status 2: the configuration, key, network file or model is wrong (one line says
    what); 1: the service failed.
    """
    from senken_core.errors import SenkenError

    try:
        cfg = load_validator_config(config_path)
    except SenkenError as exc:
        _fail(_one_line(exc), 2)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("validator.app.mqtt").setLevel(logging.WARNING)
    from validator.app import ServiceError, run_validator

    try:
        run_validator(cfg)
    except ServiceError as exc:
        _fail(_one_line(exc), 1)
    except SenkenError as exc:  # key, network file, model, lock: before the service starts
        _fail(_one_line(exc), 2)
    except Exception as exc:
        logging.getLogger("validator").exception("the validator failed")
        _fail(f"the validator failed: {exc}", 1)


def _health(status: dict[str, Any]) -> dict[str, Any] | None:
    host = str(status.get("http_host") or "127.0.0.1")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{status.get('http_port')}/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503: running, not connected
        body = exc.read()
    except (OSError, ValueError):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@validator_group.command("status")
@_CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="print the health endpoint's JSON")
def status_cmd(config_path: Path | None, as_json: bool) -> None:
    """Show whether the validator runs, its broker link, peers and counters (exit 1 if it
    does not run)."""
    from senken_core.errors import SenkenError

    try:
        cfg = load_validator_config(config_path)
    except SenkenError as exc:
        _fail(_one_line(exc), 2)
    try:
        status = json.loads(cfg.status_path.read_text("utf-8"))
    except (OSError, ValueError):
        status = {}
    health = _health(status) if isinstance(status, dict) and status.get("http_port") else None
    if health is not None and health.get("address") != status.get("address"):
        health = None  # something else answers on that port
    if health is None:
        if as_json:
            click.echo(json.dumps({"running": False}, sort_keys=True))
        else:
            where = cfg.status_path if status else f"{cfg.status_path} (none)"
            click.echo(f"validator not running (no answer from the health endpoint in {where})")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"running": True, **health}, indent=1, sort_keys=True))
        return
    age = health.get("last_message_age_s")
    click.echo(f"validator:     {health.get('address')}")
    click.echo(f"service:       running, pid {health.get('pid')}, up "
               f"{float(health.get('uptime_s') or 0):.0f} s ({health.get('status')})")
    click.echo(f"broker:        {'connected' if health.get('mqtt_connected') else 'NOT connected'}"
               f" ({status.get('broker', '?')})")
    click.echo(f"peers:         {health.get('peers_seen')} seen in the last 60 s")
    click.echo(f"readings:      {health.get('readings_verified')} verified, "
               f"{health.get('readings_accepted')} accepted, "
               f"{health.get('readings_rejected')} rejected, "
               f"{health.get('readings_duplicate')} duplicates, {health.get('pending')} pending")
    click.echo(f"attestations:  {health.get('attestations_signed')} signed, "
               f"{health.get('certificates')} certificates, "
               f"{health.get('rounds_timed_out')} rounds timed out, "
               f"{health.get('windows_open')} windows open")
    click.echo(f"registry:      {health.get('registry_devices')} devices")
    click.echo(f"last message:  {'never' if age is None else f'{age:.1f} s ago'}; "
               f"{health.get('node_errors')} node errors, "
               f"{health.get('outbound_queued')} messages waiting to be published")
    click.echo(f"endpoints:     http://{status.get('http_host')}:{status.get('http_port')}"
               "/metrics and /health")
