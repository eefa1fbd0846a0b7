"""How the serial source cuts what it reads into batches, on a real pseudo-terminal.

A burst becomes full batches (one model call and one commit each); a port streaming frames back
to back, never idle, still hands its lines on within MAX_BATCH_WAIT_S instead of holding them
until a batch is full.
"""

from __future__ import annotations

import os
import termios
import threading
import time
import tty
from collections.abc import Iterator, Sequence

import pytest

from edge_agent.serial_source import MAX_BATCH_WAIT_S, SerialSource
from edge_agent.stats import AgentStats

pytestmark = pytest.mark.integration


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)
    path = os.ttyname(slave)
    yield master, path
    os.close(master)
    os.close(slave)


class Recorder:
    def __init__(self, want: int) -> None:
        self.want = want
        self.batches: list[tuple[float, int]] = []
        self.done = threading.Event()

    def __call__(self, lines: Sequence[bytes]) -> None:
        self.batches.append((time.monotonic(), len(lines)))
        if sum(n for _, n in self.batches) >= self.want:
            self.done.set()


def run_source(path: str, recorder: Recorder) -> tuple[SerialSource, threading.Thread]:
    stop = threading.Event()
    source = SerialSource(path, 115200, recorder, AgentStats(), stop)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    assert source.opened.wait(10)
    return source, thread


def test_a_burst_becomes_full_batches(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    recorder = Recorder(2048)
    source, thread = run_source(path, recorder)
    line = b"$SK1,1,2,elec_meter,energy_export_wh=1,power_w=2,voltage_dv=3*00000000\r\n"
    data = line * 2048
    for start in range(0, len(data), 4096):  # as a fast UART delivers it: a few KB at a time
        os.write(master, data[start : start + 4096])
    assert recorder.done.wait(20)
    source.stop.set()
    thread.join(5)
    sizes = [n for _, n in recorder.batches]
    assert sum(sizes) == 2048 and max(sizes) == 512
    assert len(sizes) <= 8  # full batches (4), give or take a pause of the writer; not 40+


def test_a_port_that_never_idles_still_hands_lines_on(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    recorder = Recorder(300)
    source, thread = run_source(path, recorder)
    line = b"$SK1,1,2,elec_meter,energy_export_wh=1,power_w=2,voltage_dv=3*00000000\r\n"
    stop_writing = threading.Event()

    def stream() -> None:  # back-to-back frames, a new one every 0.5 ms: never idle for 2 ms
        while not stop_writing.is_set():
            os.write(master, line)
            stop_writing.wait(0.0005)

    writer = threading.Thread(target=stream, daemon=True)
    start = time.monotonic()
    writer.start()
    assert recorder.done.wait(20)
    stop_writing.set()
    writer.join(5)
    source.stop.set()
    thread.join(5)
    first_at, first_size = recorder.batches[0]
    assert first_size < 512  # not held until a batch is full
    assert first_at - start < MAX_BATCH_WAIT_S + 0.5
