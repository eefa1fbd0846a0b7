"""ReadingVerifier.verify_batch is verify on each reading in turn: the same verdicts, in order,
and the same state after, whatever the stream (duplicates, gaps, reordering, bad signatures,
forged scores, out-of-range values, agent restarts), with the real anomaly model.

Also: the native signature check gives verify_signature's result, and without it the verifier
falls back to verify_signature.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from senken_core.anomaly import AnomalyModel, ReadingScorer
from senken_core.errors import SignatureError
from senken_core.keys import READING_TAG, DeviceKey, verify_signature
from senken_core.reading import Reading
from senken_core.sensors import sensor_kind
from validator import verify as verify_module
from validator.verify import ReadingVerifier, Reason, RegisteredDevice, Scorer, Verdict

NOW_MS = 1_795_000_000_000
KEY = DeviceKey(b"\x05" * 32)
OTHER_KEY = DeviceKey(b"\x06" * 32)
MODEL = AnomalyModel.load()
DEVICE = "pv-7-meter-1"
CHANNELS = ("energy_export_wh", "power_w", "voltage_dv")
Item = tuple[bytes, bytes]


class Registry(dict[str, RegisteredDevice]):
    def lookup(self, device: str) -> RegisteredDevice | None:
        return self.get(device)


REGISTRY = Registry({
    DEVICE: RegisteredDevice(DEVICE, "pv-plant-7", KEY.public_key, "elec_meter", MODEL.sha256),
    "pv-7-meter-2": RegisteredDevice("pv-7-meter-2", "pv-plant-7", KEY.public_key, "elec_meter",
                                     MODEL.sha256),
})


class ToyScorer:
    """A cheap scorer whose every score depends on every row before it, in order (so any
    change of order or any row scored twice or skipped changes later scores)."""

    def __init__(self, kind: str) -> None:
        self.width = len(sensor_kind(kind).channels)
        self.state = 0

    def score(self, rows: list[list[int]]) -> list[int]:
        if any(len(row) != self.width for row in rows):
            raise ValueError("wrong number of channels")
        out = []
        for row in rows:
            self.state = (self.state * 1_000_003 + sum(row) * 7 + 11) % 1_000_001
            out.append(self.state if self.state % 3 == 0 else 0)
        return out


def model_scorer(kind: str) -> Scorer:
    return ReadingScorer(MODEL, sensor_kind(kind).channels)


def values_of(seq: int) -> list[int]:
    power = 48_000 + (seq * 37) % 500 + (400_000 if seq % 97 == 60 else 0)  # some spikes
    return [1_000_000 + 50 * seq, power, 2300 + seq % 7]


def stream(n: int, scorer_for: Callable[[str], Scorer], restarts: Sequence[int] = ()
           ) -> list[Reading]:
    """n readings as an agent signs them; the agent restarts (a fresh scorer) at ``restarts``."""
    out: list[Reading] = []
    since, scorer = 0, scorer_for("elec_meter")
    for seq in range(n):
        if seq in restarts:
            since, scorer = seq, scorer_for("elec_meter")
        values = values_of(seq)
        ppm = scorer.score([values])[0]
        out.append(Reading(DEVICE, seq, NOW_MS - 1000 * (n - seq), "elec_meter", seq + 1,
                           NOW_MS - 1000 * (n - seq), tuple(zip(CHANNELS, values, strict=True)),
                           MODEL.sha256, ppm, since))
    return out


def signed(reading: Reading, key: DeviceKey = KEY) -> Item:
    body = reading.canonical()
    return body, key.sign(READING_TAG, body)


# What a hypothesis-drawn op does to the delivery list (readings re-signed as the device would).
def _tampered(r: Reading, what: str, arg: int) -> Item:
    if what == "forge":
        return signed(replace(r, anomaly_ppm=(r.anomaly_ppm + 1 + arg) % 1_000_001))
    if what == "wild":
        return signed(replace(r, values=(r.values[0], ("power_w", 10**9), r.values[2])))
    if what == "decrease":
        return signed(replace(r, values=(("energy_export_wh", r.values[0][1] - 1 - arg),
                                         *r.values[1:])))
    if what == "stale":
        return signed(replace(r, ts_ms=NOW_MS - 31 * 86_400_000))
    if what == "future":
        return signed(replace(r, ts_ms=NOW_MS + 600_000))
    if what == "reuse":
        return signed(replace(r, frame_counter=r.frame_counter + 1 + arg))
    if what == "restart":  # the agent restarted here: a new scored_since_seq
        return signed(replace(r, scored_since_seq=r.seq, anomaly_ppm=0))
    if what == "since":  # claims an earlier start: pending until those are seen
        return signed(replace(r, scored_since_seq=max(0, r.seq - 1 - arg)))
    if what == "shape":  # two channels for a three-channel kind: the scorer raises
        return signed(replace(r, values=r.values[:2]))
    if what == "badsig":
        body, sig = signed(r)
        return body, bytes([sig[0] ^ 1]) + sig[1:]
    if what == "otherkey":
        return signed(r, OTHER_KEY)
    if what == "topic":
        return signed(replace(r, device="pv-7-meter-2"))
    if what == "garbage":
        return bytes([arg % 256]) * (arg % 40), b"\x00" * 64
    if what == "shortsig":
        return signed(r)[0], b"\x01" * (arg % 64)
    raise AssertionError(what)


TAMPER = ["forge", "wild", "decrease", "stale", "future", "reuse", "restart", "since", "shape",
          "badsig", "otherkey", "topic", "garbage", "shortsig"]
ops = st.lists(st.tuples(
    st.sampled_from(["drop", "dup", "move", "swap", *TAMPER, *TAMPER]),
    st.integers(0, 10**6), st.integers(0, 10**6)), max_size=25)


def deliveries(readings: list[Reading], items: list[Item],
               script: list[tuple[str, int, int]]) -> list[Item]:
    out = list(items)
    for op, at, arg in script:
        if not out:
            break
        i = at % len(out)
        if op == "drop":
            del out[i]
        elif op == "dup":
            out.insert(arg % (len(out) + 1), out[i])
        elif op == "move":
            out.insert(arg % len(out), out.pop(i))
        elif op == "swap":
            j = (i + 1) % len(out)
            out[i], out[j] = out[j], out[i]
        else:  # a tampered reading: in the original's place (if still there), or inserted
            index = at % len(readings)
            tampered = _tampered(readings[index], op, arg)
            if arg % 2 and items[index] in out:
                out[out.index(items[index])] = tampered
            else:
                out.insert(i, tampered)
    return out


def state_of(v: ReadingVerifier) -> dict[str, object]:
    """Everything a verifier keeps, the scorers' inner state included."""
    out: dict[str, object] = {}
    for device, s in v._devices.items():
        scorer: object = s.scorer
        if isinstance(s.scorer, ReadingScorer):
            scorer = [(st_.model is MODEL, st_.cumulative, st_._history.tobytes(), st_._last,
                       st_._n_raw, st_._mean, st_._var, st_._index, st_._last_alarm)
                      for st_ in s.scorer.streams]
        elif isinstance(s.scorer, ToyScorer):
            scorer = ("toy", s.scorer.state)
        out[device] = (s.highest_seq, list(s.seen.items()), dict(s.register), s.scored_since,
                       s.next_to_score, scorer)
    return out


def run_both(items: list[Item], chunks: list[int], scorer_for: Callable[[str], Scorer] | None,
             history: int, topic: str = DEVICE) -> tuple[list[object], ReadingVerifier]:
    """Feed ``items`` in chunks: verify_batch per chunk, and verify per item on a twin.
    A chunk that raises loses its verdicts (the exception stands in for them); sequentially,
    the items after the raising one are not verified."""
    def make() -> ReadingVerifier:
        return ReadingVerifier(REGISTRY, scorer_for=scorer_for, clock=lambda: NOW_MS / 1000,
                               history=history)

    batch, one = make(), make()
    got: list[object] = []
    want: list[object] = []
    start = 0
    sizes = iter(chunks)
    while start < len(items):
        chunk = items[start : start + max(1, next(sizes, len(items)))]
        start += len(chunk)
        try:
            got.extend(batch.verify_batch(topic, chunk))
        except ValueError as exc:
            got.append(("raised", str(exc)))
        verdicts: list[Verdict] = []
        try:
            for body, sig in chunk:
                verdicts.append(one.verify(topic, body, sig))
        except ValueError as exc:
            want.append(("raised", str(exc)))
        else:
            want.extend(verdicts)
        assert state_of(batch) == state_of(one)
    assert got == want
    return got, batch


# --- the properties ---------------------------------------------------------------------

TOY_READINGS = stream(60, ToyScorer, restarts=(40,))
TOY_ITEMS = [signed(r) for r in TOY_READINGS]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.lists(st.integers(0, 70), max_size=12), st.sampled_from([2, 5, 30, 100_000]),
       st.booleans())
def test_verify_batch_is_verify_in_turn_toy_scorer(
    script: list[tuple[str, int, int]], chunks: list[int], history: int, rescore: bool
) -> None:
    items = deliveries(TOY_READINGS, TOY_ITEMS, script)
    run_both(items, chunks, ToyScorer if rescore else None, history)


# Past the model's window and warm-up (320 + 50 values), so real scores are compared; spikes
# make some of them non-zero. Signed once: hypothesis only rearranges and tampers.
MODEL_READINGS = stream(MODEL.window + MODEL.params.warmup + 40, model_scorer, restarts=(395,))
MODEL_ITEMS = [signed(r) for r in MODEL_READINGS]


def test_the_model_stream_has_real_scores() -> None:
    assert sum(r.anomaly_ppm > 0 for r in MODEL_READINGS) >= 3
    verdicts, _ = run_both(MODEL_ITEMS, [64] * 10, model_scorer, 100_000)
    assert all(isinstance(v, Verdict) and v.accepted for v in verdicts)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.lists(st.integers(0, 500), max_size=8), st.sampled_from([3, 50, 100_000]))
def test_verify_batch_is_verify_in_turn_with_the_model(
    script: list[tuple[str, int, int]], chunks: list[int], history: int
) -> None:
    items = deliveries(MODEL_READINGS, MODEL_ITEMS, script)
    run_both(items, chunks, model_scorer, history)


def test_a_forged_score_in_a_batch_is_caught_and_the_rest_go_on() -> None:
    items = list(MODEL_ITEMS)
    forged = MODEL_READINGS[380]
    items[380] = signed(replace(forged, anomaly_ppm=(forged.anomaly_ppm + 1) % 1_000_001))
    verdicts, _ = run_both(items, [len(items)], model_scorer, 100_000)
    reasons = [v.reason for v in verdicts if isinstance(v, Verdict) and not v.accepted]
    assert reasons == [verify_module.Reason.SCORE_MISMATCH]


def test_one_score_call_per_run() -> None:
    calls: list[int] = []

    class Counting(ToyScorer):
        def score(self, rows: list[list[int]]) -> list[int]:
            calls.append(len(rows))
            return super().score(rows)

    v = ReadingVerifier(REGISTRY, scorer_for=Counting, clock=lambda: NOW_MS / 1000)
    verdicts = v.verify_batch(DEVICE, TOY_ITEMS[:40])
    assert all(x.accepted for x in verdicts) and calls == [40]
    calls.clear()
    # a restart at 40 (a new scorer) splits the run; a duplicate does not
    verdicts = v.verify_batch(DEVICE, TOY_ITEMS[40:50] + TOY_ITEMS[45:46] + TOY_ITEMS[50:])
    assert [x.status for x in verdicts].count("duplicate") == 1 and calls == [20]
    assert v.verify_batch(DEVICE, []) == []


def test_replay_checks_wait_for_the_queue() -> None:
    # history 2: seq 0 is forgotten once 1 and 2 are seen; whether it is then "replayed" or
    # "pending" depends on whether the queued seq 5 is accepted
    items = [*TOY_ITEMS[:6], TOY_ITEMS[0]]
    verdicts, _ = run_both(items, [len(items)], ToyScorer, 2)
    last = verdicts[-1]
    assert isinstance(last, Verdict) and last.reason == verify_module.Reason.REPLAYED


def test_an_unknown_kind_takes_verifys_own_path() -> None:
    registry = Registry({DEVICE: RegisteredDevice(DEVICE, "p", KEY.public_key, "mystery",
                                                  MODEL.sha256)})
    r = replace(MODEL_READINGS[0], kind="mystery")

    def make() -> ReadingVerifier:
        return ReadingVerifier(registry, scorer_for=model_scorer, clock=lambda: NOW_MS / 1000)

    one = make().verify(DEVICE, *signed(r))  # a kind without channels: refused, no crash
    batch = make().verify_batch(DEVICE, [signed(MODEL_READINGS[0]), signed(r)])
    assert one.reason == batch[1].reason == Reason.MALFORMED


# --- the native signature check -------------------------------------------------------------

def test_the_native_signature_check_is_built_here() -> None:
    assert verify_module._native_verify() is not None


keys = st.sampled_from([KEY.public_key, OTHER_KEY.public_key, b"\x00" * 32, b"\x01" + b"\x00" * 31,
                        b"\xff" * 32]) | st.binary(min_size=0, max_size=40)


def digest_outcome(public_key: bytes, body: bytes, signature: bytes) -> object:
    try:
        return verify_module._signed_digest(public_key, body, signature)
    except SignatureError as exc:
        return "SignatureError", str(exc)
    except Exception as exc:
        return type(exc).__name__


@settings(max_examples=300)
@given(keys, st.binary(max_size=200), st.binary(max_size=70) | st.just(b""), st.integers(0, 4))
def test_native_signature_check_equals_verify_signature(
    key: bytes, body: bytes, junk: bytes, how: int
) -> None:
    good = KEY.sign(READING_TAG, body)
    signature = [good, junk, good[:-1] + bytes([good[-1] ^ 0x80]), junk.ljust(64, b"\x00")[:64],
                 OTHER_KEY.sign(READING_TAG, body)][how]
    if how in (0, 2):
        key = KEY.public_key if len(key) % 2 else key
    native = digest_outcome(key, body, signature)
    # switch the optional native check off: the PyNaCl path a build without the C extension runs
    with mock.patch.object(verify_module, "_native_verify", lambda: None):
        fallback = digest_outcome(key, body, signature)
    assert native == fallback
    try:
        verify_signature(key, READING_TAG, body, signature)
    except SignatureError:
        assert native == ("SignatureError", "signature does not verify against the device key")
    except Exception:
        assert not isinstance(native, bytes)
    else:
        assert native == hashlib.sha256(body).digest()


def test_verify_without_the_native_check() -> None:
    rng = random.Random(3)
    items = list(TOY_ITEMS[:20])
    items[7] = items[7][0], bytes(rng.randrange(256) for _ in range(64))
    # the PyNaCl path a build without the C extension runs (no server is involved)
    with mock.patch.object(verify_module, "_native_verify", lambda: None):
        without, _ = run_both(items, [5, 5, 10], ToyScorer, 100_000)
    with_native, _ = run_both(items, [5, 5, 10], ToyScorer, 100_000)
    assert without == with_native
    assert [v.reason for v in with_native if isinstance(v, Verdict) and v.reason] == [
        verify_module.Reason.BAD_SIGNATURE]  # (and the readings after it wait: pending)
