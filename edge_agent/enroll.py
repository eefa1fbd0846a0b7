"""``senken edge enroll``: register this device with the gateway and fetch its broker account.

Standard library only (urllib, json, tomllib): the device's agent carries no HTTP or
validation library (its memory budget, docs/edge_agent.md), and this module is not on the
``senken edge run`` path anyway.

Steps (docs/gateway.md)::

    POST {gateway}/v1/enrollments  {token, device, public_key, kind, install data}
         -> enrollment id + poll secret, kept in {state_dir}/enrollment.json (0600)
    GET  {gateway}/v1/enrollments/{id}  (Bearer poll secret), every poll interval, until the
         project owner approved it or --wait runs out
    then write {state_dir}/mqtt.password (0600) and the broker's CA, and set [mqtt] host, port,
    topic_prefix, username, password_file and tls_ca_file in the agent's config

The enrollment token is consumed by the first step. An interrupted or timed-out run resumes
from enrollment.json on the next run, without a token.
"""

from __future__ import annotations

import json
import math
import os
import ssl
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senken_core.errors import SenkenError

__all__ = ["EnrollError", "Enrollment", "apply_credentials", "enroll", "render_toml"]

_TIMEOUT_S = 15.0
STATE_FILE = "enrollment.json"


class EnrollError(SenkenError):
    """Enrollment failed; ``bad_input`` when what was given (token, options, config) is wrong
    rather than the network or the gateway."""

    def __init__(self, message: str, bad_input: bool = False, status: int = 0) -> None:
        super().__init__(message)
        self.bad_input = bad_input
        self.status = status


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A submitted enrollment: what the device needs to ask about it later."""

    gateway: str
    enrollment_id: str
    poll_secret: str
    device: str
    project: str = ""

    def save(self, path: Path) -> None:
        _write_file(path, json.dumps({"gateway": self.gateway, "enrollment_id":
                                      self.enrollment_id, "poll_secret": self.poll_secret,
                                      "device": self.device, "project": self.project}), 0o600)

    @classmethod
    def load(cls, path: Path) -> Enrollment | None:
        try:
            data = json.loads(path.read_text("utf-8"))
            return cls(str(data["gateway"]), str(data["enrollment_id"]),
                       str(data["poll_secret"]), str(data["device"]), str(data.get("project")))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise EnrollError(f"{path} is unreadable ({exc}); delete it and enroll again "
                              "with a new token", bad_input=True) from None


def _write_file(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` atomically with a file of ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _request(method: str, url: str, body: Mapping[str, Any] | None = None,
             bearer: str | None = None, context: ssl.SSLContext | None = None
             ) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode("utf-8")
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S, context=context) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read().decode("utf-8")).get("message") or exc.reason
        except (ValueError, AttributeError, OSError):
            message = exc.reason
        raise EnrollError(f"the gateway refused: {message}", bad_input=400 <= exc.code < 500,
                          status=exc.code) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EnrollError(f"cannot reach the gateway at {url}: {reason}") from None
    except ValueError:
        raise EnrollError(f"the gateway at {url} did not answer with JSON") from None
    if not isinstance(answer, dict):
        raise EnrollError(f"the gateway at {url} did not answer with a JSON object")
    return answer


def submit(gateway: str, token: str, body: Mapping[str, Any],
           context: ssl.SSLContext | None = None) -> Enrollment:
    """POST the enrollment; the token is consumed if this returns."""
    answer = _request("POST", f"{gateway}/v1/enrollments", {"token": token, **body},
                      context=context)
    try:
        return Enrollment(gateway, str(answer["enrollment_id"]), str(answer["poll_secret"]),
                          str(answer["device"]), str(answer.get("project", "")))
    except KeyError as exc:
        raise EnrollError(f"the gateway's answer lacks {exc}") from None


def poll(enrollment: Enrollment, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """The enrollment's status (and, once approved, ``mqtt`` credentials)."""
    return _request("GET", f"{enrollment.gateway}/v1/enrollments/{enrollment.enrollment_id}",
                    bearer=enrollment.poll_secret, context=context)


def wait_for_decision(enrollment: Enrollment, wait_s: float, poll_interval_s: float,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep,
                      context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """Poll until the status is no longer ``pending`` or ``wait_s`` ran out (then the last
    answer, still pending). A gateway that cannot be reached meanwhile is retried; one that
    refuses (4xx) ends the wait with EnrollError."""
    deadline = clock() + wait_s
    last: dict[str, Any] = {"status": "pending"}
    while True:
        try:
            last = poll(enrollment, context)
            if last.get("status") != "pending":
                return last
        except EnrollError as exc:
            if exc.status and exc.status < 500:
                raise
        remaining = deadline - clock()
        if remaining <= 0:
            return last
        sleep(min(poll_interval_s, remaining))


# -- the agent's config ------------------------------------------------------------------


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _key(name: str) -> str:
    bare = name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    return name if bare else _toml_string(name)


def render_toml(data: Mapping[str, Any]) -> str:
    """TOML for ``data`` (scalars, lists, nested tables): what tomllib reads back as ``data``.
    Comments of the original file are not kept."""
    lines: list[str] = []
    _emit(data, (), lines)
    return "\n".join(lines).strip("\n") + "\n"


def _emit(data: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    if path:
        lines += ["", "[" + ".".join(_key(p) for p in path) + "]"]
    lines += [f"{_key(k)} = {_toml_value(v)}" for k, v in data.items()
              if not isinstance(v, Mapping)]
    for k, v in data.items():
        if isinstance(v, Mapping):
            _emit(v, (*path, k), lines)


def apply_credentials(config_path: Path, state_dir: Path, mqtt: Mapping[str, Any],
                      validate: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """Write the broker password (0600) and CA into ``state_dir`` and point the config's
    ``[mqtt]`` at them; ``validate(data)`` (raising) checks the new config before it replaces
    the old one. Returns the new ``[mqtt]`` table."""
    try:
        data = tomllib.loads(config_path.read_text("utf-8"))
        username, password = str(mqtt["username"]), str(mqtt["password"])
        host, port = str(mqtt["host"]), int(mqtt["port"])
        prefix, tls = str(mqtt["topic_prefix"]), bool(mqtt.get("tls"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EnrollError(f"cannot read {config_path}: {exc}", bad_input=True) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise EnrollError(f"the gateway's credentials lack {exc}") from None
    section = dict(data.get("mqtt") or {})
    section.pop("password", None)
    password_file = state_dir / "mqtt.password"
    section.update(host=host, port=port, topic_prefix=prefix, username=username,
                   password_file=str(password_file))
    ca_file = state_dir / "broker-ca.pem"
    if tls:
        if mqtt.get("ca_pem"):
            section["tls_ca_file"] = str(ca_file)
        elif "tls_ca_file" not in section:
            raise EnrollError("the broker uses TLS but the gateway sent no CA certificate; "
                              "set [mqtt] tls_ca_file and run enroll again", bad_input=True)
    else:
        section.pop("tls_ca_file", None)
    data["mqtt"] = section
    validate(data)
    _write_file(password_file, password + "\n", 0o600)
    if tls and mqtt.get("ca_pem"):
        _write_file(ca_file, str(mqtt["ca_pem"]), 0o644)
    mode = config_path.stat().st_mode & 0o777
    _write_file(config_path, render_toml(data), mode)
    return section


def enroll(config_path: Path, state_dir: Path, device: str, public_key: bytes,
           kind: str | None, gateway: str | None, token: str | None,
           install: Mapping[str, str], wait_s: float, poll_interval_s: float,
           validate: Callable[[dict[str, Any]], object],
           echo: Callable[[str], None] = print,
           gateway_ca: Path | None = None) -> dict[str, Any]:
    """The whole ``senken edge enroll``; the final status answer (``status`` is
    ``approved`` once the config is updated, else ``pending``). ``gateway_ca``: the CA to
    trust for an https gateway instead of the system's. Raises EnrollError."""
    try:
        context = ssl.create_default_context(cafile=str(gateway_ca)) if gateway_ca else None
    except (OSError, ssl.SSLError) as exc:
        raise EnrollError(f"--gateway-ca {gateway_ca}: {exc}", bad_input=True) from None
    state_path = state_dir / STATE_FILE
    enrollment = Enrollment.load(state_path)
    if enrollment is not None and enrollment.device != device:
        raise EnrollError(f"{state_path} is an enrollment of {enrollment.device}, not "
                          f"{device}; delete it to enroll this device", bad_input=True)
    if enrollment is None:
        if not token or not gateway:
            raise EnrollError("--token and --gateway are needed (no enrollment is under way)",
                              bad_input=True)
        if not kind:
            raise EnrollError("the sensor kind is unknown: pass --kind or set [serial] kind "
                              "in the config", bad_input=True)
        gateway = gateway.rstrip("/")
        enrollment = submit(gateway, token, {"device": device, "public_key": public_key.hex(),
                                             "kind": kind, **install}, context)
        enrollment.save(state_path)
        echo(f"enrollment {enrollment.enrollment_id} sent to {gateway} "
             f"(project {enrollment.project}); the token is used up")
    else:
        echo(f"resuming enrollment {enrollment.enrollment_id} at {enrollment.gateway}")
    echo(f"public key {public_key.hex()}: the owner approves it by its first 16 digits, "
         f"{public_key.hex()[:16]}")
    answer = wait_for_decision(enrollment, wait_s, poll_interval_s, context=context)
    status = answer.get("status")
    if status == "approved":
        mqtt = answer.get("mqtt")
        if not isinstance(mqtt, Mapping):
            raise EnrollError("the gateway approved the enrollment but sent no credentials")
        section = apply_credentials(config_path, state_dir, mqtt, validate)
        state_path.unlink(missing_ok=True)
        echo(f"approved: broker user {section['username']} at {section['host']}:"
             f"{section['port']}{' (TLS)' if 'tls_ca_file' in section else ''}; "
             f"{config_path} updated")
        return answer
    if status in ("rejected", "revoked"):
        state_path.unlink(missing_ok=True)
        raise EnrollError(f"the project owner {status} this enrollment; ask them for a new "
                          "token")
    if status != "pending":
        raise EnrollError(f"the gateway answered with status {status!r}")
    return answer
