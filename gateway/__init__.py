"""The gateway: device enrollment with one-time tokens, the project-owner-signed device
registry (stored, then published retained on MQTT), and the broker's per-device accounts.

Layout: pure logic (``domain``, ``credentials``, ``broker_files``, ``schemas``), the service
(``service``, over ``ports``), adapters (``store``: SQLModel, ``broker``: Mosquitto files and
reload, ``publisher``: paho-mqtt, ``api``: FastAPI, ``client``: httpx), one composition root
(``app``) and the command line (``cli``). See docs/gateway.md.

Only senken_core is imported eagerly; :class:`Gateway`, :class:`GatewayConfig`,
:class:`GatewayService` and :class:`GatewayClient` load their libraries (FastAPI, SQLModel,
paho-mqtt, httpx) on first access, so ``senken gateway --help`` stays quick.
"""

from __future__ import annotations

import importlib
from typing import Any

from gateway.broker_files import (
    BrokerAccount,
    BrokerLayout,
    mosquitto_hash,
    render_acl,
    render_mosquitto_conf,
    render_password_file,
)
from gateway.domain import (
    PROJECT_TAG,
    PendingEnrollment,
    ProjectTerms,
    enrollment_record,
    revocation_record,
)
from gateway.errors import (
    Conflict,
    GatewayError,
    InvalidInput,
    NotAuthorised,
    NotFound,
    RecordRefused,
    TokenExpired,
    Unavailable,
)

_LAZY = {"Gateway": "gateway.app", "GatewayConfig": "gateway.config",
         "GatewayService": "gateway.service", "GatewayClient": "gateway.client",
         "load_gateway_config": "gateway.config"}

__all__ = [
    "PROJECT_TAG",
    "BrokerAccount",
    "BrokerLayout",
    "Conflict",
    "Gateway",
    "GatewayClient",
    "GatewayConfig",
    "GatewayError",
    "GatewayService",
    "InvalidInput",
    "NotAuthorised",
    "NotFound",
    "PendingEnrollment",
    "ProjectTerms",
    "RecordRefused",
    "TokenExpired",
    "Unavailable",
    "enrollment_record",
    "load_gateway_config",
    "mosquitto_hash",
    "render_acl",
    "render_mosquitto_conf",
    "render_password_file",
    "revocation_record",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
