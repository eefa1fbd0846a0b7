"""Validator node benchmark: signed readings verified per second, against raw Ed25519 verify.

    PYTHONPATH=. .venv/bin/python bench/validator_node_bench.py [--model | --no-model]
        [--readings 20000] [--rounds 3] [--devices 4] [--batch 64]

Drives :class:`validator.node.ValidatorNode` with batches of honest ``elec_meter`` readings
(the simulated network of tests/support/validator_sim.py) and reports, per mode, the node's
rate and ``ratio = node rate / raw verify rate``, where the raw rate is PyNaCl's single-core
Ed25519 verify of one reading (``VerifyKey.verify``), measured just before and after each
mode in the same run: the machine is shared, so compare ratios, not rates. Modes:

* ``reference``: readings decoded by the generic canonical decoder (the code before the fast
  decode path), one ``ReadingVerifier.verify`` per reading;
* ``verify``: one ``verify`` per reading, with the fast decode path (what node.py does);
* ``verify_batch``: one ``ReadingVerifier.verify_batch`` per MQTT batch, the verdicts fed to
  the node's own bookkeeping (``_ingest``) in order: what node.py does once it calls it.

``--model`` re-scores every reading with the packaged anomaly model (``--no-model``: none).
The best ratio of ``--rounds`` rounds is shown, with the range, and the node's other work per
reading in units of one verify (``1 / ratio - 1``). Times are this process's CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nacl.signing

from senken_core import reading as reading_module
from senken_core.anomaly import AnomalyModel, ReadingScorer
from senken_core.errors import PayloadError
from senken_core.keys import READING_TAG, signing_message
from senken_core.reading import SignedReading, decode_batch, encode_batch
from senken_core.secp256k1 import ValidatorKey
from senken_core.sensors import sensor_kind
from senken_core.topics import device_topic
from tests.support.validator_sim import PREFIX, T0, Device, network
from validator import verify as verify_module
from validator.node import Outbound, ValidatorNode
from validator.verify import Scorer, Verdict

# CPU time of this process: on a shared machine it moves much less than wall time when other
# work takes the cores (the model runs on this thread: XNNPACK is not given a thread pool).
CLOCK = time.process_time


class BatchNode(ValidatorNode):
    """A node whose reading batches go through ``verify_batch`` (bench only: node.py is where
    this belongs). Each verdict is handed to the node's ``_ingest`` in order."""

    def _on_batch(self, device: str, payload: bytes, out: list[Outbound]) -> None:
        try:
            batch = decode_batch(payload)
        except PayloadError:
            self._reject_count("malformed")
            return
        verdicts: Iterator[Verdict] = iter(self.verifier.verify_batch(
            device, [(s.body, s.signature) for s in batch]))
        self.verifier.verify = lambda *_: next(verdicts)  # type: ignore[method-assign]
        try:
            for signed in batch:
                self._ingest(device, signed)
        finally:
            del self.verifier.verify
        self._after_readings(device, out)


def raw_verify_rate(signed: SignedReading, public_key: bytes, n: int) -> float:
    vk = nacl.signing.VerifyKey(public_key)
    message = signing_message(READING_TAG, signed.body)
    t = CLOCK()
    for _ in range(n):
        vk.verify(message, signed.signature)
    return n / (CLOCK() - t)


def run_node(node_type: type[ValidatorNode], keys: list[ValidatorKey], devices: list[Device],
             batches: list[tuple[str, bytes]], n: int,
             scorer_for: Callable[[str], Scorer] | None) -> float:
    node = node_type(keys[0], network(keys, 3), scorer_for=scorer_for)
    for d in devices:
        node.on_message(f"{PREFIX}/registry/{d.name}", d.record(), T0)
    t = CLOCK()
    for topic, payload in batches:
        node.on_message(topic, payload, T0 + 1)
    dt = CLOCK() - t
    if node.stats.readings_accepted != n:
        raise SystemExit(f"{node.stats.readings_accepted} of {n} readings accepted")
    return n / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action=argparse.BooleanOptionalAction, default=True,
                    help="re-score readings with the anomaly model (default: --model)")
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64, help="readings per MQTT message")
    ap.add_argument("--no-native", action="store_true",
                    help="fast paths without the C extension (as where it is not built)")
    args = ap.parse_args()

    keys = [ValidatorKey(bytes([i + 1]) * 32) for i in range(4)]
    model = AnomalyModel.load() if args.model else None
    scorer_for: Callable[[str], Scorer] | None = None
    if model is not None:
        loaded = model
        scorer_for = lambda kind: ReadingScorer(loaded, sensor_kind(kind).channels)  # noqa: E731
    devices = [Device(f"meter-{i}") for i in range(args.devices)]
    per_device = args.readings // len(devices)
    n = per_device * len(devices)
    batches: list[tuple[str, bytes]] = []
    for d in devices:
        readings = [d.read(T0 + i * 0.001) for i in range(per_device)]
        for i in range(0, len(readings), args.batch):
            batches.append((device_topic(d.name, "readings", PREFIX),
                            encode_batch(readings[i : i + args.batch])))
    sample = devices[0].read(T0)
    raw_n = max(1000, n // 8)

    fast: tuple[object, ...] = (
        None if args.no_native else reading_module._DECODE_READING,
        reading_module._decode_fields, reading_module._split_batch,
        (lambda: None) if args.no_native else verify_module._native_verify)
    built = reading_module._DECODE_READING is not None

    def use_fast_paths(on: bool) -> None:
        patched = fast if on else (None, lambda body: None, lambda payload: None, lambda: None)
        for module, name, value in zip(
                (reading_module, reading_module, reading_module, verify_module),
                ("_DECODE_READING", "_decode_fields", "_split_batch", "_native_verify"),
                patched, strict=True):
            setattr(module, name, value)

    modes: list[tuple[str, type[ValidatorNode], bool]] = [
        ("reference", ValidatorNode, False), ("verify", ValidatorNode, True),
        ("verify_batch", BatchNode, True)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in modes}
    for _ in range(args.rounds):
        for name, node_type, fast_paths in modes:
            use_fast_paths(fast_paths)
            try:
                before = raw_verify_rate(sample, devices[0].key.public_key, raw_n)
                rate = run_node(node_type, keys, devices, batches, n, scorer_for)
                after = raw_verify_rate(sample, devices[0].key.public_key, raw_n)
            finally:
                use_fast_paths(True)
            results[name].append((rate, rate / ((before + after) / 2)))

    native = "native" if built and not args.no_native else "Python"
    print(f"{n} readings, {len(batches)} batches of <= {args.batch}, "
          f"model {'on' if args.model else 'off'}, fast decode {native}, "
          f"{args.rounds} rounds (best ratio, [min-max])")
    # the node's work per reading besides one signature check, in signature checks
    best_ref = max(r for _, r in results["reference"])
    for name, _, _ in modes:
        rates = [rate for rate, _ in results[name]]
        ratios = [ratio for _, ratio in results[name]]
        best = max(ratios)
        print(f"  {name:13s} {statistics.median(rates):8.0f} readings/s  "
              f"ratio {best:.3f} [{min(ratios):.3f}-{best:.3f}]  "
              f"x{best / best_ref:.2f} vs reference; besides the signature check "
              f"{1 / best - 1:.2f} verifies' worth per reading")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
