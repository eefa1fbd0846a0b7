"""The settings builder (senken_core.config): conversions, bounds, unknown keys, every problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import EdgeConfig, load_edge_config
from senken_core.errors import ConfigError

BASE: dict[str, Any] = {"device_id": "dev-a1", "serial": {"port": "/dev/ttyUSB0"}}


def test_defaults_and_types() -> None:
    cfg = EdgeConfig.from_dict(BASE)
    assert cfg.mqtt.port == 1883 and cfg.mqtt.password is None and cfg.serial.kind is None
    assert cfg.outbox.drain_rate_per_s == 2000.0 and isinstance(cfg.state_dir, Path)
    assert cfg == EdgeConfig.from_dict(dict(BASE))  # frozen value objects compare equal
    with pytest.raises(AttributeError):
        cfg.device_id = "other"  # type: ignore[misc]


def test_environment_strings_convert_like_toml_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('device_id = "dev-a1"\n[serial]\nport = "/dev/ttyUSB0"\n')
    monkeypatch.setenv("SENKEN_EDGE_MQTT__PORT", "8_883")
    monkeypatch.setenv("SENKEN_EDGE_OUTBOX__DRAIN_RATE_PER_S", "12.5")
    monkeypatch.setenv("SENKEN_EDGE_MQTT__PROTOCOL", "3.1.1")
    monkeypatch.setenv("SENKEN_EDGE_MODEL__PATH", "/opt/model.tflite")
    cfg = load_edge_config(path)
    assert cfg.mqtt.port == 8883 and cfg.outbox.drain_rate_per_s == 12.5
    assert cfg.mqtt.protocol == "3.1.1" and cfg.model.path == Path("/opt/model.tflite")


def test_every_problem_is_listed_with_its_dotted_name() -> None:
    data = {"device_id": 7, "typo": 1, "serial": {"baudrate": True},
            "mqtt": {"port": 0, "protocol": "4"}, "outbox": "big", "heartbeat_interval_s": -1}
    with pytest.raises(ConfigError) as info:
        EdgeConfig.from_dict(data, "test data")
    problems = "\n".join(info.value.problems)
    for expected in ("typo: unknown setting", "device_id: must be a string",
                     "serial.port: required", "serial.baudrate: must be a whole number",
                     "mqtt.port: must be greater than 0", "mqtt.protocol: must be one of",
                     "outbox: must be a table", "heartbeat_interval_s: must be greater than 0"):
        assert expected in problems
    assert "test data" in str(info.value)


def test_cross_field_rules_name_their_section() -> None:
    bad = {**BASE, "mqtt": {"tls_cert_file": "/etc/c.pem"}}
    with pytest.raises(ConfigError, match="mqtt: tls_cert_file and tls_key_file go together"):
        EdgeConfig.from_dict(bad)


def test_whole_floats_are_whole_numbers_but_fractions_and_bools_are_not() -> None:
    assert EdgeConfig.from_dict({**BASE, "mqtt": {"port": 8883.0}}).mqtt.port == 8883
    for bad in (8883.5, True, "0x22b3", float("inf")):
        with pytest.raises(ConfigError, match=r"mqtt\.port"):
            EdgeConfig.from_dict({**BASE, "mqtt": {"port": bad}})


plain = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
known_keys = st.sampled_from(["device_id", "serial", "mqtt", "outbox", "model", "state_dir",
                              "port", "kind", "baudrate", "host", "protocol", "sha256",
                              "max_readings", "pipeline_threads", "password"])


@settings(max_examples=300)
@given(st.dictionaries(known_keys, plain | st.dictionaries(known_keys, plain, max_size=4),
                       max_size=6))
def test_any_data_gives_a_config_or_config_error(data: dict[str, Any]) -> None:
    try:
        cfg = EdgeConfig.from_dict(data)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and ": " in p for p in exc.problems)
    else:
        assert isinstance(cfg, EdgeConfig)
