"""``senken gateway ...``: the gateway's operator and the project owners.

On the gateway's host (``--config``): ``init``, ``run``, ``broker-sync``, ``account add|list``.
On the owner's machine (``--gateway URL``, the owner key never leaves it): ``owner-key init``,
``project register``, ``tokens``, ``pending``, ``approve``, ``reject``, ``revoke``.

Bad input (arguments, config, a request the gateway refuses) exits with code 2 and one line
saying what is wrong; a gateway that cannot be reached exits with 1.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from gateway.config import DEFAULT_STATE_DIR, GatewayConfig, load_gateway_config
from gateway.domain import PendingEnrollment, ProjectTerms
from senken_core.errors import ConfigError, SenkenError

__all__ = ["gateway_group"]

OWNER_HOME = Path(os.environ.get("SENKEN_OWNER_HOME", "~/.senken/owner")).expanduser()
_TTL = re.compile(r"(\d+)([smhd]?)\Z")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class BadInput(click.ClickException):
    """Bad input: exit code 2, one line."""

    exit_code = 2


class Failed(click.ClickException):
    exit_code = 1


def _config_error_line(exc: ConfigError) -> str:
    return f"invalid configuration in {exc.source}: " + "; ".join(exc.problems)


def _fail_client(exc: SenkenError) -> NoReturn:
    from gateway.client import ClientError

    if isinstance(exc, ClientError) and ((exc.status == 0 and exc.reason == "unreachable")
                                         or exc.status >= 500):
        raise Failed(str(exc)) from None
    raise BadInput(str(exc).replace("\n", " ")) from None


def _load(config_path: Path | None) -> GatewayConfig:
    try:
        return load_gateway_config(config_path)
    except ConfigError as exc:
        raise BadInput(_config_error_line(exc)) from None


def _open_gateway(cfg: GatewayConfig):  # type: ignore[no-untyped-def]
    from gateway.app import Gateway

    try:
        return Gateway(cfg)
    except ConfigError as exc:
        raise BadInput(_config_error_line(exc)) from None


def write_secret(path: Path, text: str) -> None:
    """Write a new file of mode 0600; refuses to overwrite one (a secret shown once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def _read_secret(path: Path, what: str) -> str:
    from gateway.config import read_secret_file

    try:
        return read_secret_file(path, what)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _owner_key(path: Path):  # type: ignore[no-untyped-def]
    from senken_core.keys import DeviceKey, read_key_file

    try:
        return DeviceKey(read_key_file(path, "senken-ed25519-seed-v1", 32,
                                       "senken gateway owner-key init", "owner key"))
    except SenkenError as exc:
        raise BadInput(str(exc)) from None


def _token_path(project: str, given: Path | None) -> Path:
    return given or OWNER_HOME / f"{project}.api-token"


def _api_token(project: str, given: Path | None) -> str:
    env = os.environ.get("SENKEN_GATEWAY_API_TOKEN")
    if env and given is None:
        return env.strip()
    return _read_secret(_token_path(project, given), f"owner API token of {project}")


@contextmanager
def _client(url: str, token: str | None = None) -> Iterator[Any]:
    from gateway.client import GatewayClient

    client = GatewayClient(url, token)
    try:
        yield client
    except SenkenError as exc:
        _fail_client(exc)
    finally:
        client.close()


_GATEWAY = click.option("--gateway", "url", envvar="SENKEN_GATEWAY_URL",
                        default="http://127.0.0.1:8080", show_default=True,
                        help="the gateway's URL [env SENKEN_GATEWAY_URL]")
_CONFIG = click.option("--config", "config_path", type=click.Path(path_type=Path),
                       default=None, help="gateway config [default: $SENKEN_GATEWAY_CONFIG or "
                                          "~/.senken/gateway/gateway.toml]")
_API_TOKEN = click.option("--api-token-file", type=click.Path(path_type=Path), default=None,
                          help="the project's owner API token [default: "
                               "~/.senken/owner/PROJECT.api-token or $SENKEN_GATEWAY_API_TOKEN]")
_PROJECT = click.option("--project", required=True, help="project id")
_OWNER_KEY = click.option("--owner-key", type=click.Path(path_type=Path), required=True,
                          help="the project owner's Ed25519 key file")


@click.group(name="gateway", help="Gateway: device enrollment, the owner-signed device "
                                  "registry, broker accounts.")
def gateway_group() -> None:
    pass


# -- the gateway's host ------------------------------------------------------------------


def _toml(value: object) -> str:
    return json.dumps(str(value)) if isinstance(value, str | Path) else json.dumps(value)


@gateway_group.command("init")
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR,
              show_default=True, help="where the config, database and secrets go")
@click.option("--api-host", default="127.0.0.1", show_default=True)
@click.option("--api-port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--database-url", default=None, help="default: SQLite in the state dir")
@click.option("--topic-prefix", default="senken/v1", show_default=True)
@click.option("--broker-host", default="127.0.0.1", show_default=True,
              help="the broker's address as devices reach it")
@click.option("--tls-port", type=click.IntRange(0, 65535), default=8883, show_default=True,
              help="the devices' TLS listener (0: none)")
@click.option("--plain-port", type=click.IntRange(0, 65535), default=1883, show_default=True,
              help="plain listener on 127.0.0.1 for services (0: none)")
@click.option("--ca-file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--cert-file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--key-file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--broker-dir", type=click.Path(path_type=Path), default=None,
              help="where mosquitto.conf, passwd and acl go [default: STATE_DIR/broker]")
@click.option("--broker-user", default=None, help="user Mosquitto runs as (files chowned)")
@click.option("--broker-pid-file", type=click.Path(path_type=Path), default=None,
              help="Mosquitto's pid file: the gateway reloads it with SIGHUP")
def init_cmd(state_dir: Path, api_host: str, api_port: int, database_url: str | None,
             topic_prefix: str, broker_host: str, tls_port: int, plain_port: int,
             ca_file: Path | None, cert_file: Path | None, key_file: Path | None,
             broker_dir: Path | None, broker_user: str | None,
             broker_pid_file: Path | None) -> None:
    """Write a gateway config, its admin token and the gateway's own broker password.

    Refuses to overwrite an existing config.
    """
    import tomllib

    state_dir = state_dir.expanduser().resolve()
    config_file = state_dir / "gateway.toml"
    if config_file.exists():
        raise BadInput(f"{config_file} already exists")
    broker: dict[str, Any] = {"dir": str((broker_dir or state_dir / "broker").resolve()),
                              "public_host": broker_host, "public_port": tls_port or plain_port,
                              "tls_port": tls_port, "plain_port": plain_port,
                              "device_tls": bool(tls_port)}
    if broker_pid_file is not None:
        broker["pid_file"] = str(broker_pid_file.resolve())
    for name, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if path is not None:
            broker[name] = str(path.resolve())
    if broker_user:
        broker["file_owner"] = broker_user
    sections: dict[str, dict[str, Any]] = {
        "api": {"host": api_host, "port": api_port,
                "admin_token_file": str(state_dir / "admin.token")},
        "mqtt": {"host": "127.0.0.1", "port": plain_port or tls_port, "username": "gateway",
                 "password_file": str(state_dir / "mqtt.password")},
        "broker": broker,
    }
    if tls_port and not plain_port and ca_file:
        sections["mqtt"]["tls_ca_file"] = str(ca_file.resolve())
    if database_url:
        sections["database"] = {"url": database_url}
    lines = [f"state_dir = {_toml(str(state_dir))}", f"topic_prefix = {_toml(topic_prefix)}"]
    for name, values in sections.items():
        lines += ["", f"[{name}]"] + [f"{k} = {_toml(v)}" for k, v in values.items()]
    lines += ["", "[[accounts]]", 'name = "gateway"', 'role = "gateway"',
              f"password_file = {_toml(str(state_dir / 'mqtt.password'))}"]
    text = "\n".join(lines) + "\n"
    try:
        GatewayConfig.from_dict(tomllib.loads(text), "the new config")
    except ConfigError as exc:
        raise BadInput(_config_error_line(exc)) from None
    state_dir.mkdir(parents=True, exist_ok=True)
    # the broker's user must reach the broker files below it; the secrets are 0600 anyway
    os.chmod(state_dir, 0o711 if broker_user and broker_dir is None else 0o700)
    admin_token = f"senken-admin_{secrets.token_urlsafe(32)}"
    for name, secret in (("admin.token", admin_token),
                         ("mqtt.password", secrets.token_urlsafe(32))):
        if not (state_dir / name).exists():
            write_secret(state_dir / name, secret)
    config_file.write_text(text, "utf-8")
    click.echo(f"config:       {config_file}")
    click.echo(f"admin token:  {state_dir / 'admin.token'} (give it to whoever registers "
               "projects)")
    click.echo(f"broker files: {broker['dir']} (mosquitto.conf, passwd, acl: include the "
               "conf from Mosquitto's)")
    if broker_pid_file is None:
        click.echo("note:         no --broker-pid-file: set broker.pid_file or "
                   "broker.reload_command so that the gateway can reload Mosquitto")
    click.echo(f"next:         senken gateway run --config {config_file}")


@gateway_group.command("run")
@_CONFIG
@click.option("-v", "--verbose", is_flag=True)
def run_cmd(config_path: Path | None, verbose: bool) -> None:
    """Serve the API (uvicorn) and publish the registry until SIGINT/SIGTERM."""
    cfg = _load(config_path)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    gateway = _open_gateway(cfg)
    uvicorn.run(gateway.api(), host=cfg.api.host, port=cfg.api.port,
                log_level="debug" if verbose else "info")


@gateway_group.command("broker-sync")
@_CONFIG
def broker_sync_cmd(config_path: Path | None) -> None:
    """Write mosquitto.conf, the password and ACL files from the database; reload the broker."""
    with _open_gateway(_load(config_path)) as gateway:
        try:
            result = gateway.prepare()
        except SenkenError as exc:
            raise Failed(str(exc)) from None
        click.echo(f"broker files in {gateway.cfg.broker_dir}: "
                   f"{'reloaded' if result.reloaded else 'not reloaded'} {result.message}")


@gateway_group.group("account")
def account_group() -> None:
    """Broker accounts of services (validators, the ledger, the gateway)."""


@account_group.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["validator", "ledger", "gateway"]), required=True)
@click.option("--password-file", type=click.Path(path_type=Path), default=None,
              help="use this password (file, mode 0600) instead of a new random one")
@_CONFIG
def account_add_cmd(name: str, role: str, password_file: Path | None,
                    config_path: Path | None) -> None:
    """Add a service account (or set its password); a validator's NAME is its 0x address."""
    from gateway.errors import GatewayError

    password = (_read_secret(password_file, "password") if password_file
                else secrets.token_urlsafe(32))
    with _open_gateway(_load(config_path)) as gateway:
        try:
            gateway.load_accounts()
            created, sync = gateway.service.add_service_account(name.lower() if role ==
                                                                "validator" else name, role,
                                                                password)
        except GatewayError as exc:
            raise BadInput(exc.message) from None
        except SenkenError as exc:
            raise Failed(str(exc)) from None
    click.echo(f"{'added' if created else 'password changed for'} {role} account {name}; "
               f"broker {'reloaded' if sync.reloaded else 'not reloaded: ' + sync.message}")
    if password_file is None:
        click.echo(f"password (shown once): {password}")


@account_group.command("list")
@_CONFIG
def account_list_cmd(config_path: Path | None) -> None:
    """List the broker's accounts and their roles."""
    with _open_gateway(_load(config_path)) as gateway:
        try:
            gateway.load_accounts()
        except SenkenError as exc:
            raise Failed(str(exc)) from None
        for account in gateway.store.accounts():
            click.echo(f"{account.role:10} {account.username}")


# -- the project owner's machine -----------------------------------------------------------


@gateway_group.group("owner-key")
def owner_key_group() -> None:
    """The project owner's Ed25519 key: it signs every device record of the project."""


@owner_key_group.command("init")
@click.argument("path", type=click.Path(path_type=Path))
def owner_key_init_cmd(path: Path) -> None:
    """Create an owner key at PATH (mode 0600; never overwritten)."""
    from senken_core.keys import DeviceKey

    key = DeviceKey.generate()
    try:
        key.save(path)
    except SenkenError as exc:
        raise BadInput(str(exc)) from None
    click.echo(f"owner key:   {path} (mode 0600; keep it off the gateway)")
    click.echo(f"public key:  {key.public_key.hex()}")


@gateway_group.group("project")
def project_group() -> None:
    """Projects: their owner key, methodology, location and parameters."""


def _parameter(text: str) -> tuple[str, int | str | bool]:
    name, sep, value = text.partition("=")
    if not sep:
        raise BadInput(f"--param {text!r}: expected NAME=VALUE")
    if re.fullmatch(r"-?\d+", value):
        return name, int(value)
    if value in ("true", "false"):
        return name, value == "true"
    return name, value


def _packaged_model_sha256() -> str:
    import hashlib

    from senken_core.anomaly import DEFAULT_MODEL_PATH

    return hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).hexdigest()


@project_group.command("register")
@_PROJECT
@_OWNER_KEY
@click.option("--methodology", default="CDM AMS-I.D", show_default=True)
@click.option("--location", default="", help="site name or coordinates")
@click.option("--model-sha256", default=None,
              help="the anomaly model devices must run [default: the packaged model's]")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="a project parameter (integer, true/false or text); repeatable")
@click.option("--admin-token-file", type=click.Path(path_type=Path), required=True,
              envvar="SENKEN_GATEWAY_ADMIN_TOKEN_FILE", help="the gateway's admin token")
@_API_TOKEN
@_GATEWAY
def project_register_cmd(project: str, owner_key: Path, methodology: str, location: str,
                         model_sha256: str | None, params: tuple[str, ...],
                         admin_token_file: Path, api_token_file: Path | None,
                         url: str) -> None:
    """Register a project with its terms signed by the owner key; saves the owner API token."""
    from gateway.client import register_project

    key = _owner_key(owner_key)
    try:
        terms = ProjectTerms(project=project, owner_public_key=key.public_key,
                             methodology=methodology, location=location,
                             model_sha256=bytes.fromhex(model_sha256 or
                                                        _packaged_model_sha256()),
                             parameters=dict(_parameter(p) for p in params))
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    token_file = _token_path(project, api_token_file)
    if token_file.exists():
        raise BadInput(f"{token_file} exists; pass another --api-token-file")
    admin_token = _read_secret(admin_token_file, "admin token")
    with _client(url) as client:
        api_token = register_project(client, admin_token, key, terms)
    try:
        write_secret(token_file, api_token)
    except OSError as exc:
        click.echo(f"owner API token (save it now, it is shown once): {api_token}")
        raise Failed(f"cannot write {token_file}: {exc}") from None
    click.echo(f"project {project} registered; owner API token in {token_file} (mode 0600)")


def _ttl_seconds(text: str) -> int:
    found = _TTL.match(text.strip())
    if not found:
        raise BadInput(f"--ttl {text!r}: a duration such as 3600, 90m, 12h or 7d")
    return int(found[1]) * _TTL_UNITS[found[2]]


@gateway_group.command("tokens")
@_PROJECT
@click.option("--count", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--ttl", default="7d", show_default=True, help="validity: 3600, 90m, 12h, 7d")
@_API_TOKEN
@_GATEWAY
def tokens_cmd(project: str, count: int, ttl: str, api_token_file: Path | None,
               url: str) -> None:
    """Issue one-time enrollment tokens, one per line, for technicians."""
    seconds = _ttl_seconds(ttl)
    with _client(url, _api_token(project, api_token_file)) as client:
        tokens, expires_at_ms = client.issue_tokens(project, count, seconds)
    import datetime

    expires = datetime.datetime.fromtimestamp(expires_at_ms / 1000, datetime.UTC)
    click.echo(f"# {count} enrollment token(s) for {project}, valid until "
               f"{expires:%Y-%m-%d %H:%M} UTC, one device each", err=True)
    for token in tokens:
        click.echo(token)


def _describe(e: PendingEnrollment) -> str:
    parts = [f"{e.device} ({e.kind})", f"key {e.fingerprint}..."]
    parts += [f"{n} {v}" for n, v in (("at", e.location), ("calibrated", e.calibration_date),
                                      ("by", e.technician)) if v]
    return ", ".join(parts)


@gateway_group.command("pending")
@_PROJECT
@_API_TOKEN
@_GATEWAY
def pending_cmd(project: str, api_token_file: Path | None, url: str) -> None:
    """List the project's pending enrollments."""
    with _client(url, _api_token(project, api_token_file)) as client:
        found = client.enrollments(project)
    for e, _status in found:
        click.echo(_describe(e))
    if not found:
        click.echo("no pending enrollments")


@gateway_group.command("approve")
@_PROJECT
@_OWNER_KEY
@click.option("--all", "approve_all", is_flag=True, help="approve every pending enrollment")
@click.option("--device", "devices", multiple=True, help="approve this device; repeatable")
@_API_TOKEN
@_GATEWAY
def approve_cmd(project: str, owner_key: Path, approve_all: bool, devices: tuple[str, ...],
                api_token_file: Path | None, url: str) -> None:
    """Sign a registry record for pending enrollments and post them.

    Compare each key fingerprint with what the technician reads off the device
    (`senken edge enroll` prints it). Without --all or --device, asks for each.
    """
    key = _owner_key(owner_key)
    from gateway.client import approve_enrollments

    choose: Callable[[PendingEnrollment], bool]
    if approve_all:
        choose = lambda e: True  # noqa: E731
    elif devices:
        choose = lambda e: e.device in devices  # noqa: E731
    else:
        choose = lambda e: click.confirm(f"approve {_describe(e)}?")  # noqa: E731
    with _client(url, _api_token(project, api_token_file)) as client:
        records, answer = approve_enrollments(client, project, key, choose)
    missing = set(devices) - {r.device for r in records}
    if not records:
        click.echo("nothing approved" + (f"; not pending: {', '.join(sorted(missing))}"
                                         if missing else ""))
        if missing:
            raise BadInput(f"not pending in {project}: {', '.join(sorted(missing))}")
        return
    for record in records:
        click.echo(f"approved {record.device} (record version {record.version})")
    _echo_broker(answer)
    if missing:
        raise BadInput(f"not pending in {project}: {', '.join(sorted(missing))}")


def _echo_broker(answer: dict[str, Any] | None) -> None:
    broker = (answer or {}).get("broker")
    if broker and not broker.get("reloaded"):
        click.echo(f"warning: broker not reloaded: {broker.get('message')}", err=True)


@gateway_group.command("reject")
@_PROJECT
@click.argument("device")
@_API_TOKEN
@_GATEWAY
def reject_cmd(project: str, device: str, api_token_file: Path | None, url: str) -> None:
    """Reject DEVICE's pending enrollment (its id may be enrolled again)."""
    with _client(url, _api_token(project, api_token_file)) as client:
        ids = [e.id for e, _s in client.enrollments(project) if e.device == device]
        if not ids:
            raise BadInput(f"no pending enrollment of {device} in {project}")
        client.reject(project, ids[0])
    click.echo(f"rejected the enrollment of {device}")


@gateway_group.command("revoke")
@click.argument("device")
@_OWNER_KEY
@_API_TOKEN
@_GATEWAY
def revoke_cmd(device: str, owner_key: Path, api_token_file: Path | None, url: str) -> None:
    """Revoke DEVICE for good: a new record version, signed, and its broker account removed."""
    key = _owner_key(owner_key)
    from gateway.client import revoke_device

    with _client(url) as client:
        record, answer = revoke_device(client, device, key,
                                       lambda project: _api_token(project, api_token_file))
    click.echo(f"revoked {device} (record version {record.version})")
    _echo_broker(answer)
