"""The append-only, hash-chained audit log of PROTOCOL §8.

Every record carries the hash of the one before it, and its own hash covers its sequence number, time,
kind, content and that previous hash. So an edited record no longer matches its hash, a removed one
leaves a gap in the sequence and a broken link, and a reordered one breaks the links around it;
`verify` names the first record where the chain breaks and what is wrong there.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

GENESIS = "0" * 64
KINDS = ("inbound", "decision", "write", "outbound", "event")


def _hash(seq: int, at: str, kind: str, record: str, prev_hash: str) -> str:
    return hashlib.sha256(f"{seq}\x1f{at}\x1f{kind}\x1f{record}\x1f{prev_hash}".encode()).hexdigest()


def _canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


class AuditLog:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self.seq, self.last_hash = (row[0], row[1]) if row else (0, GENESIS)

    def append(self, kind: str, at: datetime, record: dict[str, Any]) -> int:
        if kind not in KINDS:
            raise ValueError(f"unknown audit record kind {kind!r}; one of {KINDS}")
        seq = self.seq + 1
        at_s = at.isoformat()
        body = _canonical(record)
        digest = _hash(seq, at_s, kind, body, self.last_hash)
        self.conn.execute("INSERT INTO audit (seq, at, kind, record, prev_hash, hash) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (seq, at_s, kind, body, self.last_hash, digest))
        self.seq, self.last_hash = seq, digest
        return seq

    @property
    def count(self) -> int:
        return self.seq

    def records(self, kind: str | None = None) -> list[tuple[int, str, str, dict[str, Any]]]:
        sql = "SELECT seq, at, kind, record FROM audit"
        rows = self.conn.execute(sql + (" WHERE kind = ?" if kind else "") + " ORDER BY rowid",
                                 (kind,) if kind else ())
        return [(seq, at, k, json.loads(rec)) for seq, at, k, rec in rows]


@dataclass(frozen=True)
class Verification:
    ok: bool
    records: int
    problem: str | None = None


def verify(conn: sqlite3.Connection) -> Verification:
    """Walk the chain; the first break is reported with the record it is at."""
    # seq is the rowid, so storage order is seq order: a reordered record shows as a broken link.
    rows = conn.execute("SELECT seq, at, kind, record, prev_hash, hash FROM audit ORDER BY seq").fetchall()
    prev_hash, expected_seq = GENESIS, 1
    for n, (seq, at, kind, record, stored_prev, stored_hash) in enumerate(rows, 1):
        if seq != expected_seq:
            gone = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq} to {seq - 1}"
            return Verification(False, n, f"record {gone} was removed (record {seq} follows "
                                          f"record {expected_seq - 1})")
        if stored_prev != prev_hash:
            return Verification(False, n, f"record {seq} does not link to record {seq - 1}: "
                                          "records were reordered or replaced")
        if _hash(seq, at, kind, record, stored_prev) != stored_hash:
            return Verification(False, n, f"record {seq} ({kind} at {at}) was edited: its content no longer "
                                          "matches its hash")
        prev_hash, expected_seq = stored_hash, seq + 1
    return Verification(True, len(rows))
