"""``senken ledger``: a buyer's offline check, verify, init and status."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from ledger.cli import ledger_group
from ledger.service import Ledger
from ledger.store import LedgerStore
from senken_core.keys import DeviceKey
from tests.unit.test_ledger_support import World


@pytest.fixture
def world() -> World:
    return World()


def test_check_evidence_accepts_good_evidence_and_refuses_tampered(world: World,
                                                                   tmp_path: Path) -> None:
    network = world.write_network(tmp_path / "network.toml")
    record = tmp_path / "record.cbor"
    record.write_bytes(world.record().to_wire())
    window = world.certify(0)
    good = tmp_path / "good.cbor"
    good.write_bytes(window.to_wire())
    runner = CliRunner()
    ok = runner.invoke(ledger_group, ["check-evidence", str(good), "--registry", str(record),
                                      "--network", str(network)])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output and "co2e      350000 mg" in ok.output
    for key in world.validators[:3]:
        assert "0x" + key.address.hex() in ok.output

    inflated = tmp_path / "inflated.cbor"  # an attestation changed after it was signed
    inflated.write_bytes(replace(window, certificate=replace(
        window.certificate, attestation=replace(window.attestation, co2e_mg=10**9))).to_wire())
    bad = runner.invoke(ledger_group, ["check-evidence", str(inflated), "--registry",
                                       str(record), "--network", str(network)])
    assert bad.exit_code == 1
    assert "REFUSED (certificate:unknown_signer)" in bad.output

    forged = tmp_path / "forged-record.cbor"  # a record not signed by the project's owner
    forged.write_bytes(world.record(owner=DeviceKey(b"\x06" * 32)).to_wire())
    bad = runner.invoke(ledger_group, ["check-evidence", str(good), "--registry", str(forged),
                                       "--network", str(network)])
    assert bad.exit_code == 1 and "registry:bad_signature" in bad.output

    garbage = tmp_path / "garbage.cbor"
    garbage.write_bytes(b"\xa0")
    bad = runner.invoke(ledger_group, ["check-evidence", str(garbage), "--registry",
                                       str(record), "--network", str(network)])
    assert bad.exit_code == 1 and "REFUSED (malformed)" in bad.output


def test_init_verify_and_status(world: World, tmp_path: Path) -> None:
    network = world.write_network(tmp_path / "network.toml")
    state = tmp_path / "state"
    runner = CliRunner()
    done = runner.invoke(ledger_group, ["init", "--network-file", str(network), "--state-dir",
                                        str(state), "--api-port", "1"])
    assert done.exit_code == 0, done.output
    config = state / "ledger.toml"
    again = runner.invoke(ledger_group, ["init", "--network-file", str(network),
                                         "--state-dir", str(state)])
    assert again.exit_code != 0 and "already exists" in again.output

    missing = runner.invoke(ledger_group, ["verify", "--config", str(config)])
    assert missing.exit_code == 1 and "no ledger database" in missing.output

    store = LedgerStore.open(f"sqlite:///{state / 'ledger.db'}")
    ledger = Ledger(world.network, store)
    ledger.on_registry(world.record().to_wire())
    for hour in range(2):
        ledger.on_certificate(world.certify(hour).to_wire())
    store.close()
    ok = runner.invoke(ledger_group, ["verify", "--config", str(config)])
    assert ok.exit_code == 0 and ok.output.startswith("ok: 2 entries, head ")

    status = runner.invoke(ledger_group, ["status", "--config", str(config)])
    assert status.exit_code == 0, status.output
    assert "2 entries" in status.output and "not running" in status.output

    with sqlite3.connect(state / "ledger.db") as db:
        db.execute("UPDATE ledger_log SET prev_hash = zeroblob(32) WHERE \"index\" = 1")
    bad = runner.invoke(ledger_group, ["verify", "--config", str(config)])
    assert bad.exit_code == 1
    assert bad.output.startswith("FAILED at entry 1: prev_hash")


def test_a_bad_config_says_what_is_wrong(tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text('database_url = "mysql://x"\n[mqtt]\nport = 0\n', "utf-8")
    result = CliRunner().invoke(ledger_group, ["verify", "--config", str(config)])
    assert result.exit_code != 0
    assert "database_url" in result.output and "mqtt.port" in result.output
