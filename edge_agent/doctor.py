"""``senken edge doctor``: checks a device's setup, each check saying OK or what to do.

Checks: config, key file, serial port (presence, permissions, frames arriving and valid),
clock (sane, synchronised, agreeing with the device), broker (TCP, TLS, MQTT CONNACK with the
configured credentials), model (loads, hash, inference time), outbox (integrity, WAL, depth,
free disk). Each returns a :class:`Check`; nothing here raises for a failed check.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from edge_agent.config import EdgeConfig
from senken_core.errors import FrameError, KeyFileError, ModelError, SenkenError
from senken_core.frame import parse_frame, validate_frame
from senken_core.keys import NATIVE_BATCH_SIGNING, DeviceKey

__all__ = ["Check", "run_checks"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'}  {self.name:<8} {self.detail}"


def check_key(cfg: EdgeConfig) -> Check:
    try:
        key = DeviceKey.load(cfg.key_path)
    except KeyFileError as exc:
        return Check("key", False, str(exc))
    signing = ("batch signing native" if NATIVE_BATCH_SIGNING else
               "batch signing per call (the C extension was not built: install gcc and the "
               "Python headers, then reinstall the agent, for full speed)")
    return Check("key", True, f"{cfg.key_path} (mode 0600), public key "
                 f"{key.public_key.hex()}, {signing}")


def check_serial(cfg: EdgeConfig, listen_s: float) -> Check:
    import serial

    port = cfg.serial.port
    if not os.path.exists(port):
        return Check("serial", False, f"{port} does not exist: plug the sensor in and check "
                     "`ls -l /dev/serial/by-id/`, then set [serial] port")
    info = os.stat(port)
    if not stat.S_ISCHR(info.st_mode):
        return Check("serial", False, f"{port} is not a character device")
    if not os.access(port, os.R_OK | os.W_OK):
        return Check("serial", False, f"{port}: permission denied; add the user to the dialout "
                     "group (sudo usermod -aG dialout $USER) and log in again")
    holder = running_agent_pid(cfg)
    if holder is not None:
        # Listening now would steal frames from the running agent: report what it sees.
        from edge_agent.stats import read_status

        status = read_status(cfg.status_path) or {}
        state = status.get("serial_state", "unknown")
        ok = state == "reading"
        return Check("serial", ok, f"{port}: in use by the running agent (pid {holder}): "
                     f"{state}; {status.get('frames_ok', 0)} frames read")
    good = bad = 0
    device_ms = None
    try:
        with serial.Serial(port, cfg.serial.baudrate, timeout=0.2, exclusive=True) as ser:
            deadline = time.monotonic() + listen_s
            while time.monotonic() < deadline and good < 3:
                line = ser.readline()
                if not line:
                    continue
                try:
                    frame = parse_frame(line)
                    validate_frame(frame)
                    good += 1
                    device_ms = frame.device_ms
                except FrameError:
                    bad += 1
    except (serial.SerialException, OSError) as exc:
        return Check("serial", False, f"{port}: cannot open: {exc}")
    if good == 0:
        return Check("serial", False, f"{port}: no valid frame in {listen_s:.0f} s ({bad} bad); "
                     f"check the baud rate ({cfg.serial.baudrate}) and wiring")
    skew = ""
    if device_ms is not None:
        delta = device_ms / 1000 - time.time()
        skew = f", device clock {delta:+.1f} s from this host"
        if abs(delta) > cfg.max_clock_skew_s:
            return Check("serial", False, f"{port}: frames arrive but the device clock is off by "
                         f"{delta:+.0f} s; set the sensor's RTC")
    return Check("serial", True, f"{port}: {good} valid frames, {bad} bad{skew}")


def running_agent_pid(cfg: EdgeConfig) -> int | None:
    """The pid of the agent holding this state dir's lock, or None when none runs."""
    import fcntl

    path = cfg.state_dir / "agent.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(fd, 32).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_clock() -> Check:
    now = time.time()
    if now < 1_700_000_000:
        return Check("clock", False, "system clock is before 2023: enable NTP "
                     "(sudo timedatectl set-ntp true) or set the date")
    synced = "unknown (no timedatectl)"
    if shutil.which("timedatectl"):
        try:
            out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
            synced = {"yes": "yes", "no": "no"}.get(out, "unknown")
        except (OSError, subprocess.SubprocessError):
            pass
    if synced == "no":
        return Check("clock", False, "NTP is not synchronised: sudo timedatectl set-ntp true")
    return Check("clock", True, f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC, "
                 f"NTP synchronised: {synced}")


def check_broker(cfg: EdgeConfig, timeout_s: float = 5.0) -> Check:
    m = cfg.mqtt
    where = f"{m.host}:{m.port}"
    try:
        with socket.create_connection((m.host, m.port), timeout=timeout_s) as sock:
            if m.tls_ca_file is not None:
                ctx = ssl.create_default_context(cafile=str(m.tls_ca_file))
                if m.tls_cert_file and m.tls_key_file:
                    ctx.load_cert_chain(str(m.tls_cert_file), str(m.tls_key_file))
                with ctx.wrap_socket(sock, server_hostname=m.host) as tls:
                    tls_info = f"TLS {tls.version()}"
            else:
                tls_info = "no TLS (set [mqtt] tls_ca_file for production)"
    except ssl.SSLCertVerificationError as exc:
        return Check("broker", False, f"{where}: TLS certificate not trusted "
                     f"({exc.verify_message}); check tls_ca_file and the broker's host name")
    except (ssl.SSLError, FileNotFoundError) as exc:
        return Check("broker", False, f"{where}: TLS failed: {exc}")
    except OSError as exc:
        return Check("broker", False, f"{where}: unreachable ({exc}); check network, host, port")
    from edge_agent.publisher import build_client

    result: dict[str, object] = {}
    done = threading.Event()
    client = build_client(cfg, client_id=f"{cfg.device_id}-doctor")

    def on_connect(_c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        result["rc"] = rc
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(m.host, m.port, keepalive=10)
    except (OSError, ValueError) as exc:
        return Check("broker", False, f"{where}: MQTT connect failed: {exc}")
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            return Check("broker", False, f"{where}: no CONNACK within {timeout_s:.0f} s")
    finally:
        client.disconnect()
        client.loop_stop()
    rc = result["rc"]
    if getattr(rc, "is_failure", False):
        return Check("broker", False, f"{where}: broker refused the connection: {rc}; check "
                     "[mqtt] username and password")
    return Check("broker", True, f"{where}: MQTT CONNACK ok, {tls_info}")


def check_model(cfg: EdgeConfig) -> Check:
    from edge_agent.app import load_model

    try:
        model = load_model(cfg)
        window = [[0] * model.window]
        model.infer(window)
        start = time.perf_counter()
        for _ in range(100):
            model.infer(window)
        per_ms = (time.perf_counter() - start) * 10
    except (ModelError, SenkenError) as exc:
        return Check("model", False, f"{exc}; reinstall the agent or fix [model] path/sha256")
    size = model.path.stat().st_size
    return Check("model", True, f"{model.path.name} sha256 {model.sha256.hex()[:16]}..., "
                 f"{size} bytes, inference {per_ms:.3f} ms")


def check_outbox(cfg: EdgeConfig) -> Check:
    from edge_agent.outbox import Outbox, OutboxError

    path = cfg.outbox_path
    if not path.exists():
        return Check("outbox", True, f"{path} not created yet (first run creates it)")
    try:
        box = Outbox(path, cfg.outbox.max_readings)
        problems = box.check()
        depth = box.depth
        box.close()
    except OutboxError as exc:
        return Check("outbox", False, f"{exc}; move the file aside to start a new outbox")
    free_mb = shutil.disk_usage(path.parent).free / 1e6
    if problems:
        return Check("outbox", False, f"{path}: {'; '.join(problems)}")
    if free_mb < 100:
        return Check("outbox", False, f"only {free_mb:.0f} MB free on {path.parent}: free space")
    fill = depth / cfg.outbox.max_readings
    return Check("outbox", fill < 0.8, f"{depth} readings waiting ({fill:.0%} of the cap), "
                 f"{free_mb:.0f} MB free" + ("" if fill < 0.8 else "; check the broker link"))


def run_checks(cfg: EdgeConfig, listen_s: float = 5.0) -> Iterator[Check]:
    checks: list[Callable[[], Check]] = [
        lambda: check_key(cfg),
        lambda: check_serial(cfg, listen_s),
        check_clock,
        lambda: check_broker(cfg),
        lambda: check_model(cfg),
        lambda: check_outbox(cfg),
    ]
    for check in checks:
        yield check()


