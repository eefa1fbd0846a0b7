"""`senken edge enroll`'s pure parts: waiting for the owner's decision, and rewriting the
agent's config with the broker account it got (stdlib only: no HTTP library on the device)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import enroll as enroll_module
from edge_agent.config import EdgeConfig
from edge_agent.enroll import EnrollError, Enrollment, apply_credentials, render_toml

CREDENTIALS = {"username": "pv-7-meter", "password": "s3cret-broker-password",
               "host": "broker.example.org", "port": 8883, "tls": True,
               "topic_prefix": "senken/v1", "ca_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n"}


def validate(data: dict[str, Any]) -> EdgeConfig:
    return EdgeConfig.from_dict(data)


OLD_MQTT = 'host = "127.0.0.1"\nport = 1883\npassword = "old-one"\n'


def edge_config(tmp_path: Path, mqtt: str = OLD_MQTT) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(f'device_id = "pv-7-meter"\nstate_dir = "{tmp_path}"\n'
                    "heartbeat_interval_s = 2.5\n\n# the sensor\n[serial]\n"
                    'port = "/dev/ttyUSB0"\nkind = "elec_meter"\n\n[mqtt]\n' + mqtt)
    path.chmod(0o640)
    return path


def test_credentials_go_into_the_config_and_files(tmp_path: Path) -> None:
    path = edge_config(tmp_path)
    section = apply_credentials(path, tmp_path, CREDENTIALS, validate)
    cfg = EdgeConfig.from_dict(tomllib.loads(path.read_text()))
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username) == (
        "broker.example.org", 8883, "pv-7-meter")
    assert cfg.mqtt.password is None and cfg.mqtt.read_password() == "s3cret-broker-password"
    assert cfg.mqtt.password_file == tmp_path / "mqtt.password"
    assert (tmp_path / "mqtt.password").stat().st_mode & 0o777 == 0o600
    assert cfg.mqtt.tls_ca_file is not None
    assert cfg.mqtt.tls_ca_file.read_text() == CREDENTIALS["ca_pem"]
    assert (cfg.serial.kind, cfg.heartbeat_interval_s) == ("elec_meter", 2.5)  # the rest kept
    assert path.stat().st_mode & 0o777 == 0o640
    assert section["username"] == "pv-7-meter"


def test_an_invalid_result_leaves_the_config_alone(tmp_path: Path) -> None:
    path = edge_config(tmp_path)
    before = path.read_text()
    with pytest.raises(EnrollError, match="no CA certificate"):
        apply_credentials(path, tmp_path, {**CREDENTIALS, "ca_pem": None}, validate)
    with pytest.raises(EnrollError, match="lack"):
        apply_credentials(path, tmp_path, {"username": "x"}, validate)

    def refuse(_data: dict[str, Any]) -> None:
        raise EnrollError("no", bad_input=True)

    with pytest.raises(EnrollError):
        apply_credentials(path, tmp_path, CREDENTIALS, refuse)
    assert path.read_text() == before and not (tmp_path / "mqtt.password").exists()


def test_plain_mqtt_drops_the_ca(tmp_path: Path) -> None:
    path = edge_config(tmp_path, 'tls_ca_file = "/etc/ca.pem"\n')
    apply_credentials(path, tmp_path, {**CREDENTIALS, "tls": False, "port": 1883}, validate)
    assert "tls_ca_file" not in tomllib.loads(path.read_text())["mqtt"]


class FakeGateway:
    """Stands in for ``poll``: answers from a script, counting calls."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls = 0

    def __call__(self, _enrollment: Enrollment, _context: object = None) -> dict[str, Any]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)


ENROLLMENT = Enrollment("http://gw", "a" * 32, "senken-poll_x", "pv-7-meter")


def run_wait(monkeypatch: pytest.MonkeyPatch, answers: list[Any], wait_s: float
             ) -> tuple[dict[str, Any], FakeGateway, list[float]]:
    gateway, now, slept = FakeGateway(answers), [0.0], []
    monkeypatch.setattr(enroll_module, "poll", gateway)

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    answer = enroll_module.wait_for_decision(ENROLLMENT, wait_s, 2.0, lambda: now[0], sleep)
    return answer, gateway, slept


def test_waiting_polls_until_decided_retrying_an_unreachable_gateway(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answer, gateway, slept = run_wait(monkeypatch, [
        {"status": "pending"}, EnrollError("down"), EnrollError("bad gateway", status=502),
        {"status": "approved", "mqtt": CREDENTIALS}], 60)
    assert answer["status"] == "approved" and gateway.calls == 4 and slept == [2.0] * 3
    answer, gateway, slept = run_wait(monkeypatch, [{"status": "pending"}], 5)
    assert answer["status"] == "pending" and sum(slept) == 5 and slept[-1] == 1.0
    with pytest.raises(EnrollError, match="refused"):
        run_wait(monkeypatch, [EnrollError("refused", True, 401)], 60)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1), st.booleans(),
              st.floats(allow_nan=False),
              st.lists(st.integers(0, 9), max_size=3),
              st.dictionaries(st.text(min_size=1, max_size=8),
                              st.one_of(st.text(max_size=10), st.integers(0, 9)), max_size=3)),
    max_size=6))
def test_toml_writer_round_trips(data: dict[str, Any]) -> None:
    assert tomllib.loads(render_toml(data)) == data


def test_enroll_keeps_http_libraries_out_of_the_agent() -> None:
    code = ("import sys\nimport edge_agent.cli, edge_agent.enroll\n"
            "bad = {'httpx', 'pydantic', 'fastapi', 'requests', 'numpy'} & set(sys.modules)\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
