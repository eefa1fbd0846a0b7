"""`senken gateway` without a running gateway: bad input is one line and exit code 2; the
operator's local commands write the broker's files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.broker_files import parse_acl, parse_password_file, verify_password
from gateway.cli import gateway_group
from tests.support.mosquitto import free_port

VALIDATOR = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(gateway_group, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def one_line(result: tuple[int, str], code: int, *parts: str) -> None:
    exit_code, output = result
    assert exit_code == code, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.fixture
def owner_key(tmp_path: Path) -> Path:
    path = tmp_path / "owner.key"
    code, output = run("owner-key", "init", str(path))
    assert code == 0 and "public key:" in output
    assert path.stat().st_mode & 0o777 == 0o600
    return path


def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, owner_key: Path) -> None:
    token_file = tmp_path / "api.token"
    token_file.write_text("senken-owner_x\n")
    token_file.chmod(0o600)
    admin = tmp_path / "admin.token"
    admin.write_text("changeme\n")
    admin.chmod(0o600)
    one_line(run("owner-key", "init", str(owner_key)), 2, "already exists")
    one_line(run("tokens", "--project", "pv-plant-7", "--ttl", "soon",
                 "--api-token-file", str(token_file)), 2, "--ttl 'soon'")
    register = ["project", "register", "--owner-key", str(owner_key), "--model-sha256",
                "ab" * 32, "--admin-token-file", str(admin), "--api-token-file",
                str(tmp_path / "new.token")]
    one_line(run(*register, "--project", "Bad Id"), 2, "project must be")
    one_line(run(*register, "--project", "pv-plant-7", "--param", "novalue"), 2,
             "NAME=VALUE")
    one_line(run(*register, "--project", "pv-plant-7", "--param", "Bad=1"), 2,
             "parameter name")
    one_line(run(*register, "--project", "pv-plant-7"), 2, "placeholder")
    (tmp_path / "loose.key").write_text("x")
    (tmp_path / "loose.key").chmod(0o644)
    one_line(run("approve", "--project", "pv-plant-7", "--owner-key",
                 str(tmp_path / "loose.key"), "--api-token-file", str(token_file)), 2,
             "readable by group or others")
    one_line(run("run", "--config", str(tmp_path / "missing.toml")), 2, "file not found")
    one_line(run("pending", "--project", "pv-plant-7", "--api-token-file",
                 str(tmp_path / "none.token")), 2, "does not exist")
    # a gateway that cannot be reached is not bad input: exit 1
    one_line(run("tokens", "--project", "pv-plant-7", "--api-token-file", str(token_file),
                 "--gateway", f"http://127.0.0.1:{free_port()}"), 1, "cannot reach")


def test_init_then_service_accounts_write_the_broker_files(tmp_path: Path) -> None:
    state = tmp_path / "gw"
    code, output = run("init", "--state-dir", str(state), "--tls-port", "0",
                       "--plain-port", "1883")
    assert code == 0, output
    config = str(state / "gateway.toml")
    assert (state / "admin.token").stat().st_mode & 0o777 == 0o600
    code, output = run("account", "add", VALIDATOR.upper().replace("0X", "0x"), "--role",
                       "validator", "--config", config)
    assert code == 0 and "password (shown once): " in output, output
    password = output.rsplit("password (shown once): ", 1)[1].strip()
    acl = parse_acl((state / "broker" / "acl").read_text())
    assert set(acl) == {VALIDATOR, "gateway"}  # the gateway's own account from the config
    users = parse_password_file((state / "broker" / "passwd").read_text())
    assert verify_password(password, users[VALIDATOR])
    assert oct((state / "broker" / "passwd").stat().st_mode & 0o777) == oct(0o640)
    code, output = run("account", "list", "--config", config)
    assert output.split() == ["validator", VALIDATOR, "gateway", "gateway"]
    one_line(run("account", "add", "0xnot", "--role", "validator", "--config", config), 2,
             "0x and 40")
    one_line(run("account", "add", VALIDATOR, "--role", "ledger", "--config", config), 2,
             "ledger account")
    code, output = run("broker-sync", "--config", config)
    assert code == 0 and "not reloaded" in output  # no pid file or reload command set
    conf = (state / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 1883 127.0.0.1" in conf


def test_init_refuses_a_bad_combination(tmp_path: Path) -> None:
    one_line(run("init", "--state-dir", str(tmp_path / "gw"), "--tls-port", "8883"), 2,
             "needs broker.ca_file")
    assert not (tmp_path / "gw" / "gateway.toml").exists()
