"""The one-command demo runs the whole path, meters to ledger, and shows what a user cares
about: windows certified by the validators, the model's anomaly left out of the credit, the
log verified, a certificate checked offline as a buyer would, the totals; on each broker it may
pick on a fresh machine, and with a one-line error when a part does not start."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CERTIFIED = re.compile(r"^  certified  (\S+)\s+\S+ \+(\d+)s\s+(\d+) readings \((\d+) rejected\)"
                       r"\s+([\d.]+) kWh\s+([\d.]+) kg CO2e  signed by ((?:0x[0-9a-f]{4}(?:, )?)+)"
                       r"  log #(\d+)$", re.MULTILINE)
CREDITS = re.compile(r"credits\s+(\d+) windows minted on chain by the credit contract, which "
                     r"checked 3 validator signatures each: (\d+) units \(1 unit = 1 g CO2e; "
                     r"(\d+) g attested")
SUMMARY = re.compile(r"summary\s+(\d+) windows certified, (\d+) readings counted, ([\d.]+) kWh "
                     r"exported, ([\d.]+) kg CO2e avoided")


def demo(*args: str, timeout: float = 150, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "senken", "demo", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env})


def assert_whole_path(out: str, devices: list[str], windows_each: int) -> None:
    for step in ("[4/8] services", "[5/8] gateway", "[8/8] running"):
        assert step in out, out
    for device in devices:
        assert f"enroll     {device} sent its public key" in out
        assert f"approve    owner signed {device}'s registry record v1" in out
        assert f"account    {device} collected its broker account (user {device}," in out
    assert "held by the 4 validators and the ledger" in out
    certified = CERTIFIED.findall(out)
    for device in devices:
        mine = [c for c in certified if c[0] == device]
        assert len(mine) >= windows_each, out
    for _device, _seconds, accepted, rejected, _kwh, _kg, signers, _index in certified:
        assert int(rejected) == 0 and int(accepted) > 0
        assert len(signers.split(", ")) >= 3  # k = 3 of the 4 validators signed
    assert sorted(int(c[7]) for c in certified) == list(range(len(certified)))  # log order
    assert re.search(rf"log\s+verified: {len(certified)} entries, hash chain intact", out), out
    assert re.search(r"^    OK        attestation [0-9a-f]{64}$", out, re.MULTILINE), out
    assert "signers   3 of threshold 3: " in out
    summary = SUMMARY.search(out)
    assert summary, out
    windows, readings, kwh, kg = summary.groups()
    assert int(windows) == len(certified)
    assert int(readings) == sum(int(c[2]) for c in certified)
    assert float(kwh) > 0 and float(kg) > 0
    assert abs(float(kg) - float(kwh) * 0.7) < 0.01  # 700 g CO2 per kWh, the project's factor
    # every certified window minted on chain, exactly its grams, and half of them retired
    assert "contracts  credits 0x" in out and "signatures for chain " in out, out
    credits = CREDITS.search(out)
    assert credits, out
    minted, units, attested = map(int, credits.groups())
    assert minted == int(windows) and units == attested  # one batch: floor(sum mg / 1000)
    assert abs(units - round(float(kg) * 1000)) <= 1
    holds = re.search(r"owner (0x[0-9a-f]{40}) holds (\d+) of batch", out)
    assert holds and int(holds.group(2)) == units, out
    retired = re.search(r"retired\s+(\d+) units for Demo GmbH \(DE\): retirement #1, burned on "
                        r"chain, recorded by the ledger's mirror", out)
    assert retired and int(retired.group(1)) == units // 2, out


def test_demo_runs_the_whole_path_and_shows_the_anomaly_left_out(tmp_path: Path) -> None:
    # 30 frames/s: the first meter's voltage surge (frame 450) comes 15 s in
    result = demo("--devices", "2", "--duration", "25", "--window-seconds", "5", "--rate", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert_whole_path(out, ["pv-meter-01", "pv-meter-02"], windows_each=4)
    # the model flagged the surge (normal line voltage is about 2300 dV, the surge 1.5 times
    # that) and the energy paired with it was not credited
    surge = re.search(r"^    ! \d+ reading\(s\) scored anomalous by the device's model \(worst: "
                      r"seq \d+: [^;]*voltage_dv=3\d{3}; score [\d.]+%\): (\d+) Wh next to them "
                      r"not credited$", out, re.MULTILINE)
    assert surge and int(surge.group(1)) > 0, out
    assert "anomalies  " in out
    removed = re.search(r"state removed: (\S+)", out)
    assert removed and not Path(removed.group(1)).exists()


def test_demo_on_the_in_process_amqtt_broker(tmp_path: Path) -> None:
    """MQTT 3.1.1 only: the validators and the ledger speak 3.1.1 there."""
    state = tmp_path / "state"
    result = demo("--broker", "amqtt", "--devices", "1", "--duration", "10",
                  "--window-seconds", "3", "--state-dir", str(state))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "amqtt broker in-process" in out
    assert "relay" not in out  # the gateway publishes the registry over MQTT 3.1.1 itself
    assert_whole_path(out, ["pv-meter-01"], windows_each=2)
    assert f"state kept in {state}" in out  # a directory given is never removed
    assert (state / "ledger" / "ledger.db").exists()
    assert (state / "logs" / "validator-1.log").exists()


def test_a_part_that_does_not_start_stops_the_demo_with_one_line(tmp_path: Path) -> None:
    result = demo("--devices", "1", "--duration", "5", "--state-dir", str(tmp_path),
                  timeout=90, SENKEN_LEDGER_MQTT__PORT="not-a-port")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert "the ledger stopped" in lines[0] and "mqtt.port" in lines[0]
    assert f"(log: {tmp_path / 'logs' / 'ledger.log'})" in lines[0]
    assert "state kept in" in result.stdout


def test_demo_rejects_a_bad_broker_argument(tmp_path: Path) -> None:
    result = demo("--broker", "10.0.0.1:1", "--state-dir", str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert "use 127.0.0.1:PORT" in result.stderr
