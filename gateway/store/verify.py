"""`der-gateway audit verify`: walk the audit chain across every segment that remains.

The chain starts at record 1, or, when retention has retired the oldest segments, at the record after
the last retired one, linking to that record's hash as its anchor keeps it. Each sealed segment's file
must be there, be the segment its row says, and hold exactly its records; then the open segment follows.
The first break is reported with the record (and segment) it is at.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.store import segments
from gateway.store.chain import COLUMNS, GENESIS, chain_hash
from gateway.store.segments import Segment


@dataclass(frozen=True)
class Verification:
    ok: bool
    records: int  # records verified intact (before the break, when there is one)
    problem: str | None = None
    segments: int = 0  # sealed segments verified, besides the open one
    first_seq: int = 1  # where the verifiable chain starts
    start: str = "the chain starts at record 1"  # and why there


class _Walk:
    """The chain so far: each record must follow the one before it, link to its hash and match its own."""

    def __init__(self, prev_hash: str, expected_seq: int) -> None:
        self.prev_hash, self.expected_seq, self.records = prev_hash, expected_seq, 0

    def step(self, row: tuple, where: str) -> str | None:
        seq, at, kind, record, stored_prev, stored_hash = row
        if seq != self.expected_seq:
            return self.gap(seq, where)
        if stored_prev != self.prev_hash:
            return (f"record {seq} does not link to record {seq - 1}: records were reordered or "
                    f"replaced{where}")
        if chain_hash(seq, at, kind, record, stored_prev) != stored_hash:
            return f"record {seq} ({kind} at {at}) was edited: its content no longer matches its hash{where}"
        self.prev_hash, self.expected_seq = stored_hash, seq + 1
        self.records += 1
        return None

    def gap(self, seq: int, where: str) -> str:
        """Record `seq` comes where `expected_seq` should."""
        if seq < self.expected_seq:
            return f"record {seq} is out of place: record {self.expected_seq} was expected{where}"
        gone = f"{self.expected_seq}" if seq == self.expected_seq + 1 else f"{self.expected_seq} to {seq - 1}"
        return f"record {gone} was removed (record {seq} follows record {self.expected_seq - 1}){where}"


def verify(conn: sqlite3.Connection) -> Verification:
    rows = segments.sealed(conn)
    directory = segments.segment_dir(conn)
    walk, first_seq, start = _Walk(GENESIS, 1), 1, "the chain starts at record 1"

    def broken(problem: str, sealed: int) -> Verification:
        return Verification(False, walk.records, problem, sealed, first_seq, start)

    for n, s in enumerate(rows, 1):
        if s.number != n:
            return broken(f"segment {n} is not in the segment table (segment {s.number} follows segment "
                          f"{n - 1}): its records were removed", 0)
    retired = [s for s in rows if s.retired_at is not None]
    kept = rows[len(retired):]
    if any(s.retired_at is not None for s in kept):
        late = next(s for s in kept if s.retired_at is not None)
        return broken(f"segment {late.number} is marked retired but older segments are kept: retention "
                      "only ever retires the oldest", 0)
    if retired:
        anchor = retired[-1]
        walk = _Walk(anchor.last_hash, anchor.last_seq + 1)
        first_seq = anchor.last_seq + 1
        which = "segment 1" if anchor.number == 1 else f"segments 1 to {anchor.number}"
        start = (f"records 1 to {anchor.last_seq} ({which}) were retired by retention "
                 f"({anchor.retired_reason}, last on {anchor.retired_at}); the chain is verified from record "
                 f"{first_seq}, linked to the retired record {anchor.last_seq}'s hash")
    for done, s in enumerate(kept):
        problem = _segment(walk, s, directory)
        if problem is not None:
            return broken(problem, done)
    for row in conn.execute(f"SELECT {COLUMNS} FROM audit ORDER BY seq"):
        problem = walk.step(row, "")
        if problem is not None:
            return broken(problem, len(kept))
    return Verification(True, walk.records, None, len(kept), first_seq, start)


def _segment(walk: _Walk, s: Segment, directory: Path | None) -> str | None:
    """One sealed segment: its file, its seal, its records."""
    where = f" (in {s.describe()}, file {s.file})"
    path = None if directory is None else directory / s.file
    if path is None or not path.exists():
        return (f"{s.describe()} is missing: its file {path or s.file} is gone, and retention did not "
                "retire it")
    if s.first_seq != walk.expected_seq:
        return walk.gap(s.first_seq, where)
    try:
        conn = segments.open_segment(path)
        try:
            seal = conn.execute("SELECT segment, first_seq, last_seq, prev_hash, last_hash FROM seal"
                                ).fetchall()
            rows = conn.execute(f"SELECT {COLUMNS} FROM audit ORDER BY seq").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        return f"{s.describe()}: its file {path} cannot be read ({err})"
    if seal != [(s.number, s.first_seq, s.last_seq, s.prev_hash, s.last_hash)]:
        return (f"{s.describe()}: its file {path} is not the segment that was sealed (its seal says "
                f"{seal or 'nothing'}): files were swapped, replaced or edited")
    for row in rows:
        problem = walk.step(row, where)
        if problem is not None:
            return problem
    if walk.expected_seq != s.last_seq + 1:
        gone = (f"{walk.expected_seq}" if walk.expected_seq == s.last_seq
                else f"{walk.expected_seq} to {s.last_seq}")
        return f"record {gone} was removed (the end of {s.describe()}, file {s.file})"
    if walk.prev_hash != s.last_hash:
        return f"{s.describe()}: its last record does not match the hash it was sealed with"
    return None
