"""The two-stage pipeline: stage B (sign, commit) on the signer thread, fed through a queue."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox, OutboxError
from edge_agent.pipeline import CheckedBatch, ReadingPipeline
from edge_agent.signer import Signer, SignerFailed
from edge_agent.stats import AgentStats
from senken_core.frame import Frame, encode_frame
from senken_core.keys import DeviceKey
from senken_core.reading import SignedReading

KEY = DeviceKey(b"\x07" * 32)
MODEL = b"\x11" * 32
WAIT_S = 10


class RecordingScorer:
    def __init__(self) -> None:
        self.seen: list[Sequence[int]] = []

    def score(self, rows: Sequence[Sequence[int]]) -> list[int]:
        self.seen += rows
        return [len(self.seen) % 1000] * len(rows)


def frame(counter: int) -> bytes:
    return encode_frame(Frame(counter, 1_700_000_000_000, "elec_meter",
                              (("energy_export_wh", 1000 + counter), ("power_w", 500),
                               ("voltage_dv", 2300))))


def make_pipeline(tmp_path: Path, max_readings: int = 100_000
                  ) -> tuple[ReadingPipeline, Outbox, RecordingScorer]:
    box = Outbox(tmp_path / "outbox.db", max_readings)
    scorer = RecordingScorer()
    pipe = ReadingPipeline(device_id="dev-test", key=KEY, outbox=box,
                           scorer_for_kind=lambda _k: scorer, model_sha256=MODEL,
                           stats=AgentStats(), clock=lambda: 1_700_000_000.0)
    return pipe, box, scorer


class GatedStore:
    """Wraps ``store``: each call waits until the gate is open (so batches stay queued)."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, batch: CheckedBatch) -> int:
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        return self.store(batch)  # type: ignore[operator]


def test_batches_are_stored_in_order_and_close_stores_every_one(tmp_path: Path) -> None:
    pipe, box, _ = make_pipeline(tmp_path)
    stored: list[int] = []
    signer = Signer(pipe.store, on_stored=stored.append, release=pipe.discard, max_batches=2)
    signer.start()
    counter = 0
    for size in [1, 7, 50, 3, 200, 1, 64] * 5:
        batch = pipe.check([frame(counter + i) for i in range(size)])
        assert batch is not None
        signer.put(batch)
        counter += size
    assert signer.close(timeout=WAIT_S)  # drains the queue before returning
    rows = box.peek(-1, 10_000)
    assert [seq for seq, _, _ in rows] == list(range(counter))
    readings = [SignedReading(body, sig).verify(KEY.public_key) for _, body, sig in rows]
    assert [r.frame_counter for r in readings] == list(range(counter))
    assert sum(stored) == counter == pipe.stats.readings_signed
    assert pipe.pending == 0


def test_a_full_outbox_refuses_before_scoring_while_readings_are_queued(tmp_path: Path) -> None:
    pipe, box, scorer = make_pipeline(tmp_path, max_readings=100)
    gated = GatedStore(pipe.store)
    signer = Signer(gated, release=pipe.discard)
    signer.start()
    first = pipe.check([frame(i) for i in range(60)])
    assert first is not None
    signer.put(first)
    assert gated.entered.wait(WAIT_S)  # being stored, not yet committed: depth is still 0
    assert box.depth == 0 and pipe.pending == 60
    second = pipe.check([frame(60 + i) for i in range(60)])
    assert second is not None and len(second.frames) == 40
    signer.put(second)
    assert pipe.check([frame(120)]) is None  # nothing free: refused, not scored
    assert pipe.stats.readings_refused_full == 21
    assert len(scorer.seen) == 100  # the model saw exactly the readings that get signed
    gated.gate.set()
    assert signer.close(timeout=WAIT_S)
    assert box.depth == 100 and pipe.pending == 0
    assert pipe.stats.readings_signed == 100


def test_a_signer_error_is_reported_and_never_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, box, _ = make_pipeline(tmp_path)
    failures: list[BaseException] = []
    failed = threading.Event()

    def append(*_args: object) -> None:
        raise OutboxError("disk full")

    monkeypatch.setattr(box, "append", append)
    gated = GatedStore(pipe.store)

    def on_failure(exc: BaseException) -> None:
        failures.append(exc)
        failed.set()

    signer = Signer(gated, on_failure=on_failure, release=pipe.discard)
    signer.start()
    signer.put(pipe.check([frame(0), frame(1)]))  # type: ignore[arg-type]
    assert gated.entered.wait(WAIT_S)
    signer.put(pipe.check([frame(2)]))  # type: ignore[arg-type]  # queued behind it
    assert pipe.pending == 3
    gated.gate.set()
    assert failed.wait(WAIT_S)
    assert [str(e) for e in failures] == ["disk full"]
    assert pipe.pending == 0  # the queued batch's slots were given back
    with pytest.raises(SignerFailed) as info:
        signer.put(pipe.check([frame(3)]))  # type: ignore[arg-type]
    assert isinstance(info.value.__cause__, OutboxError)
    with pytest.raises(SignerFailed):
        signer.close(timeout=WAIT_S)
    assert box.depth == 0


def test_put_blocks_while_the_queue_is_full(tmp_path: Path) -> None:
    pipe, _, _ = make_pipeline(tmp_path)
    gated = GatedStore(pipe.store)
    signer = Signer(gated, release=pipe.discard, max_batches=1)
    signer.start()
    signer.put(pipe.check([frame(0)]))  # type: ignore[arg-type]
    assert gated.entered.wait(WAIT_S)  # taken off the queue, being stored
    signer.put(pipe.check([frame(1)]))  # type: ignore[arg-type]  # fills the queue
    third = pipe.check([frame(2)])
    put_done = threading.Event()
    putter = threading.Thread(target=lambda: (signer.put(third), put_done.set()))  # type: ignore[arg-type, func-returns-value]
    putter.start()
    assert not put_done.wait(0.2)  # still blocked: the queue holds max_batches
    gated.gate.set()
    assert put_done.wait(WAIT_S)
    putter.join(WAIT_S)
    assert signer.close(timeout=WAIT_S)
    assert pipe.stats.readings_signed == 3
