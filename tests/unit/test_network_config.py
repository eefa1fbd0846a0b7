"""The network file: validator set, domain, projects; every bad value named; environment."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core.attestation import senken_domain
from senken_core.errors import ConfigError
from senken_core.methodology import GridExportAmsID
from senken_core.network import NetworkConfig, load_network_config, parse_address
from senken_core.secp256k1 import ValidatorKey
from senken_core.topics import DEFAULT_PREFIX

KEYS = [ValidatorKey(bytes([i + 1]) * 32) for i in range(4)]
ADDRESSES = ["0x" + k.address.hex() for k in KEYS]
OWNER = "ab" * 32
MODEL = "22" * 32
CONTRACT = "0x5fbdb2315678afecb367f032d93f642f64180aa3"

GOOD = f"""
topic_prefix = "senken/v1"
chain_id = 31337
credit_contract = "{CONTRACT}"
threshold = 3
validators = {ADDRESSES!r}

[[projects]]
id = "pv-plant-7"
owner_key = "{OWNER}"
window_seconds = 900
methodology = "CDM AMS-I.D"
methodology_version = 1
grid_ef_g_per_kwh = 700
model_sha256 = "{MODEL}"

[[projects]]
id = "wind-farm-2"
owner_key = "{"cd" * 32}"
grid_ef_g_per_kwh = 450
model_sha256 = "{MODEL}"
anomaly_threshold_ppm = 800000
""".replace("'", '"')
GOOD_DATA: dict[str, Any] = tomllib.loads(GOOD)


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        NetworkConfig.from_dict(data, "network.toml")
    return info.value.problems


def with_changes(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD_DATA)
    data.update(changes)
    return data


def with_project(index: int, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD_DATA)
    data["projects"][index].update(changes)
    return data


def test_a_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "network.toml"
    path.write_text(GOOD)
    cfg = load_network_config(path)
    assert cfg.threshold == 3 and cfg.validators == tuple(ADDRESSES)
    vset = cfg.validator_set()
    assert vset.members == frozenset(k.address for k in KEYS) and vset.threshold == 3
    assert cfg.domain() == senken_domain(31337, bytes.fromhex(CONTRACT[2:]))
    assert cfg.owners() == {"pv-plant-7": bytes.fromhex(OWNER),
                            "wind-farm-2": bytes.fromhex("cd" * 32)}
    pv = cfg.project("pv-plant-7")
    assert pv is not None and pv.window_seconds == 900
    assert pv.owner_public_key == bytes.fromhex(OWNER) and pv.model_hash == bytes.fromhex(MODEL)
    assert pv.methodology_terms() == GridExportAmsID(700, 1, 500_000)
    wind = cfg.project("wind-farm-2")
    assert wind is not None and wind.window_seconds == 900  # the default
    assert wind.methodology_terms() == GridExportAmsID(450, 1, 800_000)
    assert cfg.project("hydro-9") is None
    assert cfg == NetworkConfig.from_dict(GOOD_DATA)


def test_defaults() -> None:
    cfg = NetworkConfig.from_dict({"validators": ADDRESSES[:1], "threshold": 1})
    assert (cfg.chain_id, cfg.topic_prefix, cfg.projects) == (31337, DEFAULT_PREFIX, ())
    assert cfg.domain().verifying_contract == b"\x00" * 20
    assert cfg.owners() == {}


def test_the_activation_delay_is_optional_and_bounded() -> None:
    cfg = NetworkConfig.from_dict({"validators": ADDRESSES[:1], "threshold": 1})
    assert cfg.activation_delay_s is None and cfg.activation_delay(None, "x") == 600
    cfg = NetworkConfig.from_dict(with_changes(activation_delay_s=45))
    assert cfg.activation_delay(None, "x") == cfg.activation_delay(45, "x") == 45
    with pytest.raises(ValueError, match="30 in the node's config but 45 in the network file"):
        cfg.activation_delay(30, "the node's config")
    assert any("activation_delay_s" in p for p in problems_of(with_changes(activation_delay_s=-1)))


def test_checksummed_addresses_are_accepted() -> None:
    mixed = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    cfg = NetworkConfig.from_dict(with_changes(credit_contract=mixed))
    assert cfg.domain().verifying_contract == bytes.fromhex(CONTRACT[2:])
    assert parse_address(mixed) == parse_address(CONTRACT)


@pytest.mark.parametrize("text", [
    "", "0x", CONTRACT[2:], CONTRACT[:-2], CONTRACT + "00", "0X" + CONTRACT[2:],
    CONTRACT[:-2] + "zz", CONTRACT[:-2] + "  ", CONTRACT[:-2] + "\n\t", " " + CONTRACT[:-1],
    "0x" + "a " * 20,
])
def test_what_is_not_an_address(text: str) -> None:
    with pytest.raises(ValueError, match="not an address"):
        parse_address(text)


def test_every_bad_value_is_listed_by_its_dotted_name() -> None:
    data = with_changes(chain_id=0, credit_contract="0x1234", typo=1,
                        validators=[*ADDRESSES[:3], "0xnope"])
    data["projects"][0].update(owner_key="AB" * 32, grid_ef_g_per_kwh=10_001, colour="green")
    data["projects"][1].update(id="Wind Farm", model_sha256="22" * 31, window_seconds=0,
                               methodology="VM0042", anomaly_threshold_ppm=0)
    del data["projects"][1]["owner_key"]
    problems = "\n".join(problems_of(data))
    for expected in (
        "typo: unknown setting", "chain_id: must be at least 1", "credit_contract: '0x1234' is",
        "validators: '0xnope' is not an address",
        "projects[0].owner_key: must be 64 lower-case hex digits",
        "projects[0].grid_ef_g_per_kwh: must be at most 10000",
        "projects[0].colour: unknown setting",
        "projects[1].id: must be 3-63 characters",
        "projects[1].owner_key: required (the owner's Ed25519 public key, hex)",
        "projects[1].model_sha256: must be 64 lower-case hex digits",
        "projects[1].window_seconds: must be at least 1",
        "projects[1].methodology: must be one of 'CDM AMS-I.D'",
        "projects[1].anomaly_threshold_ppm: must be at least 1",
    ):
        assert expected in problems


def test_wrong_shapes_are_named() -> None:
    assert problems_of(with_changes(projects={"id": "pv-plant-7"})) == \
        ["projects: must be a list"]
    assert problems_of(with_changes(projects=["pv-plant-7"])) == \
        ["projects[0]: must be a table ([projects[0]])"]
    assert problems_of(with_changes(validators=ADDRESSES[0])) == ["validators: must be a list"]
    assert problems_of(with_changes(validators=[1, *ADDRESSES])) == \
        ["validators[0]: must be a string (in quotes)"]
    assert "validators: required (members' 0x addresses)" in problems_of({"threshold": 1})
    # an address padded to length with whitespace is not 19 bytes that crash validator_set()
    padded = ADDRESSES[0][:-2] + "  "
    assert problems_of(with_changes(validators=[*ADDRESSES[1:], padded])) == \
        [f"validators: {padded!r} is not an address (0x and 40 hex digits)"]
    assert problems_of(with_changes(credit_contract=CONTRACT[:-2] + "\n ")) == \
        [f"credit_contract: {CONTRACT[:-2] + chr(10) + ' '!r} is not an address "
         "(0x and 40 hex digits)"]


def test_duplicates_are_refused() -> None:
    twice = [*ADDRESSES, ADDRESSES[0].upper().replace("0X", "0x")]  # the same, other case
    assert problems_of(with_changes(validators=twice)) == \
        ["validators: a validator is listed twice"]
    data = with_project(1, id="pv-plant-7")
    assert problems_of(data) == ["(top level): a project is listed twice"]


def test_a_threshold_above_the_validators_is_refused() -> None:
    assert problems_of(with_changes(threshold=5)) == \
        ["(top level): threshold 5 is above the 4 validators"]
    assert problems_of(with_changes(threshold=0)) == ["threshold: must be at least 1"]
    assert problems_of(with_changes(validators=[])) == \
        ["(top level): threshold 3 is above the 0 validators"]
    assert NetworkConfig.from_dict(with_changes(threshold=4)).validator_set().threshold == 4


def test_the_environment_overrides_the_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "network.toml"
    path.write_text(GOOD)
    monkeypatch.setenv("SENKEN_NETWORK_THRESHOLD", "4")
    monkeypatch.setenv("SENKEN_NETWORK_CHAIN_ID", "8_453")
    monkeypatch.setenv("SENKEN_NETWORK_TOPIC_PREFIX", "staging/v1")
    monkeypatch.setenv("SENKEN_NETWORK_CREDIT_CONTRACT", "0x" + "11" * 20)
    monkeypatch.setenv("SENKEN_NETWORKING", "unrelated")
    cfg = load_network_config(path)
    assert (cfg.threshold, cfg.chain_id, cfg.topic_prefix) == (4, 8453, "staging/v1")
    assert cfg.domain() == senken_domain(8453, b"\x11" * 20)
    assert len(cfg.projects) == 2  # the file's projects are kept
    monkeypatch.setenv("SENKEN_NETWORK_THRESHOLD", "7")
    with pytest.raises(ConfigError) as info:
        load_network_config(path)
    assert info.value.problems == ["(top level): threshold 7 is above the 4 validators"]
    assert "SENKEN_NETWORK_THRESHOLD" in info.value.source


def test_the_environment_overrides_one_project_by_its_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "network.toml"
    path.write_text(GOOD)
    monkeypatch.setenv("SENKEN_NETWORK_PROJECTS__1__GRID_EF_G_PER_KWH", "460")
    monkeypatch.setenv("SENKEN_NETWORK_VALIDATORS__3", ADDRESSES[3].upper().replace("0X", "0x"))
    cfg = load_network_config(path)
    assert [p.grid_ef_g_per_kwh for p in cfg.projects] == [700, 460]  # the rest is the file's
    assert cfg.project("wind-farm-2").model_sha256 == MODEL  # type: ignore[union-attr]
    assert cfg.validator_set().members == frozenset(k.address for k in KEYS)
    monkeypatch.setenv("SENKEN_NETWORK_PROJECTS__1__WINDOW_SECONDS", "0")
    with pytest.raises(ConfigError) as info:
        load_network_config(path)
    assert info.value.problems == ["projects[1].window_seconds: must be at least 1"]
    monkeypatch.delenv("SENKEN_NETWORK_PROJECTS__1__WINDOW_SECONDS")
    for name in ("SENKEN_NETWORK_PROJECTS__2__ID", "SENKEN_NETWORK_PROJECTS__X__ID"):
        monkeypatch.setenv(name, "hydro-9")
        with pytest.raises(ConfigError, match=f"{name}: projects has 2 entries"):
            load_network_config(path)
        monkeypatch.delenv(name)


def test_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_network_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("threshold = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_network_config(bad)


plain = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
              st.sampled_from([*ADDRESSES, OWNER, "pv-plant-7"])),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10)
known_keys = st.sampled_from(sorted({*GOOD_DATA, *GOOD_DATA["projects"][0], "projects"}))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(known_keys, plain | st.lists(st.dictionaries(known_keys, plain,
                                                                     max_size=8), max_size=3),
                       max_size=8),
       st.booleans())
def test_any_data_builds_or_is_refused_with_a_config_error(data: dict[str, Any],
                                                           over_good: bool) -> None:
    if over_good:
        data = {**copy.deepcopy(GOOD_DATA), **data}
    try:
        cfg = NetworkConfig.from_dict(data)
    except ConfigError as exc:
        assert exc.problems
        return
    # whatever builds is usable: every address parses to 20 bytes
    cfg.validator_set()
    cfg.domain()
    cfg.owners()
    for p in cfg.projects:
        p.methodology_terms()
