"""The log's hash chain (pure).

Entry ``i`` commits to everything before it::

    entry_hash(i) = SHA-256(prev_hash(i) || i as 8-byte big-endian || SHA-256(evidence(i)))
    prev_hash(0)  = 32 zero bytes;  prev_hash(i) = entry_hash(i - 1)

so changing, removing or reordering any entry changes every later hash, and the head hash (the
last entry's hash) names the whole log. Anyone holding the entries recomputes it
(docs/ledger.md, "Verifying the log").
"""

from __future__ import annotations

from hashlib import sha256

__all__ = ["GENESIS_HASH", "entry_hash"]

GENESIS_HASH = bytes(32)


def entry_hash(prev_hash: bytes, index: int, evidence: bytes) -> bytes:
    """The hash of entry ``index`` holding ``evidence`` after an entry hashing to
    ``prev_hash``. Raises ValueError for a hash that is not 32 bytes or a negative index."""
    if len(prev_hash) != 32:
        raise ValueError("prev_hash must be 32 bytes")
    if not 0 <= index < 2**64:
        raise ValueError("index must be 0 .. 2**64 - 1")
    return sha256(prev_hash + index.to_bytes(8, "big") + sha256(evidence).digest()).digest()
