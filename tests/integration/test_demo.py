"""The one-command demo runs the whole system and shows readings arriving, on each broker it
may pick on a fresh machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", [None, "mosquitto", "amqtt"])
def test_demo_shows_verified_readings(tmp_path: Path, broker: str | None) -> None:
    args = [sys.executable, "-m", "senken", "demo", "--devices", "3", "--rate", "10",
            "--duration", "5", "--state-dir", str(tmp_path)]
    if broker:
        args += ["--broker", broker]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[4/4] subscriber" in out
    if broker == "amqtt":
        assert "amqtt broker in-process" in out
    done = re.search(r"done: (\d+) signed readings from 3 devices arrived and verified", out)
    assert done and int(done.group(1)) >= 30, out
    assert ", 0 rejected" in out
    for device in ("pv-meter-01", "flare-02", "soil-03"):
        assert device in out


def test_demo_shows_the_model_flag_the_injected_voltage_surge(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "senken", "demo", "--devices", "1", "--rate", "100",
         "--duration", "9", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    flagged = [line for line in result.stdout.splitlines() if "anomaly flagged" in line]
    # Normal line voltage is about 2300 dV; the injected surge is 1.5x that.
    assert any(re.search(r"voltage_dv=3\d{3};", line) for line in flagged), result.stdout


def test_demo_rejects_a_bad_broker_argument(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "senken", "demo", "--broker", "10.0.0.1:1",
                             "--state-dir", str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "use 127.0.0.1:PORT" in result.stderr
