"""A pseudo-terminal that looks like a USB serial adapter to a reader.

``os.openpty()`` gives a master (our end, the "firmware's UART TX") and a slave
(``/dev/pts/N``, what a reader opens with ``serial.Serial(path, 115200)``). The slave is put in
raw mode (no echo, no CR/LF translation; the setting stays while the master is open, across
readers opening and closing it) and then closed on our side, so that the master reports
``POLLHUP`` exactly when no reader has the port open: :meth:`PtyPort.reader_attached`.

The master is non-blocking:

* writes never block forever: :meth:`PtyPort.write` waits for room at most until a deadline
  and then drops the rest, like a UART whose receiver stopped reading;
* bytes a reader writes to the port are read and discarded (the firmware has no input).

An optional ``link`` is a symlink to the slave (like ``/dev/serial/by-id/usb-...``); it is
(re)pointed atomically on open and removed on close, as udev does on plug/unplug.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import termios
import time
import tty
from pathlib import Path

__all__ = ["PtyPort"]


class PtyPort:
    """One plug-in of a simulated USB serial adapter; :meth:`open` again after :meth:`close`."""

    def __init__(self, link: Path | None = None) -> None:
        self.link = Path(link) if link is not None else None
        self.master: int | None = None
        self.generation = 0  # +1 per open (plug-in)
        self.path: str = ""

    @property
    def is_open(self) -> bool:
        return self.master is not None

    def open(self) -> str:
        """Create a new pty (and point the link at it); returns the slave path."""
        if self.master is not None:
            return self.path
        master, slave = os.openpty()
        try:
            tty.setraw(slave, termios.TCSANOW)
            attrs = termios.tcgetattr(slave)
            attrs[4] = attrs[5] = termios.B115200  # ispeed, ospeed: cosmetic on a pty
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            flags = fcntl.fcntl(master, fcntl.F_GETFL)
            fcntl.fcntl(master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            path = os.ttyname(slave)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        os.close(slave)  # see the module docstring: POLLHUP then means "no reader"
        self.master, self.path = master, path
        self.generation += 1
        if self.link is not None:
            self._point_link(path)
        return path

    def _point_link(self, target: str) -> None:
        assert self.link is not None
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, self.link)

    def close(self) -> None:
        """Unplug: remove the link, close both ends (a reader then gets EOF/an error)."""
        if self.link is not None and self.link.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(self.link) == self.path:
                    self.link.unlink()
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.close(self.master)
        self.master = None

    def reader_attached(self) -> bool:
        """Whether some process has the slave (the port) open."""
        if self.master is None:
            return False
        poller = select.poll()
        poller.register(self.master, select.POLLHUP)
        try:
            events = poller.poll(0)
        except OSError:
            return False
        return not any(revents & (select.POLLHUP | select.POLLNVAL) for _, revents in events)

    def drain_input(self) -> None:
        """Read and discard whatever a reader wrote to the port."""
        if self.master is None:
            return
        with contextlib.suppress(OSError):
            while os.read(self.master, 4096):
                pass

    def write(self, data: bytes, deadline: float) -> int:
        """Write ``data``, waiting for room until ``deadline`` (time.monotonic()).

        Returns the number of bytes written; fewer than ``len(data)`` means the rest was dropped
        (buffer full: nobody reading) or the port was closed meanwhile.
        """
        master = self.master
        if master is None:
            return 0
        done = 0
        view = memoryview(data)
        while done < len(data):
            try:
                done += os.write(master, view[done:])
                continue
            except BlockingIOError:
                pass
            except OSError:
                return done
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return done
            try:
                select.select([], [master], [], min(remaining, 0.05))
            except (OSError, ValueError):
                return done
            if self.master != master:
                return done
        return done
