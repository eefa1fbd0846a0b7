"""A simulated sensor: firmware that writes SK1 frames to a pseudo-terminal on a thread.

Frame slots: the writer runs one *slot* every ``1 / rate_hz`` seconds (``rate_hz=math.inf``:
back to back). In each slot the signal generator is advanced once (so values do not depend on
faults), scheduled faults start, and normally one frame is written with the current counter,
which then advances (mod 2^32). Faults (:mod:`firmware_sim.faults`) may alter, corrupt,
silence or lose the slot's frame.

What a frame's fate is, and where it is counted:

* written completely while a reader has the port open: ``frames_written`` (and, if valid,
  appended to ``sent``);
* no reader has the port open (nobody listening on the UART): not written at all,
  ``frames_no_reader``. A reader that has just opened the port is given ``attach_grace``
  seconds (default 20 ms) before frames are written to it, because pyserial flushes the input
  buffer right after opening; frames in that window are also ``frames_no_reader``;
* the reader is there but not reading and the pty buffer (about 16 KiB, some 170 frames) is
  full: the write waits for room at most until the next slot is due (at most 0.25 s;
  :meth:`burst` waits up to ``write_timeout``) and then drops the rest of the frame, as a UART
  drops bytes: ``frames_dropped``; a dropped frame may leave a stub at the end of the buffer,
  which the next frame's ``$`` resynchronises;
* unplugged, or in a lossy ``dropout`` fault: ``frames_lost``.

So ``sent`` holds exactly the valid frames that were completely written into the pty while a
reader had it open: a reader that keeps reading sees every frame of ``sent`` from the first one
it saw, in order.
"""

from __future__ import annotations

import math
import random
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from firmware_sim.faults import Fault, check_faults
from firmware_sim.pty_port import PtyPort
from firmware_sim.replay import Replayer, ReplaySpec
from firmware_sim.signals import clamp, make_generator
from senken_core.frame import Frame, encode_frame
from senken_core.sensors import SENSOR_KINDS

__all__ = ["SimulatedDevice"]

_U32 = 2**32
_GARBAGE_BYTES = bytes(b for b in range(256) if b not in b"$\r\n")


@dataclass
class _Active:
    fault: Fault
    start: int
    end: int  # first slot no longer affected


@dataclass
class _Prepared:
    """One slot run by :meth:`SimulatedDevice.prepare_burst`: garbage lines, then the frame."""

    frame: Frame
    bad: bool
    lines: list[bytes]


class SimulatedDevice:
    """One simulated sensor on its own pty; a context manager (enter starts, exit stops).

    ``kind``: a sensor kind of :mod:`senken_core.sensors`. ``rate_hz``: frames per second
    (``math.inf`` for back-to-back). ``seed``: determinism of values and garbage bytes.
    ``link``: a stable symlink to the pty (re-pointed on replug), what a reader should open.
    ``faults``: scheduled faults (only those that apply to ``kind`` are kept). ``replay``: a
    recorded series replacing one channel. ``clock``: the device's real-time clock in Unix
    seconds (``device_ms`` and the daily curves follow it). ``max_frames``: the device goes
    silent (port still open) after that many frame slots. ``counter_start``: the first frame
    counter (to test wrap-around). ``write_timeout``: how long :meth:`burst` waits for room.
    ``attach_grace``: how long a newly opened reader is left alone (see the module docstring).

    The pty exists from construction on, so a reader can open the port before :meth:`start`.
    """

    def __init__(
        self,
        kind: str,
        rate_hz: float = 1.0,
        *,
        seed: int = 0,
        link: Path | None = None,
        faults: Sequence[Fault] = (),
        replay: ReplaySpec | None = None,
        clock: Callable[[], float] = time.time,
        max_frames: int | None = None,
        counter_start: int = 0,
        write_timeout: float = 2.0,
        attach_grace: float = 0.02,
    ) -> None:
        if kind not in SENSOR_KINDS:
            raise ValueError(_unknown_kind(kind))
        if isinstance(rate_hz, bool) or not isinstance(rate_hz, int | float) or not (rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number, not {rate_hz!r}")
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, not {max_frames}")
        if not 0 <= counter_start < _U32:
            raise ValueError(f"counter_start must be in 0..2^32-1, not {counter_start}")
        self.kind = kind
        self.rate_hz = float(rate_hz)
        self.seed = seed
        self.link = Path(link) if link is not None else None
        self.clock = clock
        self.max_frames = max_frames
        self.write_timeout = write_timeout
        self.attach_grace = attach_grace
        self.faults = check_faults(list(faults), kind)
        self._schedule: dict[int, list[Fault]] = {}
        for fault in self.faults:
            self._schedule.setdefault(fault.at_frame, []).append(fault)
        self.replay = replay
        self._replayer = Replayer.load(replay, kind) if replay is not None else None
        self._channels = {c.name: c for c in SENSOR_KINDS[kind].channels}
        self._generator = make_generator(kind, seed)
        self._garbage_rng = random.Random(f"garbage:{seed}")

        self.sent: list[Frame] = []
        self.frames_written = 0
        self.frames_dropped = 0
        self.frames_lost = 0
        self.frames_no_reader = 0
        self._reader_seen = 0  # port generation in which the current reader was seen
        self.slots = 0
        self.counter = counter_start
        self.replugs = 0
        self._clock_offset_ms = 0
        self._prev_t: float | None = None
        self._last_values: dict[str, int] | None = None
        self._active: list[_Active] = []
        self._stuck: dict[int, dict[str, int]] = {}
        self._replug_at: int | None = None

        self._lock = threading.RLock()  # one slot at a time; port open/close
        self._cond = threading.Condition()  # sent / state changes, for waiters
        self._ctl = threading.Condition()  # pause / resume / stop for the writer thread
        self._paused = False
        self._stopping = False
        self._resync = False
        self._prepared: list[_Prepared] = []
        self._thread: threading.Thread | None = None
        self._port = PtyPort(self.link)
        self._port.open()
        # a device dropped without stop() still closes its pty and removes its link
        self._finalizer = weakref.finalize(self, self._port.close)

    # -- properties ---------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The current pty slave path (a new one after each replug)."""
        return self._port.path

    @property
    def port_path(self) -> str:
        """What a reader opens: the link if one was given, else the pty path."""
        return str(self.link) if self.link is not None else self._port.path

    @property
    def plugged(self) -> bool:
        return self._port.is_open

    @property
    def reader_attached(self) -> bool:
        """Whether a reader has the port open right now."""
        return self._port.reader_attached()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def finished(self) -> bool:
        """True once ``max_frames`` slots have run."""
        return self.max_frames is not None and self.slots >= self.max_frames

    def __repr__(self) -> str:
        return (
            f"SimulatedDevice({self.kind!r}, rate_hz={self.rate_hz}, seed={self.seed}, "
            f"port={self.port_path!r}, slots={self.slots}, sent={len(self.sent)})"
        )

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> SimulatedDevice:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the writer thread (no-op if running)."""
        with self._ctl:
            if self._stopping:
                raise RuntimeError("a stopped SimulatedDevice cannot be restarted")
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"sim-{self.kind}-{self.seed}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the writer and unplug for good (the link is removed). Idempotent."""
        with self._ctl:
            self._stopping = True
            self._ctl.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            self._port.close()
        self._notify()

    close = stop

    def pause(self) -> None:
        """Stop emitting frames, keeping the port open; the counter does not advance."""
        with self._ctl:
            self._paused = True
            self._ctl.notify_all()
        with self._lock:  # returns once any slot in progress is finished
            pass

    def resume(self) -> None:
        """Continue emitting frames, the next one now."""
        with self._ctl:
            self._paused = False
            self._resync = True
            self._ctl.notify_all()

    def unplug(self) -> None:
        """Close the pty (reader gets an error/EOF) and remove the link; frames are lost."""
        with self._lock:
            self._replug_at = None
            self._port.close()
        self._notify()

    def replug(self) -> None:
        """Plug back in: a new pty (new :attr:`path`), the link re-pointed to it."""
        with self._lock:
            self._replug_at = None
            if not self._port.is_open:
                self._port.open()
                self.replugs += 1
        self._notify()

    # -- waiting ------------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_sent(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` valid frames were written; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.sent) >= n, timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (checked after every slot and plug change) holds."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_reader(self, timeout: float) -> bool:
        """Wait until a reader has the port open (checked every 10 ms: the kernel has no event
        for it). Handy before :meth:`start` when a test must not miss the first frames."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._port.reader_attached():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.01))
        return True

    def wait_slots(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` frame slots have run."""
        return self.wait_for(lambda: self.slots >= n, timeout)

    # -- emitting -----------------------------------------------------------------------------

    def burst(self, n: int) -> int:
        """Run ``n`` frame slots now, as fast as the reader takes them (in the caller's thread).

        Each write waits up to ``write_timeout`` for room. Returns the number of valid frames
        written. Stops early at ``max_frames``.
        """
        before = len(self.sent)
        for _ in range(n):
            with self._lock:
                if self.finished:
                    break
                self._slot(time.monotonic() + self.write_timeout)
        return len(self.sent) - before

    def prepare_burst(self, n: int) -> int:
        """Run ``n`` frame slots now, keeping their bytes in memory instead of writing them.

        The values, counters, device times and faults are those :meth:`burst` would produce;
        :meth:`send_prepared` then writes them. For benchmarks: the firmware's CPU is spent
        before the reader is measured, and sending costs the writer next to nothing, as a
        hardware UART costs the reader's CPU nothing. Returns the number of slots run (fewer
        at ``max_frames``). Raises ValueError if ``unplug`` faults are scheduled (a prepared
        burst has no port to pull out while it is prepared).
        """
        if any(f.fault == "unplug" for f in self.faults):
            raise ValueError("prepare_burst does not support unplug faults; use burst")
        done = 0
        with self._lock:
            for _ in range(n):
                if self.finished:
                    break
                self._slot(0.0, self._prepared)
                done += 1
        return done

    def send_prepared(self, chunk_bytes: int = 1 << 16) -> int:
        """Write every prepared slot's bytes to the port, ``chunk_bytes`` per write call.

        Each chunk waits up to ``write_timeout`` for room; what does not fit then is dropped,
        as in :meth:`burst`. Frames are counted as :meth:`burst` counts them (``sent``,
        ``frames_written``, ``frames_dropped``, ``frames_no_reader``, ``frames_lost``).
        Returns the number of valid frames written. The prepared slots are consumed.
        """
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, not {chunk_bytes}")
        with self._lock:
            prepared, self._prepared = self._prepared, []
            if not prepared:
                return 0
            if not self._port.is_open:
                self.frames_lost += len(prepared)
                return 0
            if not self._reader_ready():
                self.frames_no_reader += len(prepared)
                return 0
            self._port.drain_input()
            data = b"".join(line for p in prepared for line in p.lines)
            written = 0
            for start in range(0, len(data), chunk_bytes):
                piece = data[start : start + chunk_bytes]
                written += self._port.write(piece, time.monotonic() + self.write_timeout)
                if written < start + len(piece):
                    break
            before = len(self.sent)
            end = 0
            with self._cond:
                for p in prepared:
                    for line in p.lines[:-1]:  # garbage lines before the frame
                        end += len(line)
                        if end <= written:
                            self.frames_written += 1
                    end += len(p.lines[-1])
                    if end <= written:
                        self.frames_written += 1
                        if not p.bad:
                            self.sent.append(p.frame)
                    else:
                        self.frames_dropped += 1
                self._cond.notify_all()
            return len(self.sent) - before

    def _run(self) -> None:
        period = 0.0 if math.isinf(self.rate_hz) else 1.0 / self.rate_hz
        next_due = time.monotonic()
        while True:
            with self._ctl:
                self._ctl.wait_for(lambda: self._stopping or not self._paused)
                if self._stopping:
                    return
                if self._resync:
                    self._resync = False
                    next_due = time.monotonic()
                delay = next_due - time.monotonic()
                if delay > 0:
                    self._ctl.wait_for(lambda: self._stopping or self._paused, delay)
                    continue
            with self._lock:
                if self._paused or self._stopping:
                    continue  # paused while we waited for the lock: pause() has returned
                if self.finished:
                    break
                now = time.monotonic()
                if period == 0.0:
                    deadline = now + self.write_timeout
                else:
                    deadline = now + max(0.002, min(0.25, next_due + period - now))
                self._slot(deadline)
            next_due += period
            if time.monotonic() - next_due > 1.0:  # far behind: do not rush to catch up
                next_due = time.monotonic()
        self._notify()

    def _slot(self, deadline: float, prepare: list[_Prepared] | None = None) -> None:
        """One frame slot (call with ``self._lock`` held); waiters see it once it is done.

        With ``prepare``, the slot's bytes are appended there instead of being written.
        """
        slot = self.slots
        try:
            self._slot_body(slot, deadline, prepare)
        finally:
            with self._cond:
                self.slots = slot + 1
                self._cond.notify_all()

    def _slot_body(self, slot: int, deadline: float, prepare: list[_Prepared] | None) -> None:
        starting = self._schedule.get(slot, ())
        for fault in starting:
            frames = fault.frames if fault.frames is not None else 1
            self._active.append(_Active(fault, slot, slot + frames))
            if fault.fault == "stuck":
                self._stuck[id(fault)] = dict(self._last_values or {})
        self._active = [a for a in self._active if a.end > slot or a.fault.fault == "drift"]

        t = float(self.clock())
        dt = (
            (t - self._prev_t)
            if self._prev_t is not None
            else (0.0 if math.isinf(self.rate_hz) else 1.0 / self.rate_hz)
        )
        self._prev_t = t
        override = {}
        if self._replayer is not None:
            override[self._replayer.channel.name] = self._replayer.value(slot)
        values = dict(self._generator.values(t, dt, override))
        for fault in starting:  # stuck from the very first frame: stuck at its own values
            if fault.fault == "stuck" and not self._stuck[id(fault)]:
                self._stuck[id(fault)] = dict(values)
        self._apply_value_faults(slot, values)
        self._last_values = dict(values)  # what "stuck" repeats: never an out-of-range value
        bad = False
        for a in self._active:
            name = a.fault.channel
            if a.fault.fault == "out_of_range" and a.end > slot and name in values:
                values[name] = self._channels[name].maximum + 1
                bad = True

        for fault in starting:
            if fault.fault == "clock_jump":
                self._clock_offset_ms += fault.ms or 0
            elif fault.fault == "reboot":
                self.counter = 0
            elif fault.fault == "unplug":
                self._port.close()
                self._replug_at = slot + fault.frames if fault.frames else None
        if self._replug_at is not None and slot >= self._replug_at:
            self._replug_at = None
            if not self._port.is_open:
                self._port.open()
                self.replugs += 1

        dropout = [a.fault for a in self._active if a.fault.fault == "dropout" and a.end > slot]
        if dropout:
            if any(f.lost for f in dropout):
                self.counter = (self.counter + 1) % _U32
                self.frames_lost += 1
            return

        device_ms = max(0, int(t * 1000) + self._clock_offset_ms)
        frame = Frame(self.counter, device_ms, self.kind, tuple(values.items()))
        self.counter = (self.counter + 1) % _U32
        wire = encode_frame(frame)
        for fault in starting:
            if fault.fault == "checksum":
                bad = True
                star = wire.rindex(b"*")
                crc = int(wire[star + 1 : star + 9], 16) ^ 0xFFFFFFFF
                wire = wire[: star + 1] + f"{crc:08X}".encode() + b"\r\n"
            elif fault.fault == "truncated":
                bad = True
                keep = fault.keep if fault.keep is not None else len(wire) // 2
                wire = wire[: max(1, min(keep, len(wire) - 3))]
                if fault.line_end:
                    wire += b"\r\n"
        garbage = [f for f in starting if f.fault == "garbage"]

        if prepare is not None:
            lines = [self._garbage_line(fault) for fault in garbage]
            prepare.append(_Prepared(frame, bad, [*lines, wire]))
            return
        if not self._port.is_open:
            self.frames_lost += 1
            return
        if not self._reader_ready():
            self.frames_no_reader += 1
            return
        self._port.drain_input()
        for fault in garbage:
            line = self._garbage_line(fault)
            if self._port.write(line, deadline) == len(line):
                self.frames_written += 1
        written = self._port.write(wire, deadline)
        with self._cond:
            if written == len(wire):
                self.frames_written += 1
                if not bad:
                    self.sent.append(frame)
            else:
                self.frames_dropped += 1

    def _garbage_line(self, fault: Fault) -> bytes:
        length = fault.length or 32
        return bytes(self._garbage_rng.choices(_GARBAGE_BYTES, k=length)) + b"\r\n"

    def _reader_ready(self) -> bool:
        """A reader has the port open (and has had it open for ``attach_grace``)."""
        if not self._port.reader_attached():
            self._reader_seen = 0
            return False
        if self._reader_seen != self._port.generation:
            # pyserial flushes the input right after open(); let it finish before writing
            time.sleep(self.attach_grace)
            if not self._port.reader_attached():
                return False
            self._reader_seen = self._port.generation
        return True

    def _apply_value_faults(self, slot: int, values: dict[str, int]) -> None:
        """Apply spike, drift and stuck to ``values`` (the frame stays valid)."""
        for a in self._active:
            fault, name = a.fault, a.fault.channel
            if fault.fault == "drift" and name in values:
                frames = fault.frames or 1
                step = min(slot - a.start + 1, frames)
                shifted = values[name] + round((fault.offset or 0) * step / frames)
                values[name] = clamp(self._channels[name], shifted)
            if a.end <= slot:
                continue
            if fault.fault == "spike" and name in values:
                factor = fault.factor if fault.factor is not None else 1.0
                spiked = values[name] * factor + (fault.offset or 0)
                values[name] = clamp(self._channels[name], spiked)
            elif fault.fault == "stuck":
                frozen = self._stuck.get(id(fault), {})
                for channel in [name] if name is not None else list(values):
                    if channel in frozen:
                        values[channel] = frozen[channel]


def _unknown_kind(kind: str) -> str:
    return f"unknown sensor kind {kind!r}; known kinds: {', '.join(SENSOR_KINDS)}"
