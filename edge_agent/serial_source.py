"""Reads frames from the serial port and feeds the pipeline; survives unplug and replug.

Runs on a thread of its own (pyserial is blocking). When the port is missing or fails (a USB
adapter pulled out), it says so once, clearly, retries with capped backoff, and says when the
port is back. Lines longer than a frame are discarded as garbage, counted, and never grow the
buffer without bound.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Sequence

import serial

from edge_agent.stats import AgentStats
from senken_core.frame import MAX_FRAME_BYTES

__all__ = ["SerialSource", "describe_serial_error"]

log = logging.getLogger(__name__)
_MAX_LINES_PER_BATCH = 512
BURST_GAP_S = 0.002  # a dry port this long ends a batch
MAX_BATCH_WAIT_S = 0.05  # and no line waits longer than this for its batch to fill


def describe_serial_error(port: str, exc: BaseException) -> str:
    """A technician-facing sentence for a serial failure: what is wrong and what to do."""
    text = str(exc)
    err = getattr(exc, "errno", None)  # pyserial's SerialException carries the OS errno
    if err == errno.EACCES or "Permission denied" in text:
        return (f"serial port {port}: permission denied; add the agent's user to the dialout "
                "group (sudo usermod -aG dialout $USER) and log in again")
    if err == errno.ENOENT or "No such file" in text or not os.path.exists(port):
        return (f"serial port {port}: not present (unplugged?); check the cable and "
                "`ls /dev/serial/by-id/`; retrying")
    if err in (errno.EBUSY, errno.EAGAIN) or "busy" in text.lower() or "exclusively" in text:
        return f"serial port {port}: busy; another program holds it (check with `fuser {port}`)"
    return f"serial port {port}: {text or type(exc).__name__}; retrying"


class SerialSource:
    """Owns the port; calls ``handle(lines)`` with each batch of complete lines read."""

    def __init__(
        self,
        port: str,
        baudrate: int,
        handle: Callable[[Sequence[bytes]], object],
        stats: AgentStats,
        stop: threading.Event,
        *,
        read_timeout_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.handle = handle
        self.stats = stats
        self.stop = stop
        self.read_timeout_s = read_timeout_s
        self.max_backoff_s = max_backoff_s
        self.opened = threading.Event()

    def _open(self) -> serial.Serial | None:
        try:
            # exclusive: a second reader on the same port would steal bytes from frames.
            return serial.Serial(self.port, self.baudrate, timeout=self.read_timeout_s,
                                 exclusive=True)
        except (serial.SerialException, OSError) as exc:
            message = describe_serial_error(self.port, exc)
            if self.stats.serial_state != message:
                log.error("%s", message)
                self.stats.error(message)
            self.stats.serial_state = message
            return None

    def run(self) -> None:
        """Read until ``stop`` is set. Never raises for port trouble."""
        backoff = 0.2
        had_port = False
        while not self.stop.is_set():
            port = self._open()
            if port is None:
                self.opened.clear()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = 0.2
            log.info("serial port %s %s", self.port, "is back" if had_port else "opened")
            had_port = True
            self.stats.serial_state = "reading"
            self.opened.set()
            try:
                self._read(port)
            except (serial.SerialException, OSError) as exc:
                message = (f"serial port {self.port} disconnected (unplugged?): {exc}; "
                           "waiting for it to return")
                log.error("%s", message)
                self.stats.error(message)
                self.stats.serial_state = message
            finally:
                self.opened.clear()
                port.close()

    def _read(self, port: serial.Serial) -> None:
        buffer = b""
        lines: list[bytes] = []
        batch_started = 0.0
        while not self.stop.is_set():
            chunk = port.read(max(1, port.in_waiting))
            if chunk:
                buffer += chunk
                if b"\n" in buffer:
                    *complete, buffer = buffer.split(b"\n")
                    if not lines:
                        batch_started = time.monotonic()
                    lines += complete
                elif len(buffer) > MAX_FRAME_BYTES:
                    self.stats.frames_rejected["too_long"] += 1
                    log.warning("discarded %d bytes without a line end", len(buffer))
                    buffer = b""
            # Process everything already waiting as one batch (one model call, one commit);
            # keep reading while more is waiting and the batch is not full. When the port just
            # ran dry mid-burst (a backlog arriving faster than its buffer refills), wait up to
            # BURST_GAP_S for more rather than cut a small batch: each batch has fixed costs
            # (model invokes, one fsynced commit). A frame arriving alone waits that long, and
            # no line waits more than MAX_BATCH_WAIT_S (a UART streaming back-to-back frames
            # is never idle for BURST_GAP_S).
            if lines and len(lines) < _MAX_LINES_PER_BATCH and not port.in_waiting:
                left = batch_started + MAX_BATCH_WAIT_S - time.monotonic()
                if left > 0:
                    readable, _, _ = select.select([port.fileno()], [], [],
                                                   min(BURST_GAP_S, left))
                    if readable:
                        continue
            if len(lines) >= _MAX_LINES_PER_BATCH:
                # full batches now; a remainder waits for the rest of the burst
                full = len(lines) - len(lines) % _MAX_LINES_PER_BATCH
                for start in range(0, full, _MAX_LINES_PER_BATCH):
                    self.handle(lines[start : start + _MAX_LINES_PER_BATCH])
                lines = lines[full:]
            elif lines and not port.in_waiting:
                self.handle(lines)
                lines = []
