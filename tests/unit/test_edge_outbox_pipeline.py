"""Outbox durability and the frame pipeline, without hardware or broker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.outbox import SEQ_BLOCK, Outbox
from edge_agent.pipeline import ReadingPipeline
from edge_agent.stats import AgentStats
from senken_core.frame import Frame, encode_frame
from senken_core.keys import DeviceKey
from senken_core.reading import Reading, SignedReading

KEY = DeviceKey(b"\x07" * 32)
MODEL = b"\x11" * 32


class ConstantScorer:
    def score(self, rows: Sequence[Sequence[int]]) -> list[int]:
        return [42] * len(rows)


def frame(counter: int, energy: int = 1000, device_ms: int = 1_700_000_000_000) -> bytes:
    return encode_frame(Frame(counter, device_ms, "elec_meter",
                              (("energy_export_wh", energy), ("power_w", 500),
                               ("voltage_dv", 2300))))


def make_pipeline(tmp_path: Path, max_readings: int = 1000) -> tuple[ReadingPipeline, Outbox]:
    box = Outbox(tmp_path / "outbox.db", max_readings)
    stats = AgentStats()
    pipe = ReadingPipeline(device_id="dev-test", key=KEY, outbox=box,
                           scorer_for_kind=lambda _k: ConstantScorer(), model_sha256=MODEL,
                           stats=stats, clock=lambda: 1_700_000_000.0)
    return pipe, box


def test_frames_become_signed_readings_in_order(tmp_path: Path) -> None:
    pipe, box = make_pipeline(tmp_path)
    assert pipe.process([frame(i, 1000 + i) for i in range(5)]) == 5
    rows = box.peek(-1, 100)
    assert [seq for seq, _, _ in rows] == [0, 1, 2, 3, 4]
    readings = [SignedReading(body, sig).verify(KEY.public_key) for _, body, sig in rows]
    assert [r.frame_counter for r in readings] == [0, 1, 2, 3, 4]
    assert readings[2].values == (("energy_export_wh", 1002), ("power_w", 500),
                                  ("voltage_dv", 2300))
    assert all(r.anomaly_ppm == 42 and r.model_sha256 == MODEL for r in readings)


def test_bad_frames_are_counted_and_never_stop_the_batch(tmp_path: Path) -> None:
    pipe, box = make_pipeline(tmp_path)
    good1, good2 = frame(1), frame(2)
    broken = frame(3).replace(b"500", b"501")
    lines = [b"\x00\xff garbage", good1, broken, good1[:20], b"", good2, frame(2)]
    assert pipe.process(lines) == 2
    assert box.depth == 2
    rejected = pipe.stats.frames_rejected
    assert rejected["checksum"] == 1
    assert rejected["syntax"] == 2
    assert rejected["counter_regressed"] == 1  # frame 2 seen twice
    assert "counter_regressed" in (pipe.stats.last_error or "")


def test_counter_gaps_reboots_and_clock_jumps(tmp_path: Path) -> None:
    pipe, _ = make_pipeline(tmp_path)
    pipe.process([frame(5), frame(9)])
    assert pipe.stats.frames_missed == 3
    pipe.process([frame(0), frame(1)])
    assert pipe.stats.firmware_reboots == 1
    pipe.process([frame(2, device_ms=1_700_000_000_000 + 3_600_000)])
    assert pipe.stats.clock_skew_frames == 1
    assert "clock" in (pipe.stats.last_error or "")


def test_counter_survives_restart_so_replays_are_rejected(tmp_path: Path) -> None:
    pipe, box = make_pipeline(tmp_path)
    pipe.process([frame(10), frame(11)])
    box.close()
    pipe2, _ = make_pipeline(tmp_path)
    assert pipe2.process([frame(11), frame(12)]) == 1
    assert pipe2.stats.frames_rejected["counter_regressed"] == 1


def test_full_outbox_refuses_newest_before_signing(tmp_path: Path) -> None:
    pipe, box = make_pipeline(tmp_path, max_readings=100)
    assert pipe.process([frame(i) for i in range(120)]) == 100
    assert pipe.stats.readings_refused_full == 20
    assert "outbox full" in (pipe.stats.last_error or "")
    box.delete([seq for seq, _, _ in box.peek(-1, 10)])
    assert pipe.process([frame(200)]) == 1
    seqs = [seq for seq, _, _ in box.peek(-1, 1000)]
    assert seqs == list(range(10, 101))  # no sequence number was burnt by refused frames


def test_sequence_numbers_are_never_reused_after_a_crash(tmp_path: Path) -> None:
    """A child process signs readings and is killed without closing: no seq is reused."""
    path = tmp_path / "outbox.db"
    script = (
        "import os, sys\n"
        "from edge_agent.outbox import Outbox\n"
        f"box = Outbox(__import__('pathlib').Path({str(path)!r}))\n"
        "first = box.reserve(3)\n"
        "box.append([(first + i, b'b', b's') for i in range(3)], 7)\n"
        "box.delete([first, first + 1, first + 2])\n"
        "print(first, flush=True)\n"
        "os._exit(9)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ}, check=False)
    assert out.returncode == 9, out.stderr
    used = int(out.stdout)
    box = Outbox(path)
    assert box.depth == 0
    nxt = box.reserve(1)
    assert nxt > used + 2
    assert nxt <= used + 3 + SEQ_BLOCK
    assert box.last_frame_counter() == 7


def test_reading_dedup_identity(tmp_path: Path) -> None:
    pipe, box = make_pipeline(tmp_path)
    pipe.process([frame(1), frame(2)])
    ids = {(r.device, r.seq) for r in (Reading.from_canonical(b) for _, b, _ in box.peek(-1, 9))}
    assert ids == {("dev-test", 0), ("dev-test", 1)}


class RecordingScorer:
    def __init__(self) -> None:
        self.seen: list[Sequence[int]] = []

    def score(self, rows: Sequence[Sequence[int]]) -> list[int]:
        self.seen += rows
        return [7] * len(rows)


def test_the_model_only_sees_readings_that_get_signed(tmp_path: Path) -> None:
    """A verifier replays signed readings through the model: refused frames must not count."""
    box = Outbox(tmp_path / "outbox.db", max_readings=100)
    scorer = RecordingScorer()
    pipe = ReadingPipeline(device_id="dev-test", key=KEY, outbox=box,
                           scorer_for_kind=lambda _k: scorer, model_sha256=MODEL,
                           stats=AgentStats(), clock=lambda: 1_700_000_000.0)
    assert pipe.process([frame(i, 1000 + i) for i in range(130)]) == 100
    assert len(scorer.seen) == 100
    signed = [Reading.from_canonical(b) for _, b, _ in box.peek(-1, 1000)]
    assert [list(row) for row in scorer.seen] == [[v for _, v in r.values] for r in signed]


def test_scored_since_seq_marks_where_each_agent_process_started(tmp_path: Path) -> None:
    pipe, box = make_pipeline(tmp_path)
    pipe.process([frame(1), frame(2)])
    pipe.process([frame(3)])
    first = [Reading.from_canonical(b) for _, b, _ in box.peek(-1, 100)]
    assert {r.scored_since_seq for r in first} == {first[0].seq}
    box.close()
    pipe2, box2 = make_pipeline(tmp_path)  # the agent restarted: the model state is new
    pipe2.process([frame(4)])
    after = Reading.from_canonical(box2.peek(first[-1].seq, 1)[0][1])
    assert after.scored_since_seq == after.seq > first[-1].seq
