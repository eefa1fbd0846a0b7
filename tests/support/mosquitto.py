"""A real Mosquitto started by a test, on a free port, with its own config and data dir."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from tests.support.tls import TlsFiles
from tests.support.waiting import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """``start()``/``stop()`` as often as a test likes; the port and the data survive."""

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None,
                 tls: TlsFiles | None = None) -> None:
        """``tls``: the main ``port`` speaks TLS, and ``plain_port`` plain MQTT beside it."""
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.plain_port = free_port() if tls else self.port
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        listeners = f"listener {self.port} 127.0.0.1\n"
        if tls:
            for src in (tls.ca, tls.cert, tls.key):
                (self.dir / src.name).write_bytes(src.read_bytes())
            listeners += (f"cafile {self.dir / tls.ca.name}\ncertfile {self.dir / tls.cert.name}\n"
                          f"keyfile {self.dir / tls.key.name}\n"
                          f"listener {self.plain_port} 127.0.0.1\n")
        self.conf.write_text(
            listeners +
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n" + extra_conf
        )
        if os.geteuid() == 0 and shutil.which("mosquitto"):
            # Mosquitto drops root for user mosquitto, which must reach its files: let it
            # traverse pytest's 0700 temp directories, and own its own directory.
            for parent in self.dir.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, (mode & 0o7777) | 0o011)
            user = pwd.getpwnam("mosquitto")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, 10,
                   f"mosquitto on port {self.port}")
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"mosquitto exited: {err} {log}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM saves its persistence file, as a service stop does)."""
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        wait_until(lambda: not port_open(self.port), 10, "mosquitto to release its port")
