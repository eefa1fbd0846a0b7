"""The durable outbox: signed readings wait here until the broker acknowledged them.

SQLite in WAL mode with ``synchronous=FULL``, so a committed reading survives a power cut (an
SD card can lose the last writes otherwise). A reading is committed before it is handed to MQTT
and deleted only after its PUBACK; the backlog drains oldest first.

Sequence numbers are reserved in blocks: the high-water mark of reserved numbers is committed
before any of them is used, so after a crash the agent resumes above every number it may have
signed with. Numbers reserved but never used become gaps (which validators record), never reuse.

Size cap: ``max_readings``. When the outbox is full the agent refuses new readings *before*
signing them (so no sequence number is consumed) and counts them as ``outbox_full``; the
readings already stored, the oldest evidence, are never evicted. See docs/edge_agent.md.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from senken_core.errors import SenkenError

__all__ = ["Outbox", "OutboxError"]

SEQ_BLOCK = 4096
_INSERT_ROWS = 256  # rows per INSERT statement (768 parameters; SQLite allows 32766)


@functools.lru_cache(maxsize=16)
def _insert_sql(n: int) -> str:
    return "INSERT INTO outbox(seq, body, sig) VALUES " + ",".join(["(?, ?, ?)"] * n)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, sig BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(SenkenError):
    """The outbox database cannot be opened or written."""


class Outbox:
    """Thread-safe durable queue of signed readings keyed by sequence number.

    One writer thread (the serial pipeline) and one reader/deleter thread (the publisher) may
    use it at once; each call takes a short lock around its own connection.
    """

    def __init__(self, path: Path, max_readings: int = 1_000_000) -> None:
        self.path = path
        self.max_readings = max_readings
        self._lock = threading.Lock()  # the connections
        self._seq_lock = threading.Lock()  # the sequence counter (taken before _lock)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
            # Deletes go through a connection that does not fsync: a delete lost in a power
            # cut only brings back acknowledged readings, which are sent again (duplicates,
            # which consumers drop), never a loss. Inserts keep synchronous=FULL.
            self._deleter = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._deleter.execute("PRAGMA synchronous=NORMAL")
            self._deleter.execute("PRAGMA busy_timeout=10000")
            self._depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            max_seq = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
            reserved = self._meta("seq_reserved")
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {path}: {exc}; check the disk and the file") from exc
        # Resume above everything that may have been signed: reserved numbers, stored rows.
        self._next_seq = max(reserved or 0, (max_seq or -1) + 1)
        self._reserved = self._next_seq

    def _meta(self, key: str) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def close(self) -> None:
        with self._lock:
            self._deleter.close()
            self._db.close()

    @property
    def depth(self) -> int:
        """Readings stored and not yet acknowledged."""
        return self._depth

    def free_slots(self) -> int:
        return max(0, self.max_readings - self._depth)

    def last_frame_counter(self) -> int | None:
        """The firmware frame counter of the last stored reading (survives restarts)."""
        with self._lock:
            return self._meta("last_frame_counter")

    def reserve(self, n: int) -> int:
        """Reserve ``n`` consecutive sequence numbers and return the first.

        The reservation is durable before this returns: a number returned here is never
        returned again, by this process or any later one on the same outbox.
        """
        # Its own lock: the counter must not wait for a commit (append holds ``_lock`` through
        # its fsync); the database is touched only once per SEQ_BLOCK numbers.
        with self._seq_lock:
            first = self._next_seq
            if first + n > self._reserved:
                reserved = first + n + SEQ_BLOCK
                with self._lock:
                    try:
                        self._db.execute(
                            "INSERT INTO meta(key, value) VALUES('seq_reserved', ?) "
                            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            (reserved,),
                        )
                    except sqlite3.Error as exc:
                        raise OutboxError(f"outbox {self.path}: cannot reserve: {exc}") from exc
                self._reserved = reserved
            self._next_seq = first + n
            return first

    def append(
        self, rows: Sequence[tuple[int, bytes, bytes]], last_frame_counter: int | None
    ) -> None:
        """Commit ``(seq, body, signature)`` rows durably in one transaction."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                # One multi-row INSERT per chunk instead of executemany: sqlite3 gives up the GIL
                # around every statement step, and on a busy two-thread agent each step then
                # waits to get it back (bench/README.md); one step per chunk waits once.
                for start in range(0, len(rows), _INSERT_ROWS):
                    chunk = rows[start : start + _INSERT_ROWS]
                    self._db.execute(_insert_sql(len(chunk)), [v for row in chunk for v in row])
                if last_frame_counter is not None:
                    self._db.execute(
                        "INSERT INTO meta(key, value) VALUES('last_frame_counter', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (last_frame_counter,),
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise OutboxError(f"outbox {self.path}: cannot store readings: {exc}") from exc
            self._depth += len(rows)

    def peek(self, after_seq: int, limit: int) -> list[tuple[int, bytes, bytes]]:
        """Up to ``limit`` stored rows with ``seq > after_seq``, oldest first."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, body, sig FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()

    def delete(self, seqs: Sequence[int]) -> None:
        """Forget acknowledged rows (idempotent; not fsynced, see above)."""
        with self._lock:
            db = self._deleter
            try:
                db.execute("BEGIN IMMEDIATE")
                before = db.total_changes
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
                removed = db.total_changes - before
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise OutboxError(f"outbox {self.path}: cannot delete: {exc}") from exc
            self._depth -= removed

    def check(self) -> list[str]:
        """Health problems found (empty when healthy): integrity, journal mode."""
        with self._lock:
            problems = []
            result = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                problems.append(f"integrity check failed: {result}")
            mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                problems.append(f"journal mode is {mode}, expected wal")
            return problems
