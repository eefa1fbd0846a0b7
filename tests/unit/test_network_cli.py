"""``senken network init | add-project | show``: files the services accept, clear refusals."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from senken.network_cli import network_group, render_toml, safe_threshold, tolerated_faults
from senken_core.anomaly import DEFAULT_MODEL_PATH
from senken_core.keys import DeviceKey
from senken_core.network import load_network_config

ADDRS = [f"0x{i:040x}" for i in range(1, 8)]


def net(*args: str) -> Result:
    result = CliRunner().invoke(network_group, list(args))
    assert "Traceback" not in result.output
    return result


def init(out: Path, n: int = 4, *extra: str) -> Result:
    args = ["init", str(out)]
    for a in ADDRS[:n]:
        args += ["--validator", a]
    return net(*args, *extra)


def test_init_writes_a_file_the_services_load(tmp_path: Path) -> None:
    out = tmp_path / "network.toml"
    mixed = "0x" + "Ab" * 20
    result = net("init", str(out), "--validator", ADDRS[0], "--validator", mixed,
                 "--validator", ADDRS[2], "--validator", ADDRS[3], "--threshold", "3",
                 "--chain-id", "5", "--credit-contract", "0x" + "5f" * 20,
                 "--topic-prefix", "net-a/v1")
    assert result.exit_code == 0, result.output
    assert "threshold 3 (tolerates 1 faulty)" in result.output
    cfg = load_network_config(out)
    assert cfg.validators == (ADDRS[0], "0x" + "ab" * 20, ADDRS[2], ADDRS[3])  # lower case
    assert (cfg.threshold, cfg.chain_id, cfg.topic_prefix) == (3, 5, "net-a/v1")
    assert cfg.credit_contract == "0x" + "5f" * 20
    assert cfg.projects == ()
    assert cfg.validator_set().threshold == 3


def test_init_can_set_the_activation_delay_for_every_node(tmp_path: Path) -> None:
    out = tmp_path / "network.toml"
    assert init(out).exit_code == 0
    assert load_network_config(out).activation_delay_s is None
    assert "not set here" in net("show", str(out)).output
    assert init(out, 4, "--activation-delay-s", "900", "--force").exit_code == 0
    assert load_network_config(out).activation_delay_s == 900
    assert "from 900 s after their block" in net("show", str(out)).output
    assert net("add-project", str(out), "--id", "farm-2", "--owner-key", "ab" * 32,
               "--grid-ef", "700").exit_code == 0
    assert load_network_config(out).activation_delay_s == 900  # kept by add-project
    assert init(out, 4, "--activation-delay-s", "-1", "--force").exit_code == 2


def test_init_defaults_to_the_safe_threshold(tmp_path: Path) -> None:
    for n, k in ((1, 1), (3, 3), (4, 3), (7, 5)):
        out = tmp_path / f"n{n}.toml"
        assert init(out, n).exit_code == 0
        assert load_network_config(out).threshold == k == safe_threshold(n)


def test_init_refuses_an_unsafe_threshold_unless_allowed(tmp_path: Path) -> None:
    out = tmp_path / "network.toml"
    result = init(out, 4, "--threshold", "2")
    assert result.exit_code == 2
    assert "threshold 2 of 4 is unsafe" in result.output and "--allow-unsafe-threshold" in \
        result.output
    assert not out.exists()
    result = init(out, 4, "--threshold", "2", "--allow-unsafe-threshold")
    assert result.exit_code == 0, result.output
    assert "warning: threshold 2 of 4 is below the safe 3" in result.output
    assert load_network_config(out).threshold == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--validator", "0x12"], "is not an address"),
    (["--validator", ADDRS[0], "--validator", ADDRS[0].upper().replace("0X", "0x")],
     "listed twice"),
    (["--validator", ADDRS[0], "--threshold", "2"], "above the 1 validators"),
    (["--validator", ADDRS[0], "--threshold", "0"], "--threshold"),
    (["--validator", ADDRS[0], "--credit-contract", "0xzz"], "is not an address"),
    ([], "Missing option '--validator'"),
])
def test_init_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = net("init", str(tmp_path / "n.toml"), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "n.toml").exists()


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "network.toml"
    assert init(out, 1).exit_code == 0
    assert init(out, 4).exit_code == 2
    assert len(load_network_config(out).validators) == 1
    assert init(out, 4, "--force").exit_code == 0
    assert len(load_network_config(out).validators) == 4


def test_add_project_by_public_key_and_by_key_file(tmp_path: Path) -> None:
    out = tmp_path / "network.toml"
    assert init(out, 4).exit_code == 0
    owner = DeviceKey.generate()
    result = net("add-project", str(out), "--id", "pv-plant-7", "--owner-key",
                 owner.public_key.hex().upper(), "--grid-ef", "700", "--model-sha256",
                 "ab" * 32, "--window-seconds", "60")
    assert result.exit_code == 0, result.output
    key_file = tmp_path / "owner.key"
    other = DeviceKey.generate()
    other.save(key_file)
    pub_file = tmp_path / "owner.pub"
    pub_file.write_text(owner.public_key.hex() + "\n")
    assert net("add-project", str(out), "--id", "farm-2", "--owner-key", str(key_file),
               "--grid-ef", "0").exit_code == 0
    assert net("add-project", str(out), "--id", "farm-3", "--owner-key", str(pub_file),
               "--grid-ef", "10").exit_code == 0
    cfg = load_network_config(out)
    assert [p.id for p in cfg.projects] == ["pv-plant-7", "farm-2", "farm-3"]
    first, second, third = cfg.projects
    assert first.owner_public_key == owner.public_key and first.window_seconds == 60
    assert (first.grid_ef_g_per_kwh, first.model_sha256) == (700, "ab" * 32)
    assert second.owner_public_key == other.public_key
    assert second.model_sha256 == hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).hexdigest()
    assert third.owner_public_key == owner.public_key
    assert cfg.validators == tuple(ADDRS[:4])  # the rest of the file is kept
    show = net("show", str(out))
    assert show.exit_code == 0 and "threshold:     3 of 4" in show.output
    assert "project:       farm-2" in show.output


@pytest.mark.parametrize(("args", "message"), [
    (["--id", "Bad_Id", "--owner-key", "00" * 32, "--grid-ef", "1"], "projects[0].id"),
    (["--id", "p-1", "--owner-key", "00" * 31, "--grid-ef", "1"], "nor a file"),
    (["--id", "p-1", "--owner-key", "00" * 32, "--grid-ef", "-1"], "--grid-ef"),
    (["--id", "p-1", "--owner-key", "00" * 32, "--grid-ef", "1", "--model-sha256", "xy"],
     "64 hex digits"),
    (["--id", "p-1", "--owner-key", "00" * 32, "--grid-ef", "1", "--window-seconds", "0"],
     "--window-seconds"),
])
def test_add_project_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str,
                                           ) -> None:
    out = tmp_path / "network.toml"
    assert init(out, 1).exit_code == 0
    before = out.read_text()
    result = net("add-project", str(out), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert out.read_text() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_add_project_refuses_a_duplicate_a_missing_file_and_a_group_readable_key(
        tmp_path: Path) -> None:
    out = tmp_path / "network.toml"
    missing = net("add-project", str(out), "--id", "p-1", "--owner-key", "00" * 32,
                  "--grid-ef", "1")
    assert missing.exit_code == 2 and "senken network init" in missing.output
    assert init(out, 1).exit_code == 0
    args = ["add-project", str(out), "--id", "p-1", "--owner-key", "00" * 32, "--grid-ef", "1"]
    assert net(*args).exit_code == 0
    again = net(*args)
    assert again.exit_code == 2 and "already in" in again.output
    key_file = tmp_path / "owner.key"
    DeviceKey.generate().save(key_file)
    key_file.chmod(0o644)
    loose = net("add-project", str(out), "--id", "p-2", "--owner-key", str(key_file),
                "--grid-ef", "1")
    assert loose.exit_code == 2 and "owner.key" in loose.output


def test_show_refuses_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('validators = ["0x1"]\nthreshold = 1\n')
    result = net("show", str(bad))
    assert result.exit_code == 2 and "validators" in result.output


def test_tolerated_faults() -> None:
    assert [tolerated_faults(n, safe_threshold(n)) for n in (1, 3, 4, 7, 10)] == [0, 0, 1, 2, 3]
    assert tolerated_faults(4, 2) == 0 and tolerated_faults(4, 4) == 0


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    st.one_of(st.text(max_size=20), st.integers(-2**63, 2**63 - 1), st.booleans(),
              st.lists(st.text(max_size=8), max_size=3)),
    max_size=6))
def test_render_toml_round_trips(data: dict[str, object]) -> None:
    assert tomllib.loads(render_toml(data)) == data
