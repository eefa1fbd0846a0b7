"""SimulatedDevice on a real pty, read with pyserial as the edge agent reads /dev/ttyUSB0."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware_sim import Fault, ReplaySpec, SimulatedDevice
from senken_core.errors import FrameError
from senken_core.frame import Frame, parse_frame, validate_frame

NOON = 1_750_000_000 - 1_750_000_000 % 86_400 + 12 * 3600  # a UTC noon


class FakeClock:
    """Unix seconds that advance by ``step`` per call (the device reads it once per slot)."""

    def __init__(self, start: float = NOON, step: float = 1.0) -> None:
        self.start, self.step, self.calls = start, step, 0

    def __call__(self) -> float:
        t = self.start + self.calls * self.step
        self.calls += 1
        return t


def read_lines(ser: serial.Serial, n: int) -> list[bytes]:
    """Read ``n`` lines (each ending in LF) in chunks; fewer if the port stays silent 1 s."""
    lines: list[bytes] = []
    buf = b""
    while len(lines) < n:
        chunk = ser.read(max(1, ser.in_waiting))
        if not chunk:
            break
        buf += chunk
        *complete, buf = buf.split(b"\n")
        lines.extend(line + b"\n" for line in complete)
    return lines[:n]


def frames(lines: list[bytes]) -> list[Frame]:
    out = []
    for line in lines:
        frame = parse_frame(line)
        validate_frame(frame)
        out.append(frame)
    return out


@contextlib.contextmanager
def rig(
    kind: str = "elec_meter", **kwargs: object
) -> Iterator[tuple[SimulatedDevice, serial.Serial]]:
    """A device (not started) and a pyserial reader already open on its port."""
    kwargs.setdefault("clock", FakeClock())
    rate = kwargs.pop("rate_hz", 100.0)
    dev = SimulatedDevice(kind, rate, **kwargs)  # type: ignore[arg-type]
    ser = serial.Serial(dev.port_path, 115200, timeout=1)
    try:
        yield dev, ser
    finally:
        ser.close()
        dev.stop()


def values(frame: Frame) -> dict[str, int]:
    return dict(frame.values)


def burst_and_read(dev: SimulatedDevice, ser: serial.Serial, n: int, lines: int | None = None):
    """``dev.burst(n)`` while a thread reads ``lines`` (default ``n``) lines; returns them."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(read_lines(ser, lines or n)))
    reader.start()
    dev.burst(n)
    reader.join(timeout=10)
    return got


def baseline(kind: str, n: int, **kwargs: object) -> list[Frame]:
    """The frames an unfaulted device with the same seed and clock sends."""
    with rig(kind, **kwargs) as (dev, ser):
        burst_and_read(dev, ser, n)
    return list(dev.sent)


# -- the basics -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["elec_meter", "biogas_flare", "soil_co2"])
def test_reader_gets_valid_frames_with_consecutive_counters(kind, tmp_path):
    link = tmp_path / "serial" / "by-id" / f"usb-sim-{kind}"
    with rig(kind, rate_hz=200.0, link=link, max_frames=20) as (dev, ser):
        assert link.is_symlink() and os.readlink(link) == dev.path
        assert dev.port_path == str(link)
        dev.start()
        got = frames(read_lines(ser, 20))
        assert dev.wait_sent(20, timeout=5)
    assert [f.counter for f in got] == list(range(20))
    assert all(f.kind == kind for f in got)
    assert [f.device_ms for f in got] == [(NOON + i) * 1000 for i in range(20)]
    assert got == dev.sent
    assert dev.frames_written == 20
    assert not link.exists()  # stop() unplugs for good


def test_port_path_without_link_is_the_pty():
    dev = SimulatedDevice("soil_co2")
    try:
        assert dev.link is None and dev.port_path == dev.path and dev.path.startswith("/dev/")
    finally:
        dev.stop()


def test_device_clock_defaults_to_wall_clock():
    before = int(time.time() * 1000)
    with rig("soil_co2", clock=time.time) as (dev, ser):
        dev.burst(1)
        (frame,) = frames(read_lines(ser, 1))
    assert before <= frame.device_ms <= int(time.time() * 1000)


def test_energy_register_never_decreases_and_integrates_power():
    # from 06:00 UTC, 5-minute steps through the day and into the night
    clock = FakeClock(start=NOON - 6 * 3600, step=300.0)
    with rig("elec_meter", clock=clock) as (dev, ser):
        got = frames(burst_and_read(dev, ser, 160))
    energy = [values(f)["energy_export_wh"] for f in got]
    power = [values(f)["power_w"] for f in got]
    assert all(b >= a for a, b in itertools.pairwise(energy))
    assert energy[-1] > energy[0]
    assert max(power) > 500_000 and min(power) < 0  # midday peak and night-time draw
    expected = sum(max(p, 0) * 300 / 3600 for p in power[1:])
    assert abs((energy[-1] - energy[0]) - expected) <= 1 + expected * 1e-9
    assert all(2200 <= values(f)["voltage_dv"] <= 2400 for f in got)


def test_biogas_and_soil_values_stay_in_their_bands():
    flare = baseline("biogas_flare", 300, seed=3)
    assert all(5500 <= values(f)["ch4_bp"] <= 6500 for f in flare)
    assert all(8500 <= values(f)["flare_temp_dc"] <= 10_000 for f in flare)
    assert len({values(f)["flare_temp_dc"] for f in flare}) > 50  # noisy
    soil = baseline("soil_co2", 300, seed=3)
    assert all(0 < values(f)["co2_flux_nmol_m2_s"] < 20_000 for f in soil)
    assert all(0 <= values(f)["soil_vwc_pm"] <= 1000 for f in soil)


def test_deterministic_per_seed():
    a = baseline("biogas_flare", 30, seed=7)
    b = baseline("biogas_flare", 30, seed=7)
    c = baseline("biogas_flare", 30, seed=8)
    assert a == b
    assert [f.values for f in a] != [f.values for f in c]


def test_counter_wraps_at_2_to_the_32():
    with rig(counter_start=2**32 - 2) as (dev, ser):
        dev.burst(4)
        got = frames(read_lines(ser, 4))
    assert [f.counter for f in got] == [2**32 - 2, 2**32 - 1, 0, 1]


def test_pause_stops_frames_without_closing_and_resume_continues():
    with rig(rate_hz=200.0) as (dev, ser):
        dev.start()
        assert dev.wait_sent(5, timeout=5)
        dev.pause()
        n = len(dev.sent)
        assert not dev.wait_sent(n + 1, timeout=0.2)  # nothing while paused
        assert dev.plugged
        dev.resume()
        assert dev.wait_sent(n + 5, timeout=5)
        got = frames(read_lines(ser, n + 5))
    assert [f.counter for f in got] == list(range(n + 5))


def test_max_frames_then_silent():
    with rig(rate_hz=500.0, max_frames=7) as (dev, ser):
        dev.start()
        assert dev.wait_for(lambda: dev.finished, timeout=5)
        ser.timeout = 0.2
        assert len(read_lines(ser, 8)) == 7  # the 8th never comes
        assert dev.burst(3) == 0


def test_burst_at_full_speed_loses_nothing():
    n = 3000
    with rig(rate_hz=math.inf) as (dev, ser):
        started = time.monotonic()
        got = burst_and_read(dev, ser, n)
        elapsed = time.monotonic() - started
    assert len(dev.sent) == n and elapsed < 10
    assert [f.counter for f in frames(got)] == list(range(n))
    assert dev.frames_dropped == 0


def test_prepared_burst_sends_the_frames_burst_would_send():
    """prepare_burst + send_prepared write, byte for byte, what burst writes (faults included)."""
    faults = [Fault(fault="garbage", at_frame=3, length=40), Fault(fault="checksum", at_frame=5)]
    n = 2000
    with rig(rate_hz=math.inf, faults=faults) as (dev, ser):
        expected = burst_and_read(dev, ser, n, lines=n + 1)
    with rig(rate_hz=math.inf, faults=faults) as (dev, ser):
        assert dev.prepare_burst(n) == n
        assert dev.slots == n and dev.frames_written == 0 and dev.sent == []
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.extend(read_lines(ser, n + 1)))
        reader.start()
        assert dev.send_prepared(chunk_bytes=5000) == n - 1
        reader.join(timeout=10)
        assert dev.send_prepared() == 0  # consumed
    assert got == expected
    assert dev.frames_written == n + 1 and dev.frames_dropped == 0
    assert [f.counter for f in dev.sent] == [c for c in range(n) if c != 5]


def test_prepared_burst_without_a_reader_and_with_unplug_faults():
    dev = SimulatedDevice("elec_meter", math.inf, clock=FakeClock())
    try:
        assert dev.prepare_burst(5) == 5
        assert dev.send_prepared() == 0 and dev.frames_no_reader == 5
    finally:
        dev.stop()
    unplugging = SimulatedDevice("elec_meter", math.inf, faults=[Fault(fault="unplug", at_frame=2)])
    try:
        with pytest.raises(ValueError, match="unplug"):
            unplugging.prepare_burst(5)
    finally:
        unplugging.stop()


def test_high_rate_writer_thread():
    with rig(rate_hz=1000.0, max_frames=500) as (dev, ser):
        dev.start()
        got = frames(read_lines(ser, 500))
        assert dev.wait_for(lambda: dev.finished, timeout=5)
    assert [f.counter for f in got] == list(range(500))
    assert got == dev.sent


def test_without_a_reader_nothing_is_written_and_nothing_blocks():
    dev = SimulatedDevice("elec_meter", math.inf, clock=FakeClock())
    try:
        assert not dev.reader_attached
        dev.start()
        assert dev.wait_slots(500, timeout=10)
        assert dev.sent == [] and dev.frames_written == 0
        assert dev.frames_no_reader >= 500
        with serial.Serial(dev.port_path, 115200, timeout=1) as ser:
            assert dev.wait_reader(timeout=5) and dev.reader_attached
            got = frames(read_lines(ser, 3))
    finally:
        dev.stop()
    assert got == dev.sent[:3]  # the reader sees sent from its first frame on


def test_reader_not_reading_fills_the_buffer_without_blocking_the_writer():
    with rig(rate_hz=math.inf, write_timeout=0.005) as (dev, ser):
        dev.start()
        assert dev.wait_for(lambda: dev.frames_dropped >= 3, timeout=10)
        dev.pause()
        ser.timeout = 0.3
        data = b""
        while chunk := ser.read(65536):
            data += chunk
    complete = [line + b"\n" for line in data.split(b"\n")[:-1]]
    assert frames(complete) == dev.sent
    assert 10 < len(dev.sent) < dev.slots


# -- faults -----------------------------------------------------------------------------------


def faulted(kind: str, fault: Fault, n: int, lines: int | None = None, **kwargs: object):
    """Run ``n`` slots with ``fault``; returns (device, raw lines the reader saw)."""
    with rig(kind, faults=[fault], **kwargs) as (dev, ser):
        dev.burst(n)
        raw = read_lines(ser, lines if lines is not None else n)
    return dev, raw


def test_spike_changes_one_value_of_one_frame():
    base = baseline("elec_meter", 8)
    dev, raw = faulted(
        "elec_meter", Fault(fault="spike", at_frame=5, channel="power_w", factor=3), 8
    )
    got = frames(raw)
    assert got == dev.sent
    for i, (g, b) in enumerate(zip(got, base, strict=True)):
        if i == 5:
            assert values(g)["power_w"] == round(values(b)["power_w"] * 3)
            assert values(g)["voltage_dv"] == values(b)["voltage_dv"]
        else:
            assert g == b


def test_spike_is_clamped_into_range():
    _, raw = faulted(
        "biogas_flare", Fault(fault="spike", at_frame=1, channel="ch4_bp", offset=10**9), 3
    )
    assert values(frames(raw)[1])["ch4_bp"] == 10_000


def test_drift_grows_linearly_then_stays():
    base = baseline("elec_meter", 9)
    fault = Fault(fault="drift", at_frame=2, channel="voltage_dv", offset=100, frames=4)
    _, raw = faulted("elec_meter", fault, 9)
    diffs = [
        values(g)["voltage_dv"] - values(b)["voltage_dv"]
        for g, b in zip(frames(raw), base, strict=True)
    ]
    assert diffs == [0, 0, 25, 50, 75, 100, 100, 100, 100]


def test_stuck_channel_repeats_the_previous_value():
    base = baseline("biogas_flare", 10)
    fault = Fault(fault="stuck", at_frame=3, channel="flare_temp_dc", frames=4)
    _, raw = faulted("biogas_flare", fault, 10)
    got = frames(raw)
    temps = [values(f)["flare_temp_dc"] for f in got]
    frozen = values(base[2])["flare_temp_dc"]
    assert temps[3:7] == [frozen] * 4
    assert temps[7:] == [values(f)["flare_temp_dc"] for f in base[7:]]
    assert [values(f)["ch4_bp"] for f in got] == [values(f)["ch4_bp"] for f in base]
    assert [f.counter for f in got] == list(range(10))


def test_stuck_without_channel_freezes_every_channel():
    _, raw = faulted("soil_co2", Fault(fault="stuck", at_frame=2, frames=3), 6)
    got = frames(raw)
    assert got[2].values == got[3].values == got[4].values == got[1].values
    assert got[5].values != got[1].values


def test_dropout_lost_leaves_a_counter_gap():
    dev, raw = faulted("soil_co2", Fault(fault="dropout", at_frame=2, frames=3), 8, lines=5)
    got = frames(raw)
    assert [f.counter for f in got] == [0, 1, 5, 6, 7]
    assert got == dev.sent and dev.frames_lost == 3


def test_dropout_mute_keeps_counters_contiguous_but_time_jumps():
    fault = Fault(fault="dropout", at_frame=2, frames=3, lost=False)
    _, raw = faulted("soil_co2", fault, 8, lines=5)
    got = frames(raw)
    assert [f.counter for f in got] == [0, 1, 2, 3, 4]
    assert got[2].device_ms - got[1].device_ms == 4000


def test_garbage_is_not_a_frame_and_the_frame_still_follows():
    dev, raw = faulted("elec_meter", Fault(fault="garbage", at_frame=3, length=50), 6, lines=7)
    assert len(raw[3]) == 52 and b"$" not in raw[3]
    with pytest.raises(FrameError) as info:
        parse_frame(raw[3])
    assert info.value.reason == "syntax"
    good = frames(raw[:3] + raw[4:])
    assert [f.counter for f in good] == list(range(6)) and good == dev.sent
    assert dev.frames_written == 7


def test_broken_checksum():
    dev, raw = faulted("elec_meter", Fault(fault="checksum", at_frame=3), 6)
    with pytest.raises(FrameError) as info:
        parse_frame(raw[3])
    assert info.value.reason == "checksum"
    assert [f.counter for f in dev.sent] == [0, 1, 2, 4, 5]
    assert frames(raw[:3] + raw[4:]) == dev.sent


def test_truncated_frame_merges_into_the_next_line():
    dev, raw = faulted("elec_meter", Fault(fault="truncated", at_frame=3, keep=20), 6, lines=5)
    assert raw[3].startswith(b"$SK1,3,") and raw[3].count(b"$") == 2
    got = frames(raw)  # parse_frame resynchronises on the last '$'
    assert [f.counter for f in got] == [0, 1, 2, 4, 5] and got == dev.sent


def test_truncated_frame_with_line_end_is_a_syntax_error():
    fault = Fault(fault="truncated", at_frame=1, line_end=True)
    dev, raw = faulted("elec_meter", fault, 3)
    with pytest.raises(FrameError) as info:
        parse_frame(raw[1])
    assert info.value.reason == "syntax"
    assert [f.counter for f in dev.sent] == [0, 2]


def test_out_of_range_fails_validation():
    dev, raw = faulted(
        "soil_co2", Fault(fault="out_of_range", at_frame=1, channel="soil_temp_dc"), 3
    )
    frame = parse_frame(raw[1])
    with pytest.raises(FrameError) as info:
        validate_frame(frame)
    assert info.value.reason == "range" and values(frame)["soil_temp_dc"] == 801
    assert [f.counter for f in dev.sent] == [0, 2]


def test_clock_jump_shifts_device_ms_from_then_on():
    _, raw = faulted("soil_co2", Fault(fault="clock_jump", at_frame=2, ms=-60_000), 5)
    ms = [f.device_ms for f in frames(raw)]
    assert ms == [(NOON + i) * 1000 - (60_000 if i >= 2 else 0) for i in range(5)]


def test_reboot_restarts_the_counter():
    _, raw = faulted("soil_co2", Fault(fault="reboot", at_frame=3), 6)
    assert [f.counter for f in frames(raw)] == [0, 1, 2, 0, 1, 2]


def read_until_error(ser: serial.Serial) -> list[bytes]:
    """Read lines until the port reports the device is gone (or 50 lines)."""
    lines: list[bytes] = []
    with pytest.raises(serial.SerialException):
        for _ in range(50):
            line = ser.readline()
            if not line:
                raise serial.SerialException("EOF")
            lines.append(line)
    return lines


def test_unplug_fault_makes_the_port_disappear_and_come_back(tmp_path):
    link = tmp_path / "by-id" / "usb-sim"
    fault = Fault(fault="unplug", at_frame=5, frames=10)
    with rig("elec_meter", rate_hz=200.0, link=link, faults=[fault]) as (dev, ser):
        dev.start()
        before = frames(read_until_error(ser))
        # a hang-up discards what the reader had not read yet (as a real unplug does), so a
        # slow reader may see fewer than the 5 frames sent before the unplug
        assert [f.counter for f in before] == list(range(len(before)))
        assert len(before) <= 5 and [f.counter for f in dev.sent[:5]] == list(range(5))
        assert dev.wait_for(lambda: dev.replugs == 1, timeout=5)
        assert os.readlink(link) == dev.path
        with serial.Serial(dev.port_path, 115200, timeout=1) as again:
            after = frames(read_lines(again, 3))
    assert len(after) == 3 and after[0].counter >= 15  # the device kept counting while away
    assert [f.counter for f in after] == list(range(after[0].counter, after[0].counter + 3))
    assert dev.frames_lost == 10


def test_programmatic_unplug_and_replug_at_the_same_link(tmp_path):
    link = tmp_path / "ttySIM0"
    with rig("biogas_flare", rate_hz=200.0, link=link) as (dev, ser):
        dev.start()
        assert len(frames(read_lines(ser, 3))) == 3
        dev.unplug()
        assert not link.exists() and not dev.plugged
        read_until_error(ser)
        with pytest.raises(serial.SerialException):
            serial.Serial(str(link), 115200, timeout=1)
        dev.replug()
        assert os.readlink(link) == dev.path and Path(dev.path).exists()
        with serial.Serial(dev.port_path, 115200, timeout=1) as again:
            got = frames(read_lines(again, 3))
    assert len(got) == 3 and got[1].counter == got[0].counter + 1


# -- replay -----------------------------------------------------------------------------------


def test_replayed_channel_follows_the_csv(tmp_path):
    csv = tmp_path / "series.csv"
    csv.write_text("timestamp,value\n2024-01-01,10\n2024-01-02,20\n2024-01-03,15\n2024-01-04,30\n")
    spec = ReplaySpec(csv, "flow_nl_per_h", low=100_000, high=200_000)
    with rig("biogas_flare", replay=spec) as (dev, ser):
        dev.burst(10)
        got = frames(read_lines(ser, 10))
    flow = [values(f)["flow_nl_per_h"] for f in got]
    one_loop = [100_000, 150_000, 125_000, 200_000]
    assert flow == (one_loop * 3)[:10]


def test_replayed_power_is_what_the_energy_register_integrates():
    spec = ReplaySpec("nab/nyc_taxi.csv", "power_w", low=0, high=360_000)
    with rig("elec_meter", replay=spec) as (dev, ser):
        dev.burst(50)
        got = frames(read_lines(ser, 50))
    power = [values(f)["power_w"] for f in got]
    energy = [values(f)["energy_export_wh"] for f in got]
    assert len(set(power)) > 10
    assert abs((energy[-1] - energy[0]) - sum(p / 3600 for p in power[1:])) <= 1


def test_every_truncation_with_line_end_is_a_syntax_error():
    cuts = [Fault(fault="truncated", at_frame=i, keep=i + 1, line_end=True) for i in range(100)]
    with rig("elec_meter", faults=cuts) as (dev, ser):
        raw = burst_and_read(dev, ser, 100)
    assert len(raw) == 100 and dev.sent == []
    for line in raw:
        with pytest.raises(FrameError) as info:
            parse_frame(line)
        assert info.value.reason == "syntax"


def test_garbage_lines_never_parse():
    noise = [Fault(fault="garbage", at_frame=i, length=1 + i % 200) for i in range(60)]
    with rig("soil_co2", faults=noise, seed=11) as (dev, ser):
        raw = burst_and_read(dev, ser, 60, lines=120)
    garbage, good = raw[0::2], raw[1::2]
    for line in garbage:
        with pytest.raises(FrameError):
            parse_frame(line)
    assert frames(good) == dev.sent and len(dev.sent) == 60


def test_stuck_after_out_of_range_repeats_a_valid_value():
    faults = [
        Fault(fault="out_of_range", at_frame=2, channel="ch4_bp"),
        Fault(fault="stuck", at_frame=3, channel="ch4_bp", frames=2),
    ]
    with rig("biogas_flare", faults=faults) as (dev, ser):
        raw = burst_and_read(dev, ser, 6)
    with pytest.raises(FrameError, match="range"):
        validate_frame(parse_frame(raw[2]))
    later = frames(raw[3:])
    assert [f.counter for f in dev.sent] == [0, 1, 3, 4, 5]
    assert all(values(f)["ch4_bp"] <= 10_000 for f in later)
