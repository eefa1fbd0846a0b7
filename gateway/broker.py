"""The Mosquitto the gateway manages: writes its password and ACL files (atomically) and makes
it reload them, by SIGHUP to the pid in its pid file or by a configured command.

Mosquitto 2 re-reads ``password_file`` and ``acl_file`` on SIGHUP, and drops connected clients
whose account is gone: a revoked device is disconnected and refused from the reload on.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import signal
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from gateway.broker_files import (
    BrokerAccount,
    BrokerLayout,
    render_acl,
    render_mosquitto_conf,
    render_password_file,
)
from gateway.ports import BrokerSync

__all__ = ["MosquittoBroker", "write_atomically"]

log = logging.getLogger(__name__)


def write_atomically(path: Path, text: str, mode: int = 0o640, owner: str | None = None,
                     group: str | None = None) -> None:
    """Replace ``path`` with ``text`` in one rename (readers see the old or the new file,
    never half of one), fsynced, with ``mode`` and, if given, ``owner``/``group``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner is not None or group is not None:
            uid = pwd.getpwnam(owner).pw_uid if owner else -1
            gid = grp.getgrnam(group).gr_gid if group else -1
            os.chown(tmp, uid, gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class MosquittoBroker:
    """:class:`gateway.ports.BrokerControl` for a Mosquitto on this host."""

    def __init__(self, layout: BrokerLayout, topic_prefix: str, conf_file: Path | None = None,
                 file_owner: str | None = None, file_group: str | None = None,
                 reload_command: Sequence[str] = ()) -> None:
        self.layout = layout
        self.topic_prefix = topic_prefix
        self.conf_file = conf_file
        self.file_owner = file_owner
        self.file_group = file_group
        self.reload_command = list(reload_command)
        self._lock = threading.Lock()

    def write_conf(self) -> Path | None:
        """Write the mosquitto.conf for the layout (if a path is configured)."""
        if self.conf_file is None:
            return None
        write_atomically(self.conf_file, render_mosquitto_conf(self.layout), 0o644,
                         self.file_owner, self.file_group)
        return self.conf_file

    def sync(self, accounts: Sequence[BrokerAccount]) -> BrokerSync:
        with self._lock:  # two syncs never interleave their writes and reloads
            try:
                passwords = render_password_file(accounts)
                acl = render_acl(accounts, self.topic_prefix)
                # 0640 and owned by the broker's user: the hashes are not for everyone
                write_atomically(self.layout.password_file, passwords, 0o640, self.file_owner,
                                 self.file_group)
                write_atomically(self.layout.acl_file, acl, 0o640, self.file_owner,
                                 self.file_group)
            except (OSError, KeyError, ValueError) as exc:
                log.error("cannot write the broker's files: %s", exc)
                return BrokerSync(False, False, f"cannot write the broker's files: {exc}")
            reloaded, message = self._reload()
            return BrokerSync(True, reloaded, message)

    def _reload(self) -> tuple[bool, str]:
        if self.reload_command:
            try:
                done = subprocess.run(self.reload_command, capture_output=True, text=True,
                                      timeout=30, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return False, f"reload command failed: {exc}"
            if done.returncode != 0:
                return False, (f"reload command exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[:200]}")
            return True, "reload command ran"
        pid_file = self.layout.pid_file
        if pid_file is None:
            return False, "no broker.pid_file or broker.reload_command configured"
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except FileNotFoundError:
            return False, f"broker not running ({pid_file} missing); it reads the files " \
                          "when it starts"
        except ValueError:
            return False, f"{pid_file} does not hold a process id"
        except ProcessLookupError:
            return False, f"broker not running (no process {pid}); it reads the files when " \
                          "it starts"
        except PermissionError:
            return False, f"not allowed to signal the broker (pid {pid}); run the gateway " \
                          "as the broker's user or configure broker.reload_command"
        return True, f"SIGHUP sent to pid {pid}"
