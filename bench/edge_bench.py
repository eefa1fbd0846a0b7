"""Edge agent benchmarks: throughput against the raw sign rate, memory and CPU per reading.

    .venv/bin/python bench/edge_bench.py [--readings 20000] [--memory-seconds 20]

1. Baseline, same run: raw Ed25519 signatures per second (PyNaCl, one core) over the message a
   reading signature covers (tag + SHA-256 digest).
2. Pipeline through a pseudo-terminal: a simulated meter writes frames as fast as the reader
   takes them, from a process of its own (the firmware is another device); an in-process
   agent reads them, parses, validates and scores (TFLite) on its serial thread, reserves
   sequence numbers, signs and commits to the SQLite outbox (WAL, synchronous=FULL) on its
   signer thread. Readings committed per second, and the ratio to (1). Target >= 0.5.
3. The agent as a process (`senken edge run`) at 50 frames/s against the broker on
   127.0.0.1:1883: peak resident memory (target <= 40 MB) against a bare Python interpreter's
   in the same run, and CPU time per reading against the raw sign time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nacl.bindings
import nacl.signing
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.app import EdgeAgent
from edge_agent.config import EdgeConfig
from edge_agent.stats import AgentStats
from firmware_sim.device import SimulatedDevice
from senken_core.keys import READING_TAG, DeviceKey


def sign_rate(n: int) -> float:
    """Raw Ed25519 signatures/s through PyNaCl's thinnest binding (what the agent calls)."""
    secret = nacl.signing.SigningKey(b"\x01" * 32)._signing_key
    message = READING_TAG + hashlib.sha256(b"x" * 200).digest()
    start = time.perf_counter()
    for _ in range(n):
        nacl.bindings.crypto_sign(message, secret)
    return n / (time.perf_counter() - start)


_WRITER = """
import math, sys
from pathlib import Path
from firmware_sim.device import SimulatedDevice
dev = SimulatedDevice("elec_meter", rate_hz=math.inf, seed=1, link=Path(sys.argv[1]),
                      write_timeout=30)
print("ready", flush=True)
sys.stdin.readline()
dev.burst(int(sys.argv[2]))
print(len(dev.sent), flush=True)
sys.stdin.readline()
dev.stop()
"""


def pipeline_rate(n: int, workdir: Path) -> tuple[float, AgentStats]:
    """Readings/s stored by a whole in-process agent; the firmware writes from its own process.

    The agent runs exactly as `senken edge run` does (serial thread checking and scoring,
    signer thread signing and committing), with its broker unreachable so that only reading,
    scoring, signing and storing are measured.
    """
    link = workdir / "tty"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(link), str(n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    assert writer.stdin is not None and writer.stdout is not None
    assert writer.stdout.readline().strip() == "ready"
    home = workdir / "pipeline-agent"
    home.mkdir()
    DeviceKey.generate().save(home / "device.key")
    cfg = EdgeConfig.model_validate({
        "device_id": "bench-meter", "state_dir": str(home), "serial": {"port": str(link)},
        "mqtt": {"port": free_port()}, "outbox": {"max_readings": 10 * n},
        "max_clock_skew_s": 10**9,
    })
    agent = EdgeAgent(cfg)
    agent.start()
    agent.source.opened.wait(10)
    start = time.perf_counter()
    writer.stdin.write("go\n")
    writer.stdin.flush()
    sent = int(writer.stdout.readline())
    tick = threading.Event()
    while agent.stats.readings_signed < sent and time.perf_counter() - start < 300:
        tick.wait(0.0005)
    elapsed = time.perf_counter() - start
    writer.stdin.write("stop\n")
    writer.stdin.flush()
    writer.wait(30)
    agent.stop()
    return agent.stats.readings_signed / elapsed, agent.stats


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 1883), timeout=1):
            return True
    except OSError:
        return False


def bare_python_rss() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    time.sleep(0.5)  # a measurement interval, not synchronisation
    rss = psutil.Process(proc.pid).memory_info().rss
    proc.communicate(b"")
    return rss


def agent_process(seconds: float, workdir: Path) -> dict[str, float]:
    dev = SimulatedDevice("elec_meter", rate_hz=50, seed=2, link=workdir / "tty-agent")
    home = workdir / "agent"
    home.mkdir()
    DeviceKey.generate().save(home / "device.key")
    (home / "edge.toml").write_text(
        f'device_id = "bench-agent"\nstate_dir = "{home}"\n[serial]\nport = "{dev.port_path}"\n'
        f'[mqtt]\nport = 1883\ntopic_prefix = "bench-{os.getpid()}/v1"\n')
    proc = subprocess.Popen([sys.executable, "-m", "senken", "edge", "run", "--config",
                             str(home / "edge.toml")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    status_path = home / "status.json"
    tick = threading.Event()
    while not status_path.exists() and proc.poll() is None:
        tick.wait(0.1)
    dev.start()
    cpu0 = ps.cpu_times()
    signed0 = json.loads(status_path.read_text())["readings_signed"]
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, ps.memory_info().rss)
        tick.wait(0.25)
    cpu1 = ps.cpu_times()
    tick.wait(1.1)  # status.json is rewritten once a second
    signed = json.loads(status_path.read_text())["readings_signed"] - signed0
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    dev.stop()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"peak_rss": peak, "cpu_per_reading_s": cpu / max(1, signed), "readings": signed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=20000)
    parser.add_argument("--memory-seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        base = sign_rate(args.readings)
        rate, stats = pipeline_rate(args.readings, workdir)
        base_after = sign_rate(args.readings)  # the machine is shared: bracket the run
        baseline = (base + base_after) / 2
        print(f"raw Ed25519 sign rate (baseline):      {baseline:10.0f} /s "
              f"(before {base:.0f}, after {base_after:.0f})")
        print(f"pipeline pty->parse->score->sign->outbox {rate:8.0f} readings/s "
              f"({stats.readings_signed} readings, {sum(stats.frames_rejected.values())} bad)")
        print(f"ratio pipeline / raw sign:             {rate / baseline:10.2f}   (target >= 0.5)")
        if not broker_up():
            print("no broker on 127.0.0.1:1883: skipping the agent process measurement")
            return
        bare = bare_python_rss()
        agent = agent_process(args.memory_seconds, workdir)
        print(f"bare Python interpreter RSS (baseline): {bare / 2**20:9.1f} MB")
        print(f"agent peak RSS at 50 readings/s:       {agent['peak_rss'] / 2**20:9.1f} MB "
              f"(ratio {agent['peak_rss'] / bare:.1f}; target <= 40 MB)")
        per = agent["cpu_per_reading_s"]
        print(f"agent CPU per reading:                 {per * 1e6:9.0f} us "
              f"({per * baseline:.1f} x a raw signature; {agent['readings']:.0f} readings)")


if __name__ == "__main__":
    main()
