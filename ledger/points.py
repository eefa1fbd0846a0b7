"""The log as a source of time-series points, for the exporter in ``ledger/timeseries.py``.

The cursor is the next log index to export: ``points_after(cursor, limit)`` returns the
line-protocol lines of whole log entries from ``cursor`` on (each reading of the window, then
its attestation), as many entries as fit in ``limit`` lines (at least one, whatever its size),
and the cursor after them. Lines are built from the stored rows when asked, so an exporter
switched on later exports the whole history, and the cursor is kept in the ledger database
(``ledger_ts_cursor``) so it survives restarts. A re-export after a crash writes the same
points again (same series and timestamps): the store overwrites them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from ledger.store import LedgerStore
from ledger.tables import attestation_table, reading_table
from senken_core.attestation import Attestation
from senken_core.reading import Reading

__all__ = ["LedgerPointSource"]

log = logging.getLogger(__name__)

ReadingLine = Callable[[Reading, str, bytes], str]  # (reading, project, attestation id)
AttestationLine = Callable[[Attestation, int], str]


class LedgerPointSource:
    """The ``PointSource`` the exporter reads (ledger/timeseries.py). ``reading_line`` and
    ``attestation_line`` default to that module's functions (imported when first needed)."""

    def __init__(self, store: LedgerStore, *, reading_line: ReadingLine | None = None,
                 attestation_line: AttestationLine | None = None) -> None:
        self.store = store
        self._reading_line = reading_line
        self._attestation_line = attestation_line

    def _lines(self) -> tuple[ReadingLine, AttestationLine]:
        if self._reading_line is None or self._attestation_line is None:
            from ledger import timeseries

            self._reading_line = self._reading_line or timeseries.reading_line
            self._attestation_line = self._attestation_line or timeseries.attestation_line
        return self._reading_line, self._attestation_line

    def points_after(self, cursor: int, limit: int) -> tuple[list[str], int]:
        """Lines of the log entries from index ``cursor`` on, up to ``limit`` lines (but at
        least one whole entry), and the next cursor. ``([], cursor)`` when caught up."""
        reading_line, attestation_line = self._lines()
        lines: list[str] = []
        with self.store.connection() as conn:
            a = attestation_table.c
            atts = conn.execute(select(attestation_table).where(a.log_index >= cursor)
                                .order_by(a.log_index).limit(max(limit, 1))).all()
            for row in atts:
                if row.log_index != cursor:  # never skip an index (a gap is a damaged log)
                    break
                if lines and len(lines) + row.readings_accepted + 1 > limit:
                    break
                att = Attestation(
                    project=row.project, device=row.device, window_start=row.window_start,
                    window_seconds=row.window_seconds, methodology=row.methodology,
                    methodology_version=row.methodology_version,
                    readings_accepted=row.readings_accepted,
                    readings_rejected=row.readings_rejected, quantity=row.quantity,
                    co2e_mg=row.co2e_mg, readings_root=bytes(row.readings_root),
                    model_hash=bytes(row.model_hash))
                att_id = bytes(row.id)
                bodies = conn.execute(select(reading_table.c.body)
                                      .where(reading_table.c.attestation_id == att_id)
                                      .order_by(reading_table.c.leaf_index)).scalars()
                for body in bodies:
                    reading = Reading.from_canonical(bytes(body))
                    _add(lines, reading_line, reading, row.project, att_id)
                _add(lines, attestation_line, att, row.appended_at_ms)
                cursor += 1
        return lines, cursor

    def load_cursor(self) -> int:
        """The next log index to export (0 before the first export)."""
        return self.store.load_cursor()

    def save_cursor(self, cursor: int) -> None:
        self.store.save_cursor(cursor)


def _add(lines: list[str], build: Callable[..., str], *args: Any) -> None:
    """Append one line; a point the line protocol cannot carry (a value beyond int64) is
    logged and skipped rather than stopping the export there forever (the ledger keeps it)."""
    try:
        lines.append(build(*args))
    except ValueError as exc:
        log.warning("time-series point skipped: %s", exc)
