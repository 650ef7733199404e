"""Key-value state that survives a restart: the decision core's snapshot (instructions, overrides,
default envelope, seen ids) and the last setpoint of every device. Written in one transaction."""

from __future__ import annotations

import json
import sqlite3
from typing import Any


class StateStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def save(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                          (key, json.dumps(value, sort_keys=True, default=str)))

    def load(self, key: str) -> Any | None:
        row = self.conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None
