"""The central ledger: certified windows in a hash-chained, append-only log (docs/ledger.md).

Pure parts: :mod:`ledger.chain` (the hash rule), :mod:`ledger.params`, :mod:`ledger.offline`
(a buyer's check); the core :class:`Ledger`; adapters: :class:`LedgerStore` (SQLModel /
SQLAlchemy), ``ledger.mqtt`` (aiomqtt), ``ledger.api`` (FastAPI), ``ledger.timeseries``
(influxdb-client); the composition root ``ledger.app``. Importing this package creates no
engine, client or settings object.
"""

from ledger.chain import GENESIS_HASH, entry_hash
from ledger.offline import CheckedWindow, check_evidence
from ledger.service import Ledger, Outcome
from ledger.store import AppendRefused, AppendResult, LedgerStore, LogReport, StoreError

__all__ = [
    "GENESIS_HASH",
    "AppendRefused",
    "AppendResult",
    "CheckedWindow",
    "Ledger",
    "LedgerStore",
    "LogReport",
    "Outcome",
    "StoreError",
    "check_evidence",
    "entry_hash",
]
