"""``senken edge ...``: the field technician's commands."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from edge_agent.config import DEFAULT_STATE_DIR, default_config_path, load_edge_config
from senken_core.errors import ConfigError, SenkenError

__all__ = ["edge_group"]

_CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=None,
    help="config file [default: $SENKEN_EDGE_CONFIG or ~/.senken/edge/edge.toml]",
)


def _load(config_path: Path | None):  # type: ignore[no-untyped-def]
    try:
        return load_edge_config(config_path)
    except SenkenError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(name="edge", help="Edge agent on a field device: read, score, sign, publish.")
def edge_group() -> None:
    pass


def _toml_str(value: str) -> str:
    return json.dumps(value)


@edge_group.command("init")
@click.option("--device-id", required=True, help="this device's id: a-z, 0-9, '-' (3-63 chars)")
@click.option("--serial-port", required=True, help="sensor port, e.g. /dev/serial/by-id/...")
@click.option("--kind", default=None, help="sensor kind expected on the port (optional)")
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR,
              show_default=True, help="where the key, outbox and config live")
@click.option("--broker-host", default="127.0.0.1", show_default=True)
@click.option("--broker-port", type=click.IntRange(1, 65535), default=1883, show_default=True)
@click.option("--tls-ca-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="CA certificate to trust for the broker (enables TLS)")
@click.option("--topic-prefix", default="senken/v1", show_default=True)
def init_cmd(device_id: str, serial_port: str, kind: str | None, state_dir: Path,
             broker_host: str, broker_port: int, tls_ca_file: Path | None,
             topic_prefix: str) -> None:
    """Create this device's Ed25519 key (mode 0600, never leaves the device) and its config.

    Refuses to overwrite an existing key or config.
    """
    from edge_agent.config import EdgeConfig
    from senken_core.keys import DeviceKey

    state_dir = state_dir.expanduser().resolve()
    lines = [f"device_id = {_toml_str(device_id)}", f"state_dir = {_toml_str(str(state_dir))}",
             "", "[serial]", f"port = {_toml_str(serial_port)}", "baudrate = 115200"]
    if kind:
        lines.append(f"kind = {_toml_str(kind)}")
    lines += ["", "[mqtt]", f"host = {_toml_str(broker_host)}", f"port = {broker_port}",
              f"topic_prefix = {_toml_str(topic_prefix)}"]
    if tls_ca_file:
        lines.append(f"tls_ca_file = {_toml_str(str(tls_ca_file.resolve()))}")
    text = "\n".join(lines) + "\n"
    import tomllib

    try:
        cfg = EdgeConfig.from_dict(tomllib.loads(text))
    except ConfigError as exc:
        raise click.BadParameter("; ".join(exc.problems)) from None
    config_file = state_dir / "edge.toml"
    if config_file.exists():
        raise click.ClickException(f"{config_file} already exists; this device is initialised")
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    key = DeviceKey.generate()
    try:
        key.save(cfg.key_path)
    except SenkenError as exc:
        raise click.ClickException(str(exc)) from None
    config_file.write_text(text, "utf-8")
    click.echo(f"device id:   {device_id}")
    click.echo(f"public key:  {key.public_key.hex()}")
    click.echo(f"key file:    {cfg.key_path} (mode 0600)")
    click.echo(f"config:      {config_file}")
    click.echo(f"next:        senken edge doctor --config {config_file}")


@edge_group.command("run")
@_CONFIG_OPTION
@click.option("-v", "--verbose", is_flag=True, help="log every reading batch")
def run_cmd(config_path: Path | None, verbose: bool) -> None:
    """Run the agent until SIGINT/SIGTERM: read the port, score, sign, store, publish."""
    cfg = _load(config_path)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edge_agent.app import EdgeAgent

    try:
        agent = EdgeAgent(cfg)
    except SenkenError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        agent.run_forever()
    except SenkenError as exc:  # a pipeline thread failed; logged with its traceback
        raise click.ClickException(str(exc)) from None


@edge_group.command("doctor")
@_CONFIG_OPTION
@click.option("--listen", "listen_s", type=click.FloatRange(0.5, 120), default=5.0,
              show_default=True, help="seconds to listen on the serial port")
def doctor_cmd(config_path: Path | None, listen_s: float) -> None:
    """Check port, permissions, clock, broker (TLS), key, model and outbox; say what to fix."""
    try:
        cfg = load_edge_config(config_path)
    except SenkenError as exc:
        click.echo(f"FAIL  config   {exc}")
        sys.exit(1)
    click.echo(f"OK    config   {config_path or default_config_path()}")
    from edge_agent.doctor import run_checks

    failed = 0
    for check in run_checks(cfg, listen_s):
        click.echo(check.line())
        failed += not check.ok
    if failed:
        click.echo(f"{failed} check(s) failed")
        sys.exit(1)
    click.echo("all checks passed")


@edge_group.command("status")
@_CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="print the raw status as JSON")
def status_cmd(config_path: Path | None, as_json: bool) -> None:
    """Show whether the agent runs, its outbox depth, counters and last error."""
    from edge_agent.stats import read_status

    cfg = _load(config_path)
    from edge_agent.doctor import running_agent_pid

    status = read_status(cfg.status_path) or {}
    pid = running_agent_pid(cfg)
    running = pid is not None
    depth = None
    if cfg.outbox_path.exists():
        import sqlite3

        with sqlite3.connect(f"file:{cfg.outbox_path}?mode=ro", uri=True) as db:
            depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    status.update(running=running, outbox_depth=depth)
    if as_json:
        click.echo(json.dumps(status, indent=1, sort_keys=True))
        return
    age = ""
    if isinstance(status.get("updated_ms"), int):
        age = f" (status {time.time() - status['updated_ms'] / 1000:.0f} s old)"
    click.echo(f"device:       {cfg.device_id}")
    click.echo(f"agent:        {'running, pid ' + str(pid) if running else 'not running'}{age}")
    click.echo(f"serial:       {status.get('serial_state', 'unknown')}")
    click.echo(f"broker:       {'connected' if status.get('mqtt_connected') else 'not connected'}"
               f" ({cfg.mqtt.host}:{cfg.mqtt.port})")
    click.echo(f"outbox:       {depth if depth is not None else 'none yet'} readings waiting")
    click.echo(f"readings:     {status.get('readings_signed', 0)} signed, "
               f"{status.get('readings_acked', 0)} acknowledged by the broker")
    rejected = status.get("frames_rejected") or {}
    click.echo(f"bad frames:   {sum(rejected.values())} "
               + (json.dumps(rejected, sort_keys=True) if rejected else ""))
    click.echo(f"model:        {status.get('model_sha256', 'unknown')}")
    click.echo(f"last error:   {status.get('last_error') or 'none'}")


class _BadInput(click.ClickException):
    """Bad input: exit code 2 and one line."""

    exit_code = 2


@edge_group.command("enroll")
@click.option("--token", default=None, help="the one-time enrollment token from the project owner")
@click.option("--gateway", "gateway_url", default=None, metavar="URL",
              help="the gateway, e.g. https://gateway.example.org")
@_CONFIG_OPTION
@click.option("--wait", "wait_s", type=click.FloatRange(0, 7 * 86400), default=600.0,
              show_default=True, help="seconds to wait for the owner's approval")
@click.option("--kind", default=None, help="sensor kind [default: the config's serial.kind]")
@click.option("--location", default="", help="where the device is installed")
@click.option("--calibration-date", default="", help="the meter's last calibration, YYYY-MM-DD")
@click.option("--technician", default="", help="who installed it")
@click.option("--poll-interval", "poll_interval_s", type=click.FloatRange(0.05, 300),
              default=2.0, show_default=True, help="seconds between status checks")
@click.option("--gateway-ca", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="CA certificate of an https gateway [default: the system's]")
def enroll_cmd(token: str | None, gateway_url: str | None, config_path: Path | None,
               wait_s: float, kind: str | None, location: str, calibration_date: str,
               technician: str, poll_interval_s: float, gateway_ca: Path | None) -> None:
    """Register this device with the gateway, wait for the project owner's approval, then
    write the broker account it gets into the config.

    Sends the device's public key (the private key never leaves the device). An enrollment
    that is still pending when --wait runs out resumes on the next run, without a token.
    """
    from edge_agent.config import EdgeConfig
    from edge_agent.enroll import EnrollError, enroll
    from senken_core.keys import DeviceKey

    path = config_path or default_config_path()
    try:
        cfg = load_edge_config(path)
        public_key = DeviceKey.load(cfg.key_path).public_key
    except ConfigError as exc:
        raise _BadInput(f"invalid configuration in {exc.source}: "
                        + "; ".join(exc.problems)) from None
    except SenkenError as exc:
        raise _BadInput(str(exc)) from None

    def validate(data: dict[str, object]) -> object:
        try:
            return EdgeConfig.from_dict(data, str(path))
        except ConfigError as exc:
            raise EnrollError("the updated config would be invalid: "
                              + "; ".join(exc.problems), bad_input=True) from None

    install = {"location": location, "calibration_date": calibration_date,
               "technician": technician}
    try:
        answer = enroll(path, cfg.state_dir, cfg.device_id, public_key,
                        kind or cfg.serial.kind, gateway_url, token, install, wait_s,
                        poll_interval_s, validate, click.echo, gateway_ca)
    except EnrollError as exc:
        if exc.bad_input:
            raise _BadInput(str(exc)) from None
        raise click.ClickException(str(exc)) from None
    if answer.get("status") == "pending" and wait_s > 0:
        raise click.ClickException(
            f"still pending after {wait_s:.0f} s: ask the project owner to approve "
            f"{cfg.device_id} (senken gateway approve), then run `senken edge enroll "
            f"--config {path}` again")
    if answer.get("status") == "pending":
        click.echo(f"pending; run `senken edge enroll --config {path}` to collect the broker "
                   "account once approved")
