"""Config files (TOML) overlaid with environment variables, validated with clear errors.

``load_config(Schema, path, env_prefix)`` reads the TOML file, then applies every environment
variable ``{env_prefix}{SECTION}__{FIELD}`` (e.g. ``SENKEN_EDGE_MQTT__HOST``), then builds the
schema, a frozen dataclass whose fields are declared with :func:`setting`. Any problem becomes
one :class:`ConfigError` listing each bad field (dotted, e.g. ``mqtt.port``) and where the
values came from.

Why not pydantic: the edge agent runs in a 40 MB memory budget, and pydantic with the agent's
models costs about 10 MB of it. This is the small part of it the configs need: str, int, float,
bool, Path, ``Literal[...]``, ``X | None`` and nested schemas; numeric bounds; unknown keys
refused; environment strings converted like the TOML values they stand for. A schema checks
its cross-field rules in ``__post_init__`` by raising ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from senken_core.errors import ConfigError

__all__ = ["build", "load_config", "setting"]

T = TypeVar("T")
_MISSING = dataclasses.MISSING
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def setting(
    default: Any = _MISSING,
    *,
    default_factory: Callable[[], Any] | Any = _MISSING,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    check: Callable[[Any], None] | None = None,
    doc: str = "",
) -> Any:
    """A schema field: its default, numeric bounds, and ``check(value)`` raising ValueError."""
    meta = {"gt": gt, "ge": ge, "lt": lt, "le": le, "check": check, "doc": doc}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class _Invalid(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.problems = problems


def _where(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint``; raises _Invalid with one problem per bad (nested) field."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:  # only a default can be None: TOML has no null
            return None
        return _convert(value, options[0], where)
    if origin is Literal:
        allowed = typing.get_args(hint)
        text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
        if text not in allowed:
            raise _Invalid([f"{where}: must be one of {', '.join(map(repr, allowed))}"])
        return text
    if origin is tuple:  # tuple[X, ...]: a TOML array (of tables, for a dataclass X)
        (item, *_rest) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise _Invalid([f"{where}: must be a list"])
        items, problems = [], []
        for i, element in enumerate(value):
            try:
                items.append(_convert(element, item, f"{where}[{i}]"))
            except _Invalid as exc:
                problems += exc.problems
        if problems:
            raise _Invalid(problems)
        return tuple(items)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise _Invalid([f"{where}: must be a table ([{where}])"])
        return _build(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise _Invalid([f"{where}: must be true or false"])
    if hint is int:
        if isinstance(value, str):
            try:
                value = int(value.strip().replace("_", ""), 10)
            except ValueError:
                raise _Invalid([f"{where}: must be a whole number"]) from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid([f"{where}: must be a whole number"])
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise _Invalid([f"{where}: must be a number"]) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid([f"{where}: must be a number"])
        if not math.isfinite(value):
            raise _Invalid([f"{where}: must be a finite number"])
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _Invalid([f"{where}: must be a string (in quotes)"])
        return value
    if hint is Path:
        if not isinstance(value, str) or not value or "\x00" in value:
            raise _Invalid([f"{where}: must be a file path (a non-empty string)"])
        return Path(value)
    raise TypeError(f"unsupported config type {hint!r} at {where}")  # a schema bug, not input


def _bounds(value: Any, meta: Mapping[str, Any], where: str) -> list[str]:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return []
    for key, ok, words in (("gt", operator.gt, "greater than"), ("ge", operator.ge, "at least"),
                           ("lt", operator.lt, "less than"), ("le", operator.le, "at most")):
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            return [f"{where}: must be {words} {bound}"]
    return []


def _build(schema: type[T], data: Mapping[str, Any], path: str) -> T:
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    problems = [f"{_where(path, str(k))}: unknown setting (check its spelling and section)"
                for k in data if k not in fields]
    values: dict[str, Any] = {}
    for name, f in fields.items():
        where = _where(path, name)
        if name not in data:
            if f.default is _MISSING and f.default_factory is _MISSING:
                problems.append(f"{where}: required" + (f" ({f.metadata['doc']})"
                                                        if f.metadata.get("doc") else ""))
            continue
        try:
            value = _convert(data[name], hints[name], where)
        except _Invalid as exc:
            problems += exc.problems
            continue
        found = _bounds(value, f.metadata, where)
        check = f.metadata.get("check")
        if not found and check is not None and value is not None:
            try:
                check(value)
            except ValueError as exc:
                found = [f"{where}: {exc}"]
        problems += found
        values[name] = value
    if problems:
        raise _Invalid(problems)
    try:
        return schema(**values)
    except ValueError as exc:
        raise _Invalid([f"{path or '(top level)'}: {exc}"]) from None


def build(schema: type[T], data: Mapping[str, Any], source: str = "settings") -> T:
    """Build the dataclass ``schema`` from plain data; raises :class:`ConfigError` listing every
    bad field, with ``source`` saying where the data came from."""
    try:
        return _build(schema, data, "")
    except _Invalid as exc:
        raise ConfigError(source, exc.problems) from None


def _env_overlay(data: dict[str, Any], env_prefix: str, environ: Mapping[str, str]) -> list[str]:
    """Apply the environment to ``data``; an array (of tables) is indexed by number, as in
    ``SENKEN_NETWORK_PROJECTS__0__GRID_EF_G_PER_KWH``. Raises :class:`ConfigError` for an
    index the array does not have."""
    applied = []
    for name, value in environ.items():
        if not name.startswith(env_prefix) or name == env_prefix.rstrip("_") + "_CONFIG":
            continue
        path = name[len(env_prefix) :].lower().split("__")
        if not all(path):
            continue
        node: dict[str, Any] | list[Any] = data
        for depth, part in enumerate(path):
            if isinstance(node, list):
                index = int(part) if part.isdecimal() else -1
                if not 0 <= index < len(node):
                    raise ConfigError("environment", [
                        f"{name}: {'.'.join(path[:depth])} has {len(node)} entries; "
                        f"{part!r} is not an index of one (0 .. {len(node) - 1})"])
                key: Any = index
            else:
                key = part
            if depth == len(path) - 1:
                node[key] = value
                break
            child = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
            if not isinstance(child, dict | list):
                child = node[key] = {}
            node = child
        applied.append(name)
    return applied


def load_config(
    schema: type[T],
    path: Path | None,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build ``schema`` from the TOML file at ``path`` (if any) plus the environment.

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
    return build(schema, data, source)
