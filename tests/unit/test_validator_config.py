"""The validator's config, and the refusals of ``senken validator init/run/status`` before any
I/O: one line, the right exit status, never a traceback."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core.errors import ConfigError
from senken_core.secp256k1 import ValidatorKey
from tests.support.validator import make_validator, write_network
from validator.cli import validator_group
from validator.config import ValidatorConfig, load_validator_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_and_derived_paths(tmp_path: Path) -> None:
    cfg = load_validator_config(write(tmp_path / "v.toml", 'network_file = "/n.toml"\n'),
                                environ={})
    assert cfg.network_file == Path("/n.toml")
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 9464)
    assert cfg.model.check is True
    assert (cfg.grace_s, cfg.round_timeout_s) == (2.0, 2.0)
    assert cfg.mqtt.session_expiry_s == 7 * 86400
    assert cfg.key_path == cfg.state_dir / "validator.key"
    assert cfg.status_path == cfg.state_dir / "status.json"
    address = bytes(range(20))
    assert cfg.client_id_for(address) == "validator-0x" + address.hex()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "v.toml", 'network_file = "/n.toml"\n[mqtt]\nhost = "a"\n')
    cfg = load_validator_config(path, environ={
        "SENKEN_VALIDATOR_MQTT__HOST": "broker", "SENKEN_VALIDATOR_MQTT__PORT": "8883",
        "SENKEN_VALIDATOR_HTTP__PORT": "0", "SENKEN_VALIDATOR_MODEL__CHECK": "off",
        "SENKEN_VALIDATOR_MQTT__CLIENT_ID": "v1"})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.http.port) == ("broker", 8883, 0)
    assert cfg.model.check is False
    assert cfg.client_id_for(b"\x00" * 20) == "v1"


@pytest.mark.parametrize(("text", "problem"), [
    ("", "network_file: required"),
    ('network_file = "n"\n[mqtt]\nport = 70000\n', "mqtt.port: must be less than 65536"),
    ('network_file = "n"\n[http]\nport = -1\n', "http.port: must be at least 0"),
    ('network_file = "n"\n[mqtt]\npassword = "changeme"\n', "placeholder"),
    ('network_file = "n"\n[mqtt]\npassword = "p"\npassword_file = "f"\n', "not both"),
    ('network_file = "n"\n[mqtt]\ntls_cert_file = "c"\n', "go together"),
    ('network_file = "n"\n[mqtt]\nreconnect_min_s = 5\nreconnect_max_s = 1\n',
     "reconnect_min_s"),
    ('network_file = "n"\n[mqtt]\nclient_id = "a/b"\n', "mqtt.client_id"),
    ('network_file = "n"\n[model]\nsha256 = "AB"\n', "model.sha256"),
    ('network_file = "n"\ngrace = 1\n', "grace: unknown setting"),
    ('network_file = "n"\nround_timeout_s = 0\n', "round_timeout_s: must be greater than 0"),
])
def test_bad_settings_are_listed(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_validator_config(write(tmp_path / "v.toml", text), environ={})
    assert any(problem in p for p in caught.value.problems), caught.value.problems


@settings(max_examples=60, deadline=None)
@given(host=st.from_regex(r"[a-z0-9.-]{1,40}", fullmatch=True),
       port=st.integers(-5, 70_000), http_port=st.integers(-5, 70_000),
       keepalive=st.integers(0, 4000), grace=st.floats(-1, 5000, allow_nan=False))
def test_loader_accepts_exactly_the_valid_values(host: str, port: int, http_port: int,
                                                 keepalive: int, grace: float) -> None:
    data = {"network_file": "n.toml", "grace_s": grace,
            "mqtt": {"host": host, "port": port, "keepalive_s": keepalive},
            "http": {"port": http_port}}
    valid = 0 < port < 65536 and 0 <= http_port < 65536 and 5 <= keepalive <= 3600 \
        and 0 <= grace <= 3600
    # the same data through TOML text, as a file gives it
    text = (f'network_file = "n.toml"\ngrace_s = {grace!r}\n[mqtt]\nhost = {json.dumps(host)}\n'
            f"port = {port}\nkeepalive_s = {keepalive}\n[http]\nport = {http_port}\n")
    assert tomllib.loads(text) == data
    try:
        cfg = ValidatorConfig.from_dict(tomllib.loads(text))
    except ConfigError:
        assert not valid
        return
    assert valid
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.keepalive_s, cfg.http.port, cfg.grace_s) \
        == (host, port, keepalive, http_port, grace)


# --- the commands' refusals -------------------------------------------------------------


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(validator_group, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_init_creates_key_and_config_and_refuses_to_overwrite(tmp_path: Path) -> None:
    state = tmp_path / "v"
    code, out = run("init", "--state-dir", str(state), "--mqtt-host", "broker.example",
                    "--http-port", "0")
    assert code == 0, out
    key = ValidatorKey.load(state / "validator.key")
    assert f"address:     0x{key.address.hex()}" in out
    assert stat.S_IMODE((state / "validator.key").stat().st_mode) == 0o600
    cfg = load_validator_config(state / "validator.toml", environ={})
    assert (cfg.mqtt.host, cfg.http.port, cfg.state_dir) == ("broker.example", 0, state)
    assert cfg.network_file == state / "network.toml"
    code, out = run("init", "--state-dir", str(state))
    assert code == 1 and "already exists" in out
    assert ValidatorKey.load(state / "validator.key").address == key.address


def one_error_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("error: ")
    return lines[0]


def test_run_refuses_a_bad_config_with_status_2(tmp_path: Path) -> None:
    path = write(tmp_path / "v.toml", 'network_file = "n"\n[mqtt]\nport = "x"\nhots = 1\n')
    code, out = run("run", "--config", str(path))
    assert code == 2
    line = one_error_line(out)
    assert "mqtt.port: must be a whole number" in line and "mqtt.hots: unknown" in line
    code, out = run("run", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "file not found" in one_error_line(out)


def test_run_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    config, key = make_validator(tmp_path / "v", 1883)
    write_network(tmp_path / "v" / "network.toml", [key.address], "p/v1")
    os.chmod(tmp_path / "v" / "validator.key", 0o644)
    code, out = run("run", "--config", str(config))
    assert code == 2
    assert "validator.key" in one_error_line(out)


def test_run_refuses_a_missing_or_foreign_network_file(tmp_path: Path) -> None:
    config, key = make_validator(tmp_path / "v", 1883)
    code, out = run("run", "--config", str(config))
    assert code == 2 and "network.toml" in one_error_line(out)
    write_network(tmp_path / "v" / "network.toml", [b"\x01" * 20], "p/v1")
    code, out = run("run", "--config", str(config))
    assert code == 2
    assert f"0x{key.address.hex()}) is not in the validators" in one_error_line(out)
    (tmp_path / "v" / "network.toml").write_text("threshold = [\n")
    code, out = run("run", "--config", str(config))
    assert code == 2 and "not valid TOML" in one_error_line(out)


def test_run_refuses_an_unreadable_password_file(tmp_path: Path) -> None:
    config, key = make_validator(tmp_path / "v", 1883,
                                 mqtt={"password_file": str(tmp_path / "nope")})
    write_network(tmp_path / "v" / "network.toml", [key.address], "p/v1")
    code, out = run("run", "--config", str(config))
    assert code == 2 and "password_file" in one_error_line(out)


def test_status_says_when_the_validator_does_not_run(tmp_path: Path) -> None:
    config, _key = make_validator(tmp_path / "v", 1883)
    code, out = run("status", "--config", str(config))
    assert code == 1 and "not running" in out
    (tmp_path / "v" / "status.json").write_text(json.dumps(
        {"pid": 1, "address": "0x" + "00" * 20, "http_host": "127.0.0.1", "http_port": 9}))
    code, out = run("status", "--config", str(config), "--json")
    assert code == 1 and json.loads(out) == {"running": False}
