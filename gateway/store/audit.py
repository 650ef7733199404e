"""The append-only, hash-chained audit log of PROTOCOL §8, in segments.

Records are chained as `gateway.store.chain` says; they are appended to the open segment (the store's
`audit` table), which is sealed into a file of its own once it is full, and the oldest sealed files are
retired as the retention says (`gateway.store.segments`). `verify` walks the whole chain that remains,
across every segment, and names the first record where it breaks and what is wrong there.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from gateway.store import segments
from gateway.store.chain import GENESIS, KINDS, canonical, chain_hash
from gateway.store.segments import Rotation, Segment
from gateway.store.verify import Verification, verify

__all__ = ["AuditLog", "Rotation", "Verification", "verify"]


def _last(conn: sqlite3.Connection) -> tuple[int, str]:
    """The last record's seq and hash: in the open segment, else the last sealed (or retired) one."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        row = conn.execute("SELECT last_seq, last_hash FROM audit_segments ORDER BY segment DESC LIMIT 1"
                           ).fetchone()
    return (row[0], row[1]) if row else (0, GENESIS)


class AuditLog:
    def __init__(self, conn: sqlite3.Connection, rotation: Rotation | None = None) -> None:
        self.conn = conn
        # no rotation in memory: a segment is a file beside the store's
        self.rotation = rotation if segments.segment_dir(conn) is not None else None
        self.seq, self.last_hash = _last(conn)

    def append(self, kind: str, at: datetime, record: dict[str, Any]) -> int:
        if kind not in KINDS:
            raise ValueError(f"unknown audit record kind {kind!r}; one of {KINDS}")
        seq = self.seq + 1
        at_s = at.isoformat()
        body = canonical(record)
        digest = chain_hash(seq, at_s, kind, body, self.last_hash)
        self.conn.execute("INSERT INTO audit (seq, at, kind, record, prev_hash, hash) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (seq, at_s, kind, body, self.last_hash, digest))
        self.seq, self.last_hash = seq, digest
        return seq

    # ---- transactions (see Store.transaction) --------------------------------------------------------
    def mark(self) -> tuple[int, str]:
        return self.seq, self.last_hash

    def reset(self, mark: tuple[int, str]) -> None:
        """The transaction that appended after `mark` was rolled back: so are the records."""
        self.seq, self.last_hash = mark

    # ---- reading ------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Records appended so far (retired ones included), as committed: right on any connection."""
        return _last(self.conn)[0]

    def records(self, kind: str | None = None) -> list[tuple[int, str, str, dict[str, Any]]]:
        """Every record still kept, sealed segments first, in seq order."""
        return [(seq, at, k, json.loads(rec)) for seq, at, k, rec, _, _ in self._rows()
                if kind is None or k == kind]

    def _rows(self) -> Iterator[tuple]:
        directory = segments.segment_dir(self.conn)
        for segment in segments.sealed(self.conn):
            if segment.retired_at is None and directory is not None:
                yield from segments.segment_rows(directory, segment)
        yield from self.conn.execute("SELECT seq, at, kind, record, prev_hash, hash FROM audit ORDER BY seq")

    # ---- rotation (run between transactions) --------------------------------------------------------
    def seal_due(self, now: datetime) -> Segment | None:
        """Seal the open segment when it holds `segment_records` records."""
        if self.rotation is None:
            return None
        sealed_up_to = self.conn.execute("SELECT MAX(last_seq) FROM audit_segments").fetchone()[0] or 0
        if self.seq - sealed_up_to < self.rotation.segment_records:
            return None
        return segments.seal(self.conn, sealed_up_to + 1, sealed_up_to + self.rotation.segment_records, now)

    def retire_due(self, now: datetime) -> list[Segment]:
        return [] if self.rotation is None else segments.retire_due(self.conn, self.rotation, now)
