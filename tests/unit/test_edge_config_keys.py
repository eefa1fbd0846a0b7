"""Config files and key files: every mistake gives a clear error naming what to fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_agent.cli import edge_group
from edge_agent.config import load_edge_config
from senken_core.errors import ConfigError, KeyFileError
from senken_core.keys import DeviceKey

GOOD = 'device_id = "dev-a1"\nstate_dir = "{dir}"\n[serial]\nport = "/dev/ttyUSB0"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text.format(dir=tmp_path))
    return path


def test_good_config_and_environment_overlay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENKEN_EDGE_MQTT__PORT", "8883")
    # SENKEN_EDGE_CONFIG names the file; it is not read as a (misspelt) field of it.
    monkeypatch.setenv("SENKEN_EDGE_CONFIG", str(tmp_path / "edge.toml"))
    cfg = load_edge_config(write(tmp_path, GOOD))
    assert cfg.mqtt.port == 8883 and cfg.serial.port == "/dev/ttyUSB0"
    assert load_edge_config() == cfg


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("device_id = [", "not valid TOML"),
        ('device_id = "Bad Id!"\n[serial]\nport = "x"\n', "device_id"),
        (GOOD + "[mqtt]\nport = 99999\n", "mqtt.port"),
        (GOOD + "[mqtt]\npassword = \"changeme\"\n", "placeholder"),
        (GOOD + "typo_field = 1\n", "typo_field"),
        ('device_id = "dev-a1"\n', "serial"),
        (GOOD + '[serial]\n', "not valid TOML"),
        (GOOD.replace('[serial]', '[serial]\nkind = "wind"'), "unknown sensor kind"),
        (GOOD.replace("[serial]", "pipeline_threads = 3\n[serial]"), "pipeline_threads"),
        ("\xff\xfe", "UTF-8"),
    ],
)
def test_bad_configs(tmp_path: Path, text: str, expect: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else
                     text.format(dir=tmp_path).encode())
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    assert expect in str(info.value)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_edge_config(tmp_path / "nope.toml")


def test_cli_reports_a_corrupt_config_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "device_id = [")
    result = CliRunner().invoke(edge_group, ["status", "--config", str(path)])
    assert result.exit_code == 1
    assert "not valid TOML" in result.output
    assert "Traceback" not in result.output


def test_key_file_permissions(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    key = DeviceKey.generate()
    key.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert DeviceKey.load(path).public_key == key.public_key
    with pytest.raises(KeyFileError, match="never overwritten"):
        DeviceKey.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        DeviceKey.load(path)
    os.chmod(path, 0o600)
    path.write_text("garbage")
    with pytest.raises(KeyFileError, match="not a Senken"):
        DeviceKey.load(path)
    with pytest.raises(KeyFileError, match="senken edge init"):
        DeviceKey.load(tmp_path / "missing.key")


def test_init_creates_key_and_config_and_refuses_twice(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["init", "--device-id", "pv-7-meter", "--serial-port", "/dev/ttyUSB0",
            "--state-dir", str(tmp_path / "state")]
    result = runner.invoke(edge_group, args)
    assert result.exit_code == 0, result.output
    assert "public key:" in result.output
    key = tmp_path / "state" / "device.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    cfg = load_edge_config(tmp_path / "state" / "edge.toml")
    assert cfg.device_id == "pv-7-meter"
    again = runner.invoke(edge_group, args)
    assert again.exit_code != 0 and "already exists" in again.output
    bad = runner.invoke(edge_group, ["init", "--device-id", "NO!", "--serial-port", "x",
                                     "--state-dir", str(tmp_path / "s2")])
    assert bad.exit_code == 2 and "device_id" in bad.output
