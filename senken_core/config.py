"""Config files (TOML) overlaid with environment variables, validated with clear errors.

``load_config(Model, path, env_prefix)`` reads the TOML file, then applies every environment
variable ``{env_prefix}{SECTION}__{FIELD}`` (e.g. ``SENKEN_EDGE_MQTT__HOST``), then validates
with the pydantic model. Any problem becomes one :class:`ConfigError` listing each bad field
and where it came from.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from senken_core.errors import ConfigError

__all__ = ["load_config"]

M = TypeVar("M", bound=BaseModel)


def _env_overlay(data: dict[str, Any], env_prefix: str, environ: Mapping[str, str]) -> list[str]:
    applied = []
    for name, value in environ.items():
        if not name.startswith(env_prefix) or name == env_prefix.rstrip("_") + "_CONFIG":
            continue
        path = name[len(env_prefix) :].lower().split("__")
        if not all(path):
            continue
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
        applied.append(name)
    return applied


def load_config(
    model: type[M],
    path: Path | None,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
) -> M:
    """Build ``model`` from the TOML file at ``path`` (if any) plus the environment.

    Raises :class:`ConfigError` for a missing or unparsable file and for every invalid field.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = str(path) if path else "environment"
    if path is not None:
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(source, ["file not found"]) from None
        except PermissionError:
            raise ConfigError(source, ["permission denied reading the file"]) from None
        except UnicodeDecodeError:
            raise ConfigError(source, ["file is not UTF-8 text"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    applied = _env_overlay(data, env_prefix, environ)
    if applied:
        source += " + environment (" + ", ".join(sorted(applied)) + ")"
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError(source, problems) from None
