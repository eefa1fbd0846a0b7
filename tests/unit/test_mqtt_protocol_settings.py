"""Every service speaks MQTT 5 unless its config says 3.1.1 (the demo's amqtt broker speaks
only 3.1.1); anything else is refused with the setting's name."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import GatewayConfig
from ledger.config import LedgerConfig
from senken_core.errors import ConfigError
from validator.config import ValidatorConfig

BASE: dict[type, dict[str, Any]] = {
    ValidatorConfig: {"network_file": "/etc/senken/network.toml"},
    LedgerConfig: {},
    GatewayConfig: {"broker": {"tls_port": 0, "plain_port": 1883, "device_tls": False}},
}


@pytest.mark.parametrize("schema", list(BASE))
def test_mqtt_5_by_default_and_3_1_1_on_request(schema: Any) -> None:
    assert schema.from_dict(dict(BASE[schema])).mqtt.protocol == "5"
    assert schema.from_dict({**BASE[schema], "mqtt": {"protocol": "3.1.1"}}).mqtt.protocol \
        == "3.1.1"


@pytest.mark.parametrize("schema", list(BASE))
def test_another_protocol_is_refused_by_name(schema: Any) -> None:
    with pytest.raises(ConfigError) as err:
        schema.from_dict({**BASE[schema], "mqtt": {"protocol": "3"}})
    assert "mqtt.protocol" in str(err.value)
