"""Read-only queries behind the API: attestations, proofs, telemetry, project totals.

Every answer is plain JSON-ready data, bytes as lower-case hex. Inclusion proofs come from a
:class:`~senken_core.merkle.MerkleTree` built over the window's stored reading bodies, checked
against the attested root before any proof is served, and kept in a small LRU cache (one tree
serves every reading of its window).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from sqlalchemy import func, select

from ledger.store import LedgerStore, StoreError
from ledger.tables import attestation_table, log_table, reading_table
from senken_core.evidence import CertifiedWindow
from senken_core.merkle import MerkleTree

__all__ = ["LedgerQueries"]

_ATTESTATION_FIELDS = ("project", "device", "window_start", "window_seconds", "methodology",
                       "methodology_version", "readings_accepted", "readings_rejected",
                       "quantity", "co2e_mg")


def _attestation_json(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": bytes(row.id).hex()}
    out.update({name: getattr(row, name) for name in _ATTESTATION_FIELDS})
    out.update(readings_root=bytes(row.readings_root).hex(),
               model_hash=bytes(row.model_hash).hex(), signers=json.loads(row.signers),
               log_index=row.log_index, appended_at_ms=row.appended_at_ms)
    return out


class LedgerQueries:
    """Queries over a :class:`LedgerStore`. Thread-safe."""

    def __init__(self, store: LedgerStore, tree_cache: int = 32) -> None:
        self.store = store
        self._trees: OrderedDict[bytes, MerkleTree] = OrderedDict()
        self._tree_cache = tree_cache
        self._lock = threading.Lock()

    def attestations(self, *, project: str | None = None, device: str | None = None,
                     since: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Logged attestations in log order, filtered by project, device and window start
        (``since``, Unix seconds, inclusive)."""
        query = select(attestation_table)
        if project is not None:
            query = query.where(attestation_table.c.project == project)
        if device is not None:
            query = query.where(attestation_table.c.device == device)
        if since is not None:
            query = query.where(attestation_table.c.window_start >= since)
        with self.store.connection() as conn:
            rows = conn.execute(query.order_by(attestation_table.c.log_index).limit(limit)).all()
        return [_attestation_json(r) for r in rows]

    def attestation(self, attestation_id: bytes) -> dict[str, Any] | None:
        """One attestation with its certificate (signatures, signers) and its log entry."""
        with self.store.connection() as conn:
            row = conn.execute(select(attestation_table)
                               .where(attestation_table.c.id == attestation_id)).first()
            if row is None:
                return None
            log = log_table.c
            entry = conn.execute(select(log["index"], log.prev_hash, log.entry_hash, log.evidence)
                                 .where(log.attestation_id == attestation_id)).one()
        window = CertifiedWindow.from_wire(bytes(entry.evidence))
        out = _attestation_json(row)
        out["certificate"] = {"signatures": [s.hex() for s in window.certificate.signatures],
                              "signers": out["signers"]}
        out["log_entry"] = {"index": entry.index, "prev_hash": bytes(entry.prev_hash).hex(),
                            "entry_hash": bytes(entry.entry_hash).hex()}
        out["boundary_reading"] = window.boundary is not None
        return out

    def proof(self, device: str, seq: int) -> dict[str, Any] | None:
        """The signed reading ``device#seq``, its window and its RFC 6962 audit path, or None
        if no logged attestation counts it."""
        with self.store.connection() as conn:
            row = conn.execute(select(reading_table).where(reading_table.c.device == device,
                                                        reading_table.c.seq == seq)).first()
            if row is None:
                return None
            a = attestation_table.c
            att = conn.execute(select(a.readings_root, a.readings_accepted, a.log_index)
                               .where(a.id == row.attestation_id)).one()
        att_id = bytes(row.attestation_id)
        tree = self._tree(att_id, bytes(att.readings_root))
        return {
            "device": device, "seq": seq, "attestation_id": att_id.hex(),
            "log_index": att.log_index, "leaf_index": row.leaf_index,
            "tree_size": att.readings_accepted, "readings_root": bytes(att.readings_root).hex(),
            "body": bytes(row.body).hex(), "signature": bytes(row.signature).hex(),
            "proof": tree.proof(row.leaf_index).to_dict(),
        }

    def _tree(self, attestation_id: bytes, root: bytes) -> MerkleTree:
        with self._lock:
            tree = self._trees.get(attestation_id)
            if tree is not None:
                self._trees.move_to_end(attestation_id)
                return tree
        with self.store.connection() as conn:
            bodies = conn.execute(select(reading_table.c.body)
                                  .where(reading_table.c.attestation_id == attestation_id)
                                  .order_by(reading_table.c.leaf_index)).scalars().all()
        tree = MerkleTree(bytes(b) for b in bodies)
        if tree.root != root:  # the rows were changed behind the log's back
            raise StoreError(f"the stored readings of {attestation_id.hex()} do not give the "
                             "attested root; run `senken ledger verify`")
        with self._lock:
            self._trees[attestation_id] = tree
            while len(self._trees) > self._tree_cache:
                self._trees.popitem(last=False)
        return tree

    def telemetry(self, device: str, *, since_ms: int | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
        """The device's most recent ``limit`` counted readings (read at or after
        ``since_ms``), oldest first."""
        r = reading_table.c
        query = select(r.seq, r.ts_ms, r.kind, r["values"], r.anomaly_ppm, r.attestation_id) \
            .where(r.device == device)
        if since_ms is not None:
            query = query.where(r.ts_ms >= since_ms)
        with self.store.connection() as conn:
            rows = conn.execute(query.order_by(r.ts_ms.desc(), r.seq.desc()).limit(limit)).all()
        return [{"seq": r.seq, "ts_ms": r.ts_ms, "kind": r.kind, "values": json.loads(r.values),
                 "anomaly_ppm": r.anomaly_ppm, "attestation_id": bytes(r.attestation_id).hex()}
                for r in reversed(rows)]

    def project_telemetry(self, project: str, *, since_ms: int | None = None,
                          limit: int = 100) -> list[dict[str, Any]]:
        """The project's most recent ``limit`` counted readings over all its devices (read at
        or after ``since_ms``), oldest first, each with its device."""
        r, a = reading_table.c, attestation_table.c
        query = select(r.device, r.seq, r.ts_ms, r.kind, r["values"], r.anomaly_ppm,
                       r.attestation_id).join(attestation_table,
                                              a.id == r.attestation_id).where(a.project == project)
        if since_ms is not None:
            query = query.where(r.ts_ms >= since_ms)
        with self.store.connection() as conn:
            rows = conn.execute(query.order_by(r.ts_ms.desc(), r.device, r.seq.desc())
                                .limit(limit)).all()
        return [{"device": r.device, "seq": r.seq, "ts_ms": r.ts_ms, "kind": r.kind,
                 "values": json.loads(r.values), "anomaly_ppm": r.anomaly_ppm,
                 "attestation_id": bytes(r.attestation_id).hex()} for r in reversed(rows)]

    def project_summary(self, project: str) -> dict[str, Any]:
        """Totals over the project's logged attestations (zeros if none)."""
        a = attestation_table.c
        with self.store.connection() as conn:
            row = conn.execute(select(func.count(), func.sum(a.readings_accepted),
                                      func.sum(a.readings_rejected), func.sum(a.quantity),
                                      func.sum(a.co2e_mg), func.min(a.window_start),
                                      func.max(a.window_start + a.window_seconds),
                                      func.count(func.distinct(a.device)))
                               .where(a.project == project)).one()
        count, accepted, rejected, quantity, co2e, first, end, devices = row
        return {"project": project, "attestations": int(count), "devices": int(devices),
                "readings": int(accepted or 0), "readings_rejected": int(rejected or 0),
                "quantity": int(quantity or 0), "co2e_mg": int(co2e or 0),
                "tco2e": int(co2e or 0) / 1e9,
                "first_window_start": None if first is None else int(first),
                "last_window_end": None if end is None else int(end)}
