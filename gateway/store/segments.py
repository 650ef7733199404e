"""Sealed segments of the audit log, and their retention.

The records being written are in the store's `audit` table: the *open* segment. Once it holds
`segment_records` records it is sealed: its records move to a file of their own,
`<store>.audit/segment-000042.sqlite`, with a `seal` row (first and last seq, the hash its first record
links to, its last record's hash), and the store's `audit_segments` table gets the same row. The next
record links to the sealed segment's last hash like any other, so the chain runs on across files.

Retention removes the oldest sealed files (more than `keep_segments`, or whose newest record is older
than `keep_days`); each one's row stays, marked retired with when and why: the anchor that the rest of
the chain starts from (`verify` says so). A segment that is gone without such a row is reported missing.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from gateway.store.chain import COLUMNS
from gateway.store.db import db_file

AUDIT_TABLE = """CREATE TABLE IF NOT EXISTS {schema}.audit (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, record TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"""
SEAL_TABLE = """CREATE TABLE IF NOT EXISTS {schema}.seal (
    segment INTEGER NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    prev_hash TEXT NOT NULL, last_hash TEXT NOT NULL, sealed_at TEXT NOT NULL)"""
SEGMENT_COLUMNS = ("segment, first_seq, last_seq, prev_hash, last_hash, first_at, last_at, sealed_at, file, "
                   "retired_at, retired_reason")


@dataclass(frozen=True)
class Rotation:
    """`[store]` audit_segment_records, audit_keep_segments, audit_keep_days (None: no limit)."""

    segment_records: int
    keep_segments: int | None = None
    keep_days: float | None = None


@dataclass(frozen=True)
class Segment:
    number: int
    first_seq: int
    last_seq: int
    prev_hash: str
    last_hash: str
    first_at: str
    last_at: str
    sealed_at: str
    file: str
    retired_at: str | None = None
    retired_reason: str | None = None

    @property
    def records(self) -> int:
        return self.last_seq - self.first_seq + 1

    def describe(self) -> str:
        return f"segment {self.number} (records {self.first_seq} to {self.last_seq})"


def segment_dir(conn: sqlite3.Connection) -> Path | None:
    """Where the sealed segments of this store are: next to it, `<store file>.audit`."""
    main = db_file(conn)
    return None if main is None else main.with_name(main.name + ".audit")


def file_name(number: int) -> str:
    return f"segment-{number:06d}.sqlite"


def sealed(conn: sqlite3.Connection) -> list[Segment]:
    """Every sealed segment, retired ones included, oldest first."""
    rows = conn.execute(f"SELECT {SEGMENT_COLUMNS} FROM audit_segments ORDER BY segment").fetchall()
    return [Segment(*row) for row in rows]


def open_segment(path: Path) -> sqlite3.Connection:
    """A sealed segment's file, read-only: reading it never changes it."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def segment_rows(directory: Path, segment: Segment) -> list[tuple]:
    conn = open_segment(directory / segment.file)
    try:
        return conn.execute(f"SELECT {COLUMNS} FROM audit ORDER BY seq").fetchall()
    finally:
        conn.close()


def seal(conn: sqlite3.Connection, first_seq: int, last_seq: int, now: datetime) -> Segment:
    """Move records first_seq..last_seq of the open segment into a sealed segment file of their own.

    The file is written under a temporary name, synced and renamed, and only then is the segment
    recorded and its records deleted from the open segment: a crash at any point leaves every record
    in one place or the other (a file left without its row is written again by the next seal)."""
    directory = segment_dir(conn)
    if directory is None:
        raise ValueError("an audit log in memory has no segment files")
    number = (conn.execute("SELECT MAX(segment) FROM audit_segments").fetchone()[0] or 0) + 1
    name = file_name(number)
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / (name + ".part")
    part.unlink(missing_ok=True)
    (first_at, prev_hash), (last_at, last_hash) = (
        conn.execute("SELECT at, prev_hash FROM audit WHERE seq = ?", (first_seq,)).fetchone(),
        conn.execute("SELECT at, hash FROM audit WHERE seq = ?", (last_seq,)).fetchone())
    sealed_at = now.isoformat()
    try:
        _write_segment(conn, part, (number, first_seq, last_seq, prev_hash, last_hash, sealed_at))
    except BaseException:
        part.unlink(missing_ok=True)  # on a full disk: the room it took is given back at once
        raise
    os.replace(part, directory / name)
    _sync_dir(directory)
    segment = Segment(number, first_seq, last_seq, prev_hash, last_hash, first_at, last_at, sealed_at, name)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"INSERT INTO audit_segments ({SEGMENT_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                     (number, first_seq, last_seq, prev_hash, last_hash, first_at, last_at, sealed_at, name,
                      None, None))
        conn.execute("DELETE FROM audit WHERE seq <= ?", (last_seq,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return segment


def _write_segment(conn: sqlite3.Connection, part: Path, seal_row: tuple) -> None:
    """The records `seal_row` names, and the row itself, into a new file `part`, synced."""
    _, first_seq, last_seq, *_ = seal_row
    conn.execute("ATTACH DATABASE ? AS seg", (str(part),))
    try:
        conn.execute("PRAGMA seg.synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(AUDIT_TABLE.format(schema="seg"))
            conn.execute(SEAL_TABLE.format(schema="seg"))
            conn.execute(f"INSERT INTO seg.audit ({COLUMNS}) SELECT {COLUMNS} FROM main.audit "
                         "WHERE seq BETWEEN ? AND ?", (first_seq, last_seq))
            conn.execute("INSERT INTO seg.seal VALUES (?, ?, ?, ?, ?, ?)", seal_row)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("DETACH DATABASE seg")


def retire_due(conn: sqlite3.Connection, rotation: Rotation, now: datetime) -> list[Segment]:
    """Retire the sealed segments that retention no longer keeps: oldest first, each row kept as an
    anchor (when and why), then its file removed."""
    kept = [s for s in sealed(conn) if s.retired_at is None]
    reasons: dict[int, str] = {}
    if rotation.keep_days is not None:
        oldest = now - timedelta(days=rotation.keep_days)
        for s in kept:
            if datetime.fromisoformat(s.last_at) < oldest:
                reasons[s.number] = f"older than store.audit_keep_days = {rotation.keep_days:g}"
    if rotation.keep_segments is not None and len(kept) > rotation.keep_segments:
        for s in kept[:len(kept) - rotation.keep_segments]:
            reasons.setdefault(s.number, f"more than store.audit_keep_segments = {rotation.keep_segments} "
                                         "sealed segments")
    # only ever a prefix: the chain that stays must start where the retired part ends
    due = []
    for s in kept:
        if s.number not in reasons:
            break
        due.append(s)
    if not due:
        return []
    retired_at = now.isoformat()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("UPDATE audit_segments SET retired_at = ?, retired_reason = ? WHERE segment = ?",
                         [(retired_at, reasons[s.number], s.number) for s in due])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    directory = segment_dir(conn)
    assert directory is not None  # sealed segments exist only beside a file
    for s in due:
        (directory / s.file).unlink(missing_ok=True)
    return due


def _sync_dir(directory: Path) -> None:
    """The rename is durable once the directory is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
