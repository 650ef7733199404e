"""The gateway's SQLite file: state that survives a restart, the telemetry outbox and the audit log.

WAL mode with synchronous=FULL: a commit is on disk when it returns, so an instruction the gateway has
accepted survives a crash or a power cut before its decision is published. The gateway writes through
one connection on its own thread (`gateway.store.writer`), so the event loop never waits for an fsync;
other connections (the loop's, `der-gateway audit verify`) read what has been committed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS engine_parts (
    path TEXT PRIMARY KEY,  -- JSON list: where the part sits in the engine's snapshot
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    record TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_segments (
    segment INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,      -- the hash its first record links to
    last_hash TEXT NOT NULL,      -- its last record's hash: what the next segment links to
    first_at TEXT NOT NULL,
    last_at TEXT NOT NULL,
    sealed_at TEXT NOT NULL,
    file TEXT NOT NULL,           -- in the store's .audit directory
    retired_at TEXT,              -- set when retention removed its file: the row stays as the anchor
    retired_reason TEXT
);
"""
BUSY_TIMEOUT_MS = 5000  # another connection (a backup, `audit verify`) may hold the write lock briefly


def open_db(path: Path | str) -> sqlite3.Connection:
    path = Path(path)
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None)  # autocommit; transactions are explicit
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    return conn


def db_file(conn: sqlite3.Connection) -> Path | None:
    """The file of the connection's main database; None in memory."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return Path(file) if file else None
    return None
