"""``senken network ...``: write and check the network file every validator and the ledger load.

The file (:mod:`senken_core.network`) holds the validator set, the threshold ``k``, the EIP-712
domain (chain id, credit contract) and each project's terms. Every command here writes the
file atomically and only after loading it back with ``load_network_config``, so what it leaves
is a file the services accept.

Threshold: with ``n = 3f + 1`` validators of which up to ``f`` may be faulty (Byzantine), a
certificate needs ``k = 2f + 1`` signatures, so that two certificates for one window always
share an honest signer. In general the smallest safe ``k`` is ``floor(2n/3) + 1``; a lower
one is refused unless ``--allow-unsafe-threshold`` is given (a test network, say).
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, NoReturn

import click

__all__ = ["network_group", "render_toml", "safe_threshold", "tolerated_faults"]

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_TOP_ORDER = ("topic_prefix", "chain_id", "credit_contract", "threshold", "validators")


def safe_threshold(n: int) -> int:
    """The smallest k that tolerates floor((n - 1) / 3) Byzantine validators: floor(2n/3) + 1."""
    return (2 * n) // 3 + 1


def tolerated_faults(n: int, k: int) -> int:
    """Faulty validators a k-of-n set survives: two certificates share ``2k - n`` signers, one
    of them honest (safety: ``f <= 2k - n - 1``), and the honest alone reach k (liveness:
    ``f <= n - k``)."""
    return max(0, min(2 * k - n - 1, n - k))


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _string(v: str) -> str:
    """A TOML basic string: escapes for quote, backslash and control characters (DEL too),
    anything else literally (the file is UTF-8)."""
    return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or c == "\x7f"
                                            else c) for c in v) + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list) and all(not isinstance(x, dict) for x in v):
        if not v:
            return "[]"
        return "[\n" + "".join(f"    {_value(x)},\n" for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to the network file")


def render_toml(data: dict[str, Any]) -> str:
    """The network file's text: top-level keys (known ones first), then ``[[projects]]``.

    Handles what the network file holds: strings, numbers, booleans, lists of those, and
    arrays of flat tables.
    """
    keys = [k for k in _TOP_ORDER if k in data] + sorted(
        k for k in data if k not in _TOP_ORDER)
    lines = ["# The Senken network: validator set, threshold, EIP-712 domain, projects.",
             "# Written by `senken network`; every validator and the ledger load this file."]
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    for key in keys:
        value = data[key]
        if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_value(value)}")
    for key, rows in tables:
        for row in rows:
            lines += ["", f"[[{key}]]"]
            lines += [f"{k} = {_value(v)}" for k, v in row.items()]
    return "\n".join(lines) + "\n"


def _write_checked(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically, after loading it back as the services do."""
    from senken_core.errors import ConfigError
    from senken_core.network import load_network_config

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_toml(data), "utf-8")
    try:
        load_network_config(tmp)
    except ConfigError as exc:
        tmp.unlink(missing_ok=True)
        _fail("the network file would be invalid: " + "; ".join(exc.problems))
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        _fail(f"{path} not found; create it with senken network init")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        _fail(f"{path} cannot be read as TOML: {exc}")


def _address(text: str) -> str:
    from senken_core.network import parse_address

    try:
        return "0x" + parse_address(text.strip()).hex()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(name="network", help="The network file: validator set, threshold, projects.")
def network_group() -> None:
    pass


@network_group.command("init")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--validator", "validators", multiple=True, required=True,
              help="a validator's 0x address (senken validator init prints it); repeat")
@click.option("--threshold", type=click.IntRange(min=1), default=None,
              help="k, the signatures a certificate needs [default: floor(2n/3) + 1]")
@click.option("--chain-id", type=click.IntRange(min=1), default=31337, show_default=True)
@click.option("--credit-contract", default="0x" + "00" * 20, show_default=True,
              help="the credit contract's 0x address (the EIP-712 verifying contract)")
@click.option("--topic-prefix", default="senken/v1", show_default=True)
@click.option("--allow-unsafe-threshold", is_flag=True,
              help="accept k below floor(2n/3) + 1 (a test network)")
@click.option("--activation-delay-s", type=click.IntRange(0, 30 * 86400), default=None,
              help="a validator-set change applies to windows starting this long after its "
                   "block: one value for every validator and the ledger [default: not in the "
                   "file; each node's [chain] value, 600 unless set]")
@click.option("--force", is_flag=True, help="overwrite OUT if it exists")
def init_cmd(out: Path, validators: tuple[str, ...], threshold: int | None, chain_id: int,
             credit_contract: str, topic_prefix: str, allow_unsafe_threshold: bool,
             activation_delay_s: int | None, force: bool) -> None:
    """Write the network file OUT with its validator set and threshold (no projects yet)."""
    members = [_address(v) for v in validators]
    if len(set(members)) != len(members):
        raise click.BadParameter("a validator is listed twice", param_hint="--validator")
    n = len(members)
    safe = safe_threshold(n)
    k = safe if threshold is None else threshold
    if k > n:
        raise click.BadParameter(f"{k} is above the {n} validators", param_hint="--threshold")
    if k < safe:
        if not allow_unsafe_threshold:
            _fail(f"threshold {k} of {n} is unsafe: with up to {(n - 1) // 3} faulty "
                  f"validators it needs at least {safe} (k = 2f + 1 of n = 3f + 1); pass "
                  "--allow-unsafe-threshold to accept it anyway")
        click.echo(f"warning: threshold {k} of {n} is below the safe {safe}: two conflicting "
                   "certificates for one window are possible", err=True)
    if out.exists() and not force:
        _fail(f"{out} already exists; pass --force to overwrite it")
    data: dict[str, Any] = {"topic_prefix": topic_prefix, "chain_id": chain_id,
                            "credit_contract": _address(credit_contract), "threshold": k,
                            "validators": members}
    if activation_delay_s is not None:
        data["activation_delay_s"] = activation_delay_s
    _write_checked(out, data)
    click.echo(f"network file:  {out}")
    click.echo(f"validators:    {n}, threshold {k} (tolerates {tolerated_faults(n, k)} "
               "faulty)")
    click.echo(f"domain:        chain {chain_id}, contract {data['credit_contract']}")
    click.echo(f"next:          senken network add-project {out} --id ... --owner-key ...")


def _owner_key(value: str) -> str:
    """An Ed25519 public key as 64 hex digits: given as such, or read from a key file (a
    Senken seed file, whose public key is taken, or a file holding the 64 hex digits)."""
    text = value.strip().lower()
    if _HEX64.match(text):
        return text
    path = Path(value).expanduser()
    if not path.is_file():
        raise click.BadParameter("neither 64 hex digits (an Ed25519 public key) nor a file",
                                 param_hint="--owner-key")
    try:
        content = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--owner-key") from None
    if _HEX64.match(content.lower()):
        return content.lower()
    from senken_core.errors import KeyFileError
    from senken_core.keys import DeviceKey

    try:
        return DeviceKey.load(path).public_key.hex()
    except KeyFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--owner-key") from None


def _packaged_model_sha256() -> str:
    from senken_core.anomaly import DEFAULT_MODEL_PATH

    return hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).hexdigest()


@network_group.command("add-project")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--id", "project_id", required=True, help="project id: a-z, 0-9, '-'")
@click.option("--owner-key", required=True,
              help="the owner's Ed25519 public key (64 hex) or a key file holding it")
@click.option("--grid-ef", "grid_ef", type=click.IntRange(0, 10_000), required=True,
              help="combined-margin grid emission factor, g CO2/kWh")
@click.option("--model-sha256", default=None,
              help="sha256 of the anomaly model the project requires [default: the "
                   "packaged model's]")
@click.option("--window-seconds", type=click.IntRange(1, 31 * 86400), default=900,
              show_default=True)
@click.option("--methodology-version", type=click.IntRange(1, 2**32 - 1), default=1,
              show_default=True)
@click.option("--anomaly-threshold-ppm", type=click.IntRange(1, 1_000_000), default=None,
              help="readings scoring this or more are excluded [default: 500000]")
def add_project_cmd(out: Path, project_id: str, owner_key: str, grid_ef: int,
                    model_sha256: str | None, window_seconds: int, methodology_version: int,
                    anomaly_threshold_ppm: int | None) -> None:
    """Add a project and its terms to the network file OUT."""
    data = _read(out)
    projects = data.get("projects", [])
    if not isinstance(projects, list):
        _fail(f"{out}: projects is not an array of tables")
    if any(isinstance(p, dict) and p.get("id") == project_id for p in projects):
        _fail(f"project {project_id} is already in {out}")
    model = (model_sha256 or _packaged_model_sha256()).strip().lower()
    if not _HEX64.match(model):
        raise click.BadParameter("must be 64 hex digits", param_hint="--model-sha256")
    project: dict[str, Any] = {"id": project_id, "owner_key": _owner_key(owner_key),
                               "window_seconds": window_seconds,
                               "methodology": "CDM AMS-I.D",
                               "methodology_version": methodology_version,
                               "grid_ef_g_per_kwh": grid_ef, "model_sha256": model}
    if anomaly_threshold_ppm is not None:
        project["anomaly_threshold_ppm"] = anomaly_threshold_ppm
    data["projects"] = [*projects, project]
    _write_checked(out, data)
    click.echo(f"project {project_id} added to {out} ({len(data['projects'])} in all)")
    click.echo(f"owner key:     {project['owner_key']}")
    click.echo(f"model sha256:  {model}")
    click.echo(f"windows:       {window_seconds} s; grid factor {grid_ef} g CO2/kWh")


@network_group.command("show")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def show_cmd(path: Path) -> None:
    """Load the network file as the services do and summarise it (exit 2 if invalid)."""
    from senken_core.errors import ConfigError
    from senken_core.network import load_network_config

    try:
        net = load_network_config(path)
    except ConfigError as exc:
        _fail(f"invalid network file {exc.source}: " + "; ".join(exc.problems))
    n = len(net.validators)
    safe = safe_threshold(n)
    click.echo(f"topic prefix:  {net.topic_prefix}")
    click.echo(f"domain:        chain {net.chain_id}, contract {net.credit_contract}")
    click.echo(f"threshold:     {net.threshold} of {n}"
               + ("" if net.threshold >= safe else f" (UNSAFE: below {safe})"))
    for address in net.validators:
        click.echo(f"validator:     {address}")
    click.echo("activation:    " + (
        f"set changes apply to windows from {net.activation_delay_s} s after their block"
        if net.activation_delay_s is not None else
        "not set here: each node's [chain] activation_delay_s (600 unless set)"))
    for p in net.projects:
        click.echo(f"project:       {p.id}: {p.methodology} v{p.methodology_version}, "
                   f"{p.window_seconds} s windows, {p.grid_ef_g_per_kwh} g/kWh, "
                   f"model {p.model_sha256[:12]}...")
