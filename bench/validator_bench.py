"""Validator network benchmark: certified readings/s through 4 validators, and their latency.

    .venv/bin/python bench/validator_bench.py [--rates 1.2x,1.4x] [--rounds 1]
        [--seconds 20] [--devices 8] [--window-seconds 5] [--no-model-check]
        [--broker-port P] [--profile] [--profile-validator]

Baselines, measured in the same run (the machine is shared: every figure is printed as a
ratio to them):

1. raw Ed25519 verifications/s on one core: PyNaCl ``VerifyKey.verify`` over
   ``signing_message(READING_TAG, body)`` of real reading bodies, best of 3, measured before
   every full run;
2. raw broker publish-to-receive rate: a paho publisher (this process) -> Mosquitto -> a paho
   subscriber (a process of its own), QoS 1, payloads of exactly the reading batches the full
   path publishes: messages/s and readings/s.

The target (the issue): certified readings/s >= 0.5 x (cores x raw verify rate / 4), cores =
``os.cpu_count()``: four validators each verify every reading, so cores x raw / 4 is what four
validators could certify if verifying a signature were all they did; and the p99 latency from
a window being due to its first certificate <= 1 s at that load.

Full path, one run per offered rate (fresh validators each): its own Mosquitto on a free
loopback port (persistence off, a large queue; or ``--broker-port``); 4 validators (k = 3) as
real processes (``senken validator run``, model check on unless ``--no-model-check``); a
project with ``--window-seconds`` windows, grace 0.5 s, round timeout 1 s; D devices in the
registry (retained, signed by the project's owner key). Every reading is made before the clock
starts (values, the anomaly score re-run from ``scored_since_seq`` = 0 with the packaged model,
canonical body, Ed25519 signature, batch payload) with timestamps on a schedule that starts a
few seconds after generation; a paced paho publisher sends each device's batch at the time of
its last reading (QoS 1, a window of unacknowledged messages). A subscriber on
``{prefix}/validators/+/certificates`` records each certificate's arrival; afterwards they are
deduplicated by attestation id: certified readings = the sum of ``readings_accepted`` over the
windows fully inside the measured interval (after ``--warmup``), latency per window = first
certificate arrival - (window end + grace). At the end: each validator's /health and
/metrics (rejections by reason must be none), CPU seconds per 1000 readings of each validator,
of the broker and of this process (publisher + certificate watcher), and the machine's busy and
steal time.

Also, same run: the four nodes' own logic in one process with no broker or asyncio
(``ValidatorNode`` x 4 driven through ``tests.support.validator_sim.SimNet``), which bounds
what the real processes can do; ``--profile`` prints its cProfile (where a validator's CPU
goes), ``--profile-validator`` runs validator 0 under cProfile (thread CPU time). Results
and what they mean: bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from senken_core.anomaly import AnomalyModel, ReadingScorer
from senken_core.evidence import CertifiedWindow
from senken_core.keys import READING_TAG, DeviceKey, signing_message
from senken_core.network import NetworkConfig
from senken_core.reading import (
    MAX_BATCH_READINGS,
    ReadingEncoder,
    SignedReading,
    encode_batch,
)
from senken_core.registry import DeviceRecord
from senken_core.secp256k1 import ValidatorKey
from senken_core.sensors import sensor_kind
from senken_core.topics import device_topic, registry_topic, validator_topic
from tests.support.mosquitto import free_port, port_open
from tests.support.validator import ValidatorProcess, write_network
from tests.support.waiting import wait_until as wait_for

N_VALIDATORS, THRESHOLD = 4, 3
PROJECT = "bench-plant"
KIND = "elec_meter"
CHANNELS = sensor_kind(KIND).channels
GRID_EF = 700


# --- small helpers ------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``inf`` entries stand for windows never certified)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def fmt_s(v: float) -> str:
    return "never" if math.isinf(v) else "n/a" if math.isnan(v) else f"{v:.2f}"


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


# --- the broker -----------------------------------------------------------------------------


class Broker:
    """A Mosquitto of this bench's own on a free loopback port: persistence off, a large
    queue per client (a validator that falls behind queues, it does not lose readings)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 1000000\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 100\n"
            "set_tcp_nodelay true\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n")
        self.log = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                         stdout=subprocess.DEVNULL, stderr=out)
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 10,  # type: ignore[union-attr]
                 f"mosquitto on port {self.port}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


# --- baselines ------------------------------------------------------------------------------


def sample_bodies(n: int) -> tuple[DeviceKey, list[bytes], list[bytes]]:
    """``n`` real reading bodies of one device and their signatures."""
    key = DeviceKey(b"\x05" * 32)
    enc = ReadingEncoder("bench-sample", KIND, [c.name for c in CHANNELS], b"\x22" * 32, 0)
    t = int(time.time() * 1000)
    bodies = [enc.encode(i, t + i, i + 1, i, [50_000 + i, 5_000_000 + i % 97, 2300], i % 1000)
              for i in range(n)]
    return key, bodies, key.sign_many(READING_TAG, bodies)


def verify_rate(n: int = 3000, rounds: int = 3) -> float:
    """Raw Ed25519 verifications/s on one core (PyNaCl), best of ``rounds``."""
    key, bodies, sigs = sample_bodies(n)
    vk = nacl.signing.VerifyKey(key.public_key)
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for body, sig in zip(bodies, sigs, strict=True):
            vk.verify(signing_message(READING_TAG, body), sig)
        best = max(best, n / (time.perf_counter() - start))
    return best


_SUBSCRIBER = r"""
import sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, topic, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
state = {"got": 0, "first": 0.0, "last": 0.0}
done = threading.Event()
def on_message(_c, _u, _m):
    now = time.time()
    if state["got"] == 0:
        state["first"] = now
    state["got"] += 1
    state["last"] = now
    if state["got"] >= n:
        done.set()
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.on_message = on_message
c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
c.on_subscribe = lambda *a: print("ready", flush=True)
c.connect("127.0.0.1", port, 30)
c.loop_start()
deadline = time.time() + float(sys.argv[4])
while not done.wait(0.2) and time.time() < deadline:
    if state["got"] and time.time() - state["last"] > 2:
        break  # the broker dropped the rest (its queue limit)
print(state["got"], state["first"], state["last"], flush=True)
c.disconnect()
c.loop_stop()
"""


def publisher_client(port: int, inflight: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    if not connected.wait(10):
        client.loop_stop()
        raise RuntimeError(f"cannot connect to the broker on 127.0.0.1:{port}")
    return client


def broker_rate(port: int, payload: bytes, readings_per_message: int, inflight: int,
                prefix: str, messages: int) -> tuple[float, float]:
    """Publish ``messages`` copies of ``payload`` at QoS 1 as fast as paho goes; a subscriber
    process counts them. Returns (messages/s, readings/s) from the first publish to the last
    receipt."""
    topic = f"{prefix}/baseline/readings"
    sub = subprocess.Popen([sys.executable, "-c", _SUBSCRIBER, str(port), topic, str(messages),
                            "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout is not None
        if sub.stdout.readline().strip() != "ready":
            raise RuntimeError("the baseline subscriber did not start")
        client = publisher_client(port, inflight)
        try:
            start = time.time()
            infos = [client.publish(topic, payload, qos=1) for _ in range(messages)]
            infos[-1].wait_for_publish(60)
        finally:
            client.disconnect()
            client.loop_stop()
        got, _first, last = sub.stdout.readline().split()
        sub.wait(30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    if int(got) < messages:
        print(f"  warning: the broker dropped {messages - int(got)} of {messages} baseline "
              "messages (its max_queued_messages?)")
    rate = int(got) / (float(last) - start)
    return rate, rate * readings_per_message


# --- the workload ---------------------------------------------------------------------------


@dataclass
class Workload:
    """Every reading of a run, signed and batched, with the time each batch goes out."""

    t0: float  # the schedule's start, Unix seconds, on the window grid
    seconds: float
    window_s: int
    devices: list[str]
    keys: list[DeviceKey]
    batch: int  # readings per message (the last of a device may be shorter)
    schedule: list[tuple[float, str, bytes]] = field(default_factory=list)  # (at, topic, payload)
    offered: dict[tuple[str, int], int] = field(default_factory=dict)  # (device, ws) -> readings
    total: int = 0
    made_in_s: float = 0.0


def device_rows(n: int, seed: int, per_s: float) -> list[list[int]]:
    """A meter's channel values (energy register Wh, power W, voltage 0.1 V), ``per_s`` a s."""
    rng = random.Random(seed)
    energy, carry, rows = 10_000_000 + seed * 1000, 0.0, []
    base = 4_000_000 + 250_000 * (seed % 8)
    for j in range(n):
        power = base + int(rng.gauss(0, 40_000)) + int(200_000 * math.sin(j / 500))
        carry += power / per_s / 3600
        step = int(carry)
        carry -= step
        energy += step
        rows.append([energy, power, 2300 + rng.randint(-15, 15)])
    return rows


def make_workload(model: AnomalyModel, devices: int, rate: float, seconds: float,
                  window_s: int, publish_interval: float, prefix: str,
                  lead_s: float = 2.0) -> Workload:
    """Make every reading of a run (before the clock starts) and its publishing schedule."""
    per_device = rate / devices
    n = max(1, round(per_device * seconds))
    batch = max(1, min(MAX_BATCH_READINGS, round(per_device * publish_interval)))
    names = [f"bench-meter-{i:02d}" for i in range(devices)]
    keys = [DeviceKey.generate() for _ in names]
    channel_names = [c.name for c in CHANNELS]
    # 1. values and anomaly scores (independent of the timestamps): not on the clock
    rows, scores = [], []
    for i in range(devices):
        r = device_rows(n, i + 1, per_device)
        scorer = ReadingScorer(model, CHANNELS)
        ppm: list[int] = []
        for s in range(0, n, 2048):
            ppm += scorer.score(r[s:s + 2048])
        rows.append(r)
        scores.append(ppm)
    # 2. how long encoding and signing take here, so that the schedule starts after them
    started = time.perf_counter()
    probe = ReadingEncoder(names[0], KIND, channel_names, model.sha256, 0)
    m = min(n, 2000)
    keys[0].sign_many(READING_TAG, [probe.encode(j, 0, j + 1, j, rows[0][j], scores[0][j])
                                    for j in range(m)])
    per_reading = (time.perf_counter() - started) / m
    estimate = per_reading * n * devices * 1.3 + 0.5
    t0 = math.ceil((time.time() + 2 * estimate + lead_s) / window_s) * window_s
    work = Workload(t0, seconds, window_s, names, keys, batch)
    # 3. bodies with their timestamps, signatures, batches, schedule
    made = time.perf_counter()
    for i, (name, key) in enumerate(zip(names, keys, strict=True)):
        enc = ReadingEncoder(name, KIND, channel_names, model.sha256, 0)
        phase = i * publish_interval / devices  # devices publish in turn, not all at once
        times = [t0 + phase + j / per_device for j in range(n)]
        bodies = []
        for j in range(n):
            ts_ms = int(times[j] * 1000)
            ws = ts_ms // 1000 // window_s * window_s
            work.offered[(name, ws)] = work.offered.get((name, ws), 0) + 1
            bodies.append(enc.encode(j, ts_ms, j + 1, int((times[j] - t0) * 1000) + 60_000,
                                     rows[i][j], scores[i][j]))
        sigs = key.sign_many(READING_TAG, bodies)
        topic = device_topic(name, "readings", prefix)
        for s in range(0, n, batch):
            end = min(n, s + batch)
            payload = encode_batch([SignedReading(b, g) for b, g in
                                    zip(bodies[s:end], sigs[s:end], strict=True)])
            work.schedule.append((times[end - 1], topic, payload))
    work.schedule.sort(key=lambda item: item[0])
    work.total = n * devices
    work.made_in_s = time.perf_counter() - made
    return work


# --- the paced publisher and the certificate watcher ---------------------------------------


@dataclass
class Published:
    messages: int
    late_p99_s: float
    late_max_s: float
    unacked: int


def publish_paced(client: mqtt.Client, schedule: list[tuple[float, str, bytes]],
                  ack_timeout: float) -> Published:
    """Publish each batch at its time (QoS 1); paho keeps a window of unacknowledged ones."""
    pause = threading.Event()
    late: list[float] = []
    infos = []
    for at, topic, payload in schedule:
        delay = at - time.time()
        if delay > 0:
            pause.wait(delay)
        late.append(max(0.0, time.time() - at))
        infos.append(client.publish(topic, payload, qos=1))
    deadline = time.monotonic() + ack_timeout
    for info in infos:
        info.wait_for_publish(max(0.01, deadline - time.monotonic()))
    unacked = sum(1 for info in infos if not info.is_published())
    return Published(len(infos), percentile(late, 99), max(late, default=0.0), unacked)


class CertificateWatcher:
    """Records (arrival time, payload) of every certified window; decodes them afterwards."""

    def __init__(self, port: int, prefix: str) -> None:
        self.filter = f"{prefix}/validators/+/certificates"
        self.received: list[tuple[float, bytes]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_a: c.subscribe(self.filter, qos=1)
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            self.close()
            raise RuntimeError("the certificate watcher could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.received.append((time.time(), bytes(msg.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def first_by_window(self) -> dict[tuple[str, int], tuple[float, int]]:
        """(device, window_start) -> (first arrival, readings_accepted), deduplicated by
        attestation id (the first certificate of an id is the window's, as for the ledger)."""
        seen: dict[bytes, tuple[str, int]] = {}
        out: dict[tuple[str, int], tuple[float, int]] = {}
        for at, payload in sorted(self.received, key=lambda item: item[0]):
            att = CertifiedWindow.from_wire(payload).attestation
            if att.id in seen:
                continue
            seen[att.id] = (att.device, att.window_start)
            out[(att.device, att.window_start)] = (at, att.readings_accepted)
        return out


# --- the validators -------------------------------------------------------------------------


@dataclass
class Network:
    workdir: Path
    prefix: str
    owner: DeviceKey
    validators: list[ValidatorProcess]
    addresses: list[bytes]
    network_file: Path


_PROFILED = """
import cProfile, runpy, sys, time
out, config = sys.argv[1], sys.argv[2]
sys.argv = ["senken", "validator", "run", "--config", config]
profile = cProfile.Profile(time.thread_time)  # CPU time of the event loop's thread, not idling
profile.enable()
try:
    runpy.run_module("senken", run_name="__main__")
except SystemExit:
    pass
finally:
    profile.disable()
    profile.dump_stats(out)
"""


class ProfiledValidator(ValidatorProcess):
    """``senken validator run`` under cProfile, timing its main thread's CPU (the event loop
    where all the work is); the stats go to ``validator.prof`` when it stops on SIGTERM."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", _PROFILED, str(self.state_dir / "validator.prof"),
                str(self.config)]


def write_validator_config(state_dir: Path, port: int, network_file: Path, key: ValidatorKey,
                           model_check: bool, grace_s: float, round_timeout_s: float) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    key.save(state_dir / "validator.key")
    q = json.dumps
    path = state_dir / "validator.toml"
    path.write_text("\n".join([
        f"state_dir = {q(str(state_dir))}", f"network_file = {q(str(network_file))}",
        f"grace_s = {grace_s}", f"round_timeout_s = {round_timeout_s}",
        "[mqtt]", 'host = "127.0.0.1"', f"port = {port}", "keepalive_s = 10",
        "session_expiry_s = 60", "reconnect_min_s = 0.1", "reconnect_max_s = 1.0",
        "[http]", 'host = "127.0.0.1"', "port = 0",
        "[model]", f"check = {'true' if model_check else 'false'}", ""]))
    return path


def start_network(workdir: Path, port: int, prefix: str, model: AnomalyModel,
                  window_s: int, model_check: bool, grace_s: float, round_timeout_s: float,
                  stack: ExitStack, profile_first: bool = False) -> Network:
    keys = [ValidatorKey.generate() for _ in range(N_VALIDATORS)]
    owner = DeviceKey.generate()
    network_file = write_network(
        workdir / "network.toml", [k.address for k in keys], prefix, THRESHOLD,
        [{"id": PROJECT, "owner_key": owner.public_key.hex(), "window_seconds": window_s,
          "grid_ef_g_per_kwh": GRID_EF, "model_sha256": model.sha256.hex()}])
    procs = [(ProfiledValidator if profile_first and i == 0 else ValidatorProcess)(
        write_validator_config(workdir / f"validator-{i}", port, network_file, key,
                               model_check, grace_s, round_timeout_s))
        for i, key in enumerate(keys)]
    net = Network(workdir, prefix, owner, procs, [k.address for k in keys], network_file)
    stack.callback(stop_validators, procs)
    with ThreadPoolExecutor(len(procs)) as pool:
        for future in [pool.submit(p.start) for p in procs]:
            future.result()
    return net


def stop_validators(procs: list[ValidatorProcess]) -> None:
    """SIGTERM to all (they flush and publish "offline"), then wait; kill what lingers."""
    for p in procs:
        if p.alive():
            p.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    for p in procs:
        if p.proc is None:
            continue
        with suppress(subprocess.TimeoutExpired):
            p.proc.wait(20)
        p.kill()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def wait_quantile(metrics: dict[str, float], q: float) -> str:
    """The smallest bucket bound of ``senken_validator_message_wait_seconds`` holding a
    fraction ``q`` of the messages (how long a message waited for the node to take it up)."""
    prefix = "senken_validator_message_wait_seconds"
    total = metrics.get(prefix + "_count", 0.0)
    bounds = sorted((float(name.split('le="')[1].rstrip('"}')), value)
                    for name, value in metrics.items()
                    if name.startswith(prefix + "_bucket") and "+Inf" not in name)
    for bound, count in bounds:
        if total and count >= q * total:
            return f"{bound:g}"
    return "inf" if total else "?"


def rejected_by_reason(metrics: dict[str, float]) -> dict[str, int]:
    found = {}
    for name, value in metrics.items():
        m = re.match(r'senken_validator_readings_rejected_total\{reason="([^"]+)"\}', name)
        if m and value:
            found[m[1]] = int(value)
    return found


# --- one full run ---------------------------------------------------------------------------


@dataclass
class RunResult:
    rate: float
    offered_rate: float
    certified_rate: float
    fraction: float
    p50: float
    p99: float
    max: float
    windows: int
    windows_certified: int
    raw_verify: float
    broker_msgs: float
    broker_readings: float
    validator_cpu_ms_per_1k: list[float]
    broker_cpu_s: float
    bench_cpu_s: float
    busy_cores: float
    steal_pct: float
    path_cpu_us: float  # CPU of validators + broker + publisher per reading offered
    ratio: float = 0.0
    capacity_ratio: float = 0.0  # the ratio the path's CPU use allows on an idle machine


def rate_of(spec: str, raw: float) -> float:
    """Offered readings/s for ``spec``: a number, or "Nx", N times the target at ``raw``."""
    cores = os.cpu_count() or 1
    if spec.endswith("x"):
        return round(float(spec[:-1]) * 0.5 * cores * raw / N_VALIDATORS, -1)
    return float(spec)


def full_run(args: argparse.Namespace, spec: str, model: AnomalyModel, port: int,
             broker_pid: int | None, workdir: Path, run_no: int) -> RunResult:
    """One run at ``spec`` (see rate_of), the raw verify rate measured right before it (and
    after it: the ratio is to the mean of the two)."""
    cores = os.cpu_count() or 1
    prefix = f"bench-{os.getpid()}-{run_no}/v1"
    raw = verify_rate()
    rate = rate_of(spec, raw)
    print(f"  offered {rate:,.0f} readings/s ({spec}, raw verify {raw:,.0f}/s just before)")
    per_device = rate / args.devices
    batch = max(1, min(MAX_BATCH_READINGS, round(per_device * args.publish_interval)))
    _key, bodies, sigs = sample_bodies(batch)
    sample = encode_batch([SignedReading(b, s) for b, s in zip(bodies, sigs, strict=True)])
    messages = max(300, min(10_000, 150_000 // batch))
    msgs, readings = max(broker_rate(port, sample, batch, args.inflight, prefix, messages)
                         for _ in range(2))
    print(f"  baselines: raw Ed25519 verify {raw:,.0f}/s on one core; broker publish->receive "
          f"(QoS 1, {batch} readings = {len(sample):,} bytes a message) {msgs:,.0f} msg/s = "
          f"{readings:,.0f} readings/s")
    with ExitStack() as stack:
        client = publisher_client(port, args.inflight)
        stack.callback(lambda: (client.disconnect(), client.loop_stop()))
        retained: list[str] = []

        def clear_retained() -> None:  # leave nothing behind on a shared broker
            for topic in retained:
                client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)

        if args.broker_port:
            stack.callback(clear_retained)  # (after the validators stop: their last status)
        net = start_network(workdir / f"run-{run_no}", port, prefix, model, args.window_seconds,
                            args.model_check, args.grace, args.round_timeout, stack,
                            profile_first=args.profile_validator)
        retained += [validator_topic(a, "status", prefix) for a in net.addresses]
        work = make_workload(model, args.devices, rate, args.seconds, args.window_seconds,
                             args.publish_interval, prefix)
        for name, key in zip(work.devices, work.keys, strict=True):
            record = DeviceRecord(PROJECT, name, key.public_key, KIND, model.sha256, 1)
            topic = registry_topic(name, prefix)
            retained.append(topic)
            client.publish(topic, record.sign(net.owner).to_wire(), qos=1,
                           retain=True).wait_for_publish(10)
        wait_for(lambda: all((p.health() or {}).get("registry_devices") == args.devices
                             for p in net.validators), 20, "the validators' registries")
        if time.time() > work.t0 - 0.2:
            print(f"  warning: generation ended {time.time() - work.t0 + 0.2:.1f} s late; the "
                  "first windows are part of the warm-up")
        watcher = CertificateWatcher(port, prefix)
        stack.callback(watcher.close)
        procs = [psutil.Process(p.proc.pid) for p in net.validators]  # type: ignore[union-attr]
        broker = psutil.Process(broker_pid) if broker_pid else None
        me = psutil.Process()
        threading.Event().wait(max(0.0, work.t0 - 0.5 - time.time()))
        cpu0 = [cpu_seconds(p) for p in procs]
        broker0 = cpu_seconds(broker) if broker else 0.0
        me0, machine0, wall0 = cpu_seconds(me), psutil.cpu_times(), time.time()
        published = publish_paced(client, work.schedule, 30)
        # drain: every validator has every reading and no window open, after the last is due
        last_due = work.t0 + args.seconds + args.window_seconds + args.grace
        deadline = last_due + args.drain_timeout
        pause = threading.Event()
        while time.time() < deadline:
            health = [p.health() or {} for p in net.validators]
            if time.time() > last_due + 0.3 and all(
                    h.get("windows_open") == 0 and h.get("readings_verified", 0)
                    + h.get("pending", 0) >= work.total for h in health):
                break
            pause.wait(0.5)
        pause.wait(0.5)  # the last certificates on their way to the watcher
        cpu1 = [cpu_seconds(p) for p in procs]
        broker1 = cpu_seconds(broker) if broker else 0.0
        me1, machine1, wall1 = cpu_seconds(me), psutil.cpu_times(), time.time()
        health = [p.health() or {} for p in net.validators]
        metrics = [parse_metrics(p.metrics()) for p in net.validators]
    # --- results
    profiled = net.validators[0].state_dir / "validator.prof"
    if args.profile_validator and profiled.exists():
        print(profile_summary(pstats.Stats(str(profiled), stream=io.StringIO()),
                              health[0].get("readings_verified", 0), 1,
                              "validator 0, a real process (slowed down by the profiler)"))
    first = watcher.first_by_window()
    measure_from = math.ceil((work.t0 + args.warmup) / args.window_seconds) * args.window_seconds
    measure_to = math.floor((work.t0 + args.seconds) / args.window_seconds) * args.window_seconds
    span = measure_to - measure_from
    windows = [k for k in work.offered
               if measure_from <= k[1] and k[1] + args.window_seconds <= measure_to]
    offered = sum(work.offered[k] for k in windows)
    certified = sum(first[k][1] for k in windows if k in first)
    latencies = [first[k][0] - (k[1] + args.window_seconds + args.grace) if k in first
                 else math.inf for k in windows]
    busy = [(getattr(machine1, f) - getattr(machine0, f)) for f in ("user", "system", "nice",
                                                                     "irq", "softirq")]
    steal = getattr(machine1, "steal", 0.0) - getattr(machine0, "steal", 0.0)
    wall = wall1 - wall0
    raw_after = verify_rate()
    print(f"  raw Ed25519 verify {raw:,.0f}/s before the run, {raw_after:,.0f}/s after: "
          f"the ratio is to their mean")
    raw = (raw + raw_after) / 2
    result = RunResult(
        rate=rate, offered_rate=offered / span, certified_rate=certified / span,
        fraction=certified / offered if offered else 0.0, p50=percentile(latencies, 50),
        p99=percentile(latencies, 99), max=max(latencies, default=math.nan),
        windows=len(windows), windows_certified=sum(1 for k in windows if k in first),
        raw_verify=raw, broker_msgs=msgs, broker_readings=readings,
        validator_cpu_ms_per_1k=[(c1 - c0) * 1e6 / max(1, h.get("readings_verified", 0))
                                 for c0, c1, h in zip(cpu0, cpu1, health, strict=True)],
        broker_cpu_s=broker1 - broker0, bench_cpu_s=me1 - me0,
        busy_cores=sum(busy) / wall, steal_pct=100 * steal / (wall * cores),
        path_cpu_us=1e6 * (sum(cpu1) - sum(cpu0) + broker1 - broker0 + me1 - me0) / work.total)
    result.ratio = result.certified_rate / (cores * raw / N_VALIDATORS)
    capacity = cores * 1e6 / result.path_cpu_us
    result.capacity_ratio = capacity / (cores * raw / N_VALIDATORS)
    print(f"  workload: {work.total:,} readings, {args.devices} devices x "
          f"{rate / args.devices:,.0f}/s, {work.batch} a message, made in "
          f"{work.made_in_s:.1f} s; published {published.messages:,} messages, lateness p99 "
          f"{published.late_p99_s * 1000:.0f} ms max {published.late_max_s * 1000:.0f} ms, "
          f"unacknowledged {published.unacked}")
    print(f"  measured {span} s ({len(windows)} device windows): offered "
          f"{result.offered_rate:,.0f}/s, certified {result.certified_rate:,.0f}/s = "
          f"{100 * result.fraction:.1f} % of offered; windows certified "
          f"{result.windows_certified}/{result.windows}")
    print(f"  ratio certified / (cores x raw verify / {N_VALIDATORS}) = {result.ratio:.2f} "
          f"(target >= 0.5); latency due -> first certificate p50 {fmt_s(result.p50)} s, "
          f"p99 {fmt_s(result.p99)} s, max {fmt_s(result.max)} s (target p99 <= 1 s)")
    for i, (h, m, c) in enumerate(zip(health, metrics, result.validator_cpu_ms_per_1k,
                                      strict=True)):
        rejected = rejected_by_reason(m)
        print(f"  validator {i}: verified {h.get('readings_verified', 0):,}, pending "
              f"{h.get('pending')}, duplicate {h.get('readings_duplicate')}, rejected "
              f"{rejected or 'none'}, rounds timed out {h.get('rounds_timed_out')}, certificates "
              f"assembled {h.get('certificates')}, node errors {h.get('node_errors')}; CPU "
              f"{c:,.0f} ms per 1000 readings; messages waited p99 <= "
              f"{wait_quantile(m, 0.99)} s in its inbox")
        if rejected:
            print(f"  WARNING: validator {i} rejected readings: {rejected}")
    print(f"  CPU over {wall:.1f} s: validators {sum(cpu1) - sum(cpu0):.1f} s, "
          f"broker {f'{result.broker_cpu_s:.1f} s' if broker else 'not measured (not ours)'}, "
          f"this process (publisher, watcher) "
          f"{result.bench_cpu_s:.1f} s; machine busy {result.busy_cores:.2f} of {cores} cores, "
          f"steal {result.steal_pct:.0f} %")
    print(f"  the whole path's CPU: {result.path_cpu_us:,.0f} us per reading offered (4 "
          f"validators, broker, publisher; raw verify {1e6 / raw:.0f} us): on {cores} otherwise "
          f"idle cores it could carry ~{capacity:,.0f} readings/s = ratio "
          f"{result.capacity_ratio:.2f} (derived, not measured)")
    return result


# --- the nodes in one process ---------------------------------------------------------------


def in_process(model: AnomalyModel, args: argparse.Namespace, rate: float,
               profile: bool) -> tuple[float, str]:
    """Four ValidatorNodes (model check on) in this process, fed one workload through
    SimNet: no broker, no asyncio, no processes. Returns (readings/s of the four together on
    one core, the profile's text or "")."""
    from tests.support.validator_sim import SimNet
    from validator.node import ValidatorNode

    seconds = 3.0
    keys = [ValidatorKey.generate() for _ in range(N_VALIDATORS)]
    owner = DeviceKey.generate()
    prefix = "inproc/v1"
    network = NetworkConfig.from_dict({
        "validators": ["0x" + k.address.hex() for k in keys], "threshold": THRESHOLD,
        "topic_prefix": prefix,
        "projects": [{"id": PROJECT, "owner_key": owner.public_key.hex(),
                      "grid_ef_g_per_kwh": GRID_EF, "model_sha256": model.sha256.hex(),
                      "window_seconds": args.window_seconds}]})
    scorer_for = ((lambda kind: ReadingScorer(model, sensor_kind(kind).channels))
                  if args.model_check else None)
    nodes = [ValidatorNode(k, network, scorer_for=scorer_for, grace_s=args.grace,
                           round_timeout_s=args.round_timeout) for k in keys]
    work = make_workload(model, args.devices, rate, seconds, args.window_seconds,
                         args.publish_interval, prefix, lead_s=0.0)
    net = SimNet(nodes, now=work.t0 - 1)
    for name, key in zip(work.devices, work.keys, strict=True):
        net.publish(registry_topic(name, prefix), DeviceRecord(
            PROJECT, name, key.public_key, KIND, model.sha256, 1).sign(owner).to_wire())
    net.deliver()
    half = len(work.schedule) // 2  # the first half warms the streams up (window of 320)
    for at, topic, payload in work.schedule[:half]:
        net.publish(topic, payload)
        net.run_until(at)
    timed = sum(len(payload) for _a, _t, payload in work.schedule[half:])
    n = round(work.total * timed / sum(len(p) for _a, _t, p in work.schedule))
    prof = cProfile.Profile() if profile else None
    start = time.process_time()
    if prof:
        prof.enable()
    for at, topic, payload in work.schedule[half:]:
        net.publish(topic, payload)
        net.run_until(at)
    net.run_until(work.t0 + seconds + args.window_seconds + args.grace + 0.01)
    net.run_until(work.t0 + seconds + args.window_seconds + args.grace + 5 * args.round_timeout)
    if prof:
        prof.disable()
    elapsed = time.process_time() - start
    text = ""
    if prof:
        stats = pstats.Stats(prof, stream=io.StringIO())
        text = profile_summary(stats, n)
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(20)
        text += "\n" + out.getvalue().split("\n\n", 1)[-1].strip() + "\n"
    return n / elapsed, text


# Where the four nodes' CPU goes: entry points (cumulative) and kinds of work (own time).
_ENTRY_POINTS = (
    ("reading batches from devices (Intake.on_batch)", "validator/intake.py", "on_batch"),
    ("  verify the readings (ReadingVerifier.verify, verify_batch)", "validator/verify.py",
     "verify verify_batch"),
    ("    decode its body (Reading.from_canonical)", "senken_core/reading.py",
     "from_canonical"),
    ("    re-run the model (ReadingScorer.score)", "senken_core/anomaly.py", "score"),
    ("  decode the batch (decode_batch)", "senken_core/reading.py", "decode_batch"),
    ("agreement messages (ValidatorNode._on_agreement)", "validator/node.py", "_on_agreement"),
    ("  decode them (agreement.decode_message)", "validator/agreement.py", "decode_message"),
    ("  attest and sign (Rounds.try_sign)", "validator/rounds.py", "try_sign"),
    ("    window_attestation (Merkle root, methodology)", "senken_core/evidence.py",
     "window_attestation"),
    ("peers' certificates (Settlement.on_certificate)", "validator/settle.py",
     "on_certificate"),
    ("  decode them (CertifiedWindow.from_wire)", "senken_core/evidence.py", "from_wire"),
    ("own certificates (CertifiedWindow.to_wire)", "senken_core/evidence.py", "to_wire"),
    ("timers (ValidatorNode.tick)", "validator/node.py", "tick"),
)
_RUNNER_ENTRY_POINTS = (
    ("a message read by paho, stamped into the inbox (ValidatorRunner.received)",
     "validator/app.py", "received"),
    ("a message from the broker (ValidatorRunner.handle_message)", "validator/app.py",
     "handle_message"),
    ("  the node (ValidatorNode.on_message)", "validator/node.py", "on_message"),
    ("  metrics and outbox after it (ValidatorRunner._after_node)", "validator/app.py",
     "_after_node"),
    ("timers (ValidatorRunner._tick)", "validator/app.py", "_tick"),
    ("the node's next deadline (ValidatorNode.next_deadline)", "validator/node.py",
     "next_deadline"),
)
_KINDS: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("canonical CBOR in Python (canonical.py)", lambda f, n: f.endswith("canonical.py")),
    ("Ed25519 verify (libsodium)", lambda f, n: "crypto_sign_open" in n
     or "verify_detached" in n),
    ("model graph (LiteRT invoke)", lambda f, n: f.endswith("litert.py")),
    ("model pre/post-processing (anomaly.py)", lambda f, n: f.endswith("anomaly.py")),
    ("secp256k1 sign/recover", lambda f, n: "secp256k1" in n or "coincurve" in f
     or f.endswith("secp256k1.py")),
    ("keccak, EIP-712", lambda f, n: "Crypto" in f or f.endswith(("eip712.py",
                                                                   "attestation.py"))),
    ("sha256", lambda f, n: "sha256" in n),
    ("reading decode checks (reading.py)", lambda f, n: f.endswith("reading.py")),
    ("MQTT client (paho, aiomqtt)", lambda f, n: "paho" in f or "aiomqtt" in f),
    ("asyncio, selectors", lambda f, n: "asyncio" in f or "selectors" in f),
    ("socket and poll system calls", lambda f, n: f == "~" and any(
        word in n for word in ("recv", "send", "poll", "select", "socket"))),
    ("runner, metrics (app.py, metrics.py, prometheus_client)", lambda f, n: f.endswith(
        ("validator/app.py", "validator/metrics.py")) or "prometheus_client" in f),
    ("validator logic (node, agreement, verify)", lambda f, n: "/validator/" in f),
    ("evidence, quorum, merkle", lambda f, n: f.endswith(("evidence.py", "quorum.py",
                                                          "merkle.py"))),
    ("the simulated network (SimNet)", lambda f, n: f.endswith("validator_sim.py")),
)


def profile_summary(stats: pstats.Stats, n: int, nodes: int = N_VALIDATORS,
                    title: str = "the four nodes in one process") -> str:
    """The profile as two short tables, in us per reading per validator and % of the total."""
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in table.values())
    per = 1e6 / max(1, n) / nodes
    lines = [f"profile of {title} (cProfile inflates Python-heavy code; {n:,} readings x "
             f"{nodes} node(s), {total:.1f} s): us per reading per validator, % of the total",
             "  where (cumulative):"]
    entry_points = _ENTRY_POINTS if nodes > 1 else _RUNNER_ENTRY_POINTS + _ENTRY_POINTS
    for label, path, func in entry_points:
        ct = sum(v[3] for (f, _l, name), v in table.items()
                 if name in func.split() and f.endswith(path))
        lines.append(f"    {label:<58} {ct * per:7.0f} us {100 * ct / total:5.1f} %")
    lines.append("  what (own time; each function counted under the first kind it fits):")
    own = [0.0] * len(_KINDS)
    rest = 0.0
    for (f, _l, name), v in table.items():
        kind = next((i for i, (_label, match) in enumerate(_KINDS) if match(f, name)), None)
        if kind is None:
            rest += v[2]
        else:
            own[kind] += v[2]
    for (label, _match), tt in zip(_KINDS, own, strict=True):
        lines.append(f"    {label:<58} {tt * per:7.0f} us {100 * tt / total:5.1f} %")
    lines.append(f"    {'the rest (builtins, dataclasses, ...)':<58} {rest * per:7.0f} us "
                 f"{100 * rest / total:5.1f} %")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, handler)
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited
    try:                                                                    # ignored
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, before_int)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default=None,
                        help="offered readings/s, comma-separated; 'Nx' is N times the target "
                             "0.5 x cores x raw verify / 4 [default: 1.2x,1.4x, the target "
                             "with a margin for the baseline moving]")
    parser.add_argument("--rounds", type=int, default=1, help="runs per rate; medians")
    parser.add_argument("--seconds", type=float, default=20.0, help="publishing time per run")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds at the start not measured")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--window-seconds", type=int, default=5,
                        help="the project's attestation window (real ones are minutes long; "
                             "each window costs the validators a fixed amount of agreement)")
    parser.add_argument("--grace", type=float, default=0.5)
    parser.add_argument("--round-timeout", type=float, default=1.0)
    parser.add_argument("--publish-interval", type=float, default=0.1,
                        help="each device publishes what it read in the last this-many s")
    parser.add_argument("--inflight", type=int, default=100,
                        help="the publisher's window of unacknowledged messages")
    parser.add_argument("--drain-timeout", type=float, default=20.0,
                        help="how long after the last window is due to wait for certificates")
    parser.add_argument("--no-model-check", dest="model_check", action="store_false")
    parser.add_argument("--broker-port", type=int, default=None,
                        help="use this broker on 127.0.0.1 instead of starting one (it must "
                             "queue enough for a slow subscriber: max_queued_messages)")
    parser.add_argument("--profile", action="store_true",
                        help="print the cProfile of the four nodes run in this process")
    parser.add_argument("--profile-validator", action="store_true",
                        help="run validator 0 under cProfile and print where its CPU goes "
                             "(it runs slower: use a rate the others keep up with)")
    args = parser.parse_args()
    rates = [r.strip() for r in (args.rates or "1.2x,1.4x").split(",")]
    for spec in rates:  # a bad rate is refused here, before anything starts
        try:
            ok = float(spec[:-1] if spec.endswith("x") else spec) > 0
        except ValueError:
            ok = False
        if not ok:
            parser.error(f"--rates: {spec!r} is neither readings/s (> 0) nor a multiple of "
                         "the target such as 1.2x")
    cores = os.cpu_count() or 1
    model = AnomalyModel.load()
    with sigterm_as_interrupt(), ExitStack() as stack, \
            tempfile.TemporaryDirectory(prefix="validator-bench-") as tmp:
        workdir = Path(tmp)
        broker_pid = None
        if args.broker_port:
            port = args.broker_port
        else:
            broker = Broker(workdir / "broker")
            stack.callback(broker.stop)
            broker.start()
            port, broker_pid = broker.port, broker.proc.pid  # type: ignore[union-attr]
        raw = verify_rate()
        target = 0.5 * cores * raw / N_VALIDATORS
        # "1.2x" is 1.2 times the target at the raw rate measured just before each run
        print(f"{cores} cores; 4 validators (k = 3), model check "
              f"{'on' if args.model_check else 'OFF'}; {args.devices} devices; "
              f"{args.window_seconds} s windows, grace {args.grace} s, round timeout "
              f"{args.round_timeout} s; broker 127.0.0.1:{port}")
        print(f"raw Ed25519 verify {raw:,.0f}/s on one core: target certified rate >= 0.5 x "
              f"{cores} x {raw:,.0f} / 4 = {target:,.0f} readings/s, p99 <= 1 s")
        first = rate_of(rates[0], raw)
        node_rate, _ = in_process(model, args, first, False)
        profile = in_process(model, args, first, True)[1] if args.profile else ""
        raw = (raw + verify_rate()) / 2  # the machine is shared: bracket the measurement
        per_node_us = 1e6 / node_rate / N_VALIDATORS
        print(f"the four nodes in one process (no broker, no asyncio; {first:,.0f}/s "
              f"workload): {node_rate:,.0f} readings/s on one core, i.e. {per_node_us:.0f} us "
              f"per reading per validator = {per_node_us * raw / 1e6:.1f} x a raw verify "
              f"({1e6 / raw:.0f} us); on {cores} cores at best ~{node_rate * cores:,.0f}/s = "
              f"ratio {node_rate * cores / (cores * raw / N_VALIDATORS):.2f}")
        if profile:
            print(profile)
        results: dict[str, list[RunResult]] = {}
        run_no = 0
        for spec in rates:
            for round_no in range(1, args.rounds + 1):
                run_no += 1
                print(f"rate {spec}, round {round_no}:")
                results.setdefault(spec, []).append(
                    full_run(args, spec, model, port, broker_pid, workdir, run_no))
        print()
        print(f"{'offered/s':>10} {'certified/s':>11} {'certified':>9} {'ratio':>6} "
              f"{'p50 s':>6} {'p99 s':>6} {'max s':>6} {'windows':>8} {'raw verify':>10} "
              f"{'broker rd/s':>11} {'CPU ms/1k':>9} {'busy':>5} {'cpu ratio':>9}")
        for runs in results.values():
            med = statistics.median
            print(f"{med(r.offered_rate for r in runs):>10,.0f} "
                  f"{med(r.certified_rate for r in runs):>11,.0f} "
                  f"{100 * med(r.fraction for r in runs):>8.1f}% "
                  f"{med(r.ratio for r in runs):>6.2f} {fmt_s(med(r.p50 for r in runs)):>6} "
                  f"{fmt_s(med(r.p99 for r in runs)):>6} {fmt_s(med(r.max for r in runs)):>6} "
                  f"{med(r.windows_certified / max(1, r.windows) for r in runs) * 100:>7.0f}% "
                  f"{med(r.raw_verify for r in runs):>10,.0f} "
                  f"{med(r.broker_readings for r in runs):>11,.0f} "
                  f"{med(statistics.mean(r.validator_cpu_ms_per_1k) for r in runs):>9,.0f} "
                  f"{med(r.busy_cores for r in runs):>5.2f} "
                  f"{med(r.capacity_ratio for r in runs):>9.2f}")
        if args.rounds > 1:
            print(f"(medians of {args.rounds} rounds)")
        for spec, runs in results.items():
            med = statistics.median
            ratio, p99 = med(r.ratio for r in runs), med(r.p99 for r in runs)
            print(f"at {spec} ({med(r.offered_rate for r in runs):,.0f}/s offered): ratio "
                  f"{ratio:.2f} "
                  f"{'>=' if ratio >= 0.5 else '<'} 0.5, p99 {fmt_s(p99)} s "
                  f"{'<=' if p99 <= 1.0 else '>'} 1 s: target "
                  f"{'MET' if ratio >= 0.5 and p99 <= 1.0 else 'not met'}")
        print("ratio = certified / (cores x raw verify / 4), target >= 0.5; CPU = per validator "
              "per 1000 readings verified; busy = cores busy machine-wide (other work too); cpu "
              "ratio = the ratio the path's own CPU use per reading would allow on idle cores")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
