"""The ``sim`` click group, driven with CliRunner."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from firmware_sim.cli import sim_group
from senken_core.frame import parse_frame, validate_frame
from senken_core.sensors import SENSOR_KINDS


def run(*args: str):
    return CliRunner().invoke(sim_group, list(args))


def test_kinds_lists_every_channel_with_unit():
    result = run("kinds")
    assert result.exit_code == 0, result.output
    for kind in SENSOR_KINDS.values():
        assert kind.name in result.output
        for channel in kind.channels:
            assert re.search(rf"{channel.name}\s+{re.escape(channel.unit)}", result.output)


@pytest.mark.parametrize("kind", sorted(SENSOR_KINDS))
def test_frame_prints_a_valid_frame(kind):
    result = run("frame", "--kind", kind, "--seed", "3")
    assert result.exit_code == 0, result.output
    frame = parse_frame(result.output.strip().encode())
    assert validate_frame(frame).name == kind and frame.counter == 0


def test_run_prints_devices_and_progress_and_cleans_up(tmp_path):
    links = tmp_path / "by-id"
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([{"at_frame": 1, "fault": "spike", "channel": "ch4_bp"}]))
    result = run(
        "run",
        "--devices",
        "3",
        "--rate",
        "50",
        "--kind",
        "biogas_flare",
        "--kind",
        "soil_co2",
        "--link-dir",
        str(links),
        "--faults",
        str(faults),
        "--replay",
        "nyc_taxi:soil_vwc_pm",
        "--duration",
        "0.3",
        "--progress",
        "0.1",
        "--seed",
        "5",
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert re.fullmatch(
        r"device 0 biogas_flare /dev/\S+ link .*usb-Senken_Sim_biogas_flare_0000\S*", lines[0]
    )
    assert lines[1].startswith("device 1 soil_co2 /dev/")
    assert lines[2].startswith("device 2 biogas_flare /dev/")
    assert any(line.startswith("t=") for line in lines)
    # nobody reads the ports here, so nothing is written, but frames are generated
    final = re.fullmatch(r"final frames written/generated 0:0/(\d+) 1:0/(\d+) 2:0/(\d+)", lines[-1])
    assert final and all(int(n) > 0 for n in final.groups())
    assert list(links.iterdir()) == []  # links removed on exit


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--kind", "toaster"], "'toaster' is not one of"),
        (["run", "--rate", "0"], "--rate"),
        (["run", "--rate", "-3"], "--rate"),
        (["run", "--rate", "fast"], "--rate"),
        (["run", "--devices", "0"], "--devices"),
        (["run", "--replay", "nochannel"], "CSV:CHANNEL"),
        (["run", "--replay", "missing.csv:power_w"], "not found"),
        (["run", "--kind", "soil_co2", "--replay", "nyc_taxi:power_w"], "no device has channel"),
        (["frame", "--kind", "toaster"], "'toaster' is not one of"),
        (["frame"], "Missing option '--kind'"),
    ],
)
def test_bad_arguments_are_click_errors(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_fault_files_name_what_is_wrong(tmp_path):
    missing = run("run", "--faults", str(tmp_path / "nope.toml"))
    assert missing.exit_code == 2 and "cannot read" in missing.output
    syntax = tmp_path / "syntax.toml"
    syntax.write_text('[[faults]]\nat_frame = 1\nfault = "spike\n')
    result = run("run", "--faults", str(syntax))
    assert result.exit_code == 2 and "line 3" in result.output
    field = tmp_path / "field.toml"
    field.write_text(
        '[[faults]]\nat_frame = 1\nfault = "spike"\n\n[[faults]]\nat_frame = "x"\n'
        'fault = "reboot"\n'
    )
    result = run("run", "--faults", str(field))
    assert result.exit_code == 2 and "faults[0].channel" in result.output
    wrong_kind = tmp_path / "kind.toml"
    wrong_kind.write_text(
        '[[faults]]\nat_frame = 1\nfault = "spike"\nchannel = "power_w"\nkind = "soil_co2"\n'
    )
    result = run("run", "--kind", "soil_co2", "--faults", str(wrong_kind))
    assert result.exit_code == 2 and "not a channel of soil_co2" in result.output
    nowhere = tmp_path / "nowhere.toml"
    nowhere.write_text('[[faults]]\nat_frame = 1\nfault = "spike"\nchannel = "power_w"\n')
    result = run("run", "--kind", "soil_co2", "--faults", str(nowhere))
    assert result.exit_code == 2 and "faults[0] (spike) applies to no device" in result.output
    device = tmp_path / "device.toml"
    device.write_text('[[faults]]\nat_frame = 1\nfault = "reboot"\ndevice = 4\n')
    result = run("run", "--devices", "2", "--faults", str(device))
    assert result.exit_code == 2 and "applies to no device" in result.output
    assert all("Traceback" not in r.output for r in (missing, result))
