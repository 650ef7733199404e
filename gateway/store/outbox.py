"""The telemetry outbox (store-and-forward, TDC-21).

Every telemetry message is written here before it is published, and removed once the broker has
acknowledged it. While the broker is down the outbox grows up to `max_messages`; past that the oldest
are evicted (counted, so status can raise the alarm). On reconnect the backlog is replayed in `seq` order.
"""

from __future__ import annotations

import sqlite3


class Outbox:
    def __init__(self, conn: sqlite3.Connection, max_messages: int) -> None:
        self.conn = conn
        self.max_messages = max_messages
        self.evicted = 0

    def last_seq(self) -> int:
        """The highest seq ever stored, so that seq stays contiguous and is never reused across restarts."""
        row = self.conn.execute("SELECT value FROM state WHERE key = 'telemetry_seq'").fetchone()
        return int(row[0]) if row else 0

    def put(self, seq: int, payload: bytes) -> None:
        """Store one message (call inside `Store.transaction`, with whatever else belongs with it)."""
        self.conn.execute("INSERT INTO outbox (seq, payload) VALUES (?, ?)", (seq, payload))
        self.conn.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('telemetry_seq', ?)",
                          (str(seq),))
        over = self.depth() - self.max_messages
        if over > 0:
            self.conn.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (over,))
            self.evicted += over

    def pending(self, limit: int = 500) -> list[tuple[int, bytes]]:
        return self.conn.execute("SELECT seq, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()

    def ack(self, up_to_seq: int) -> None:
        self.conn.execute("DELETE FROM outbox WHERE seq <= ?", (up_to_seq,))

    def depth(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
