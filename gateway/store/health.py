"""Is the store writable, and how much room is left: fed by the writer, read by status, /metrics and the
instruction path.

Room is the free space of the store's file system, or less when SQLite's own page limit
(`max_page_count`) leaves less. Below `min_free_mb` the gateway raises an alarm while everything is
still written; once a write fails (SQLite's "database or disk is full", an I/O error) the store is
*unwritable* until a write succeeds again: instructions are refused, what could not be stored is counted.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)
MB = 1024 * 1024
# Errors that mean the store could not take a write (as opposed to a bug in what was written).
STORE_ERRORS = (sqlite3.OperationalError, sqlite3.DatabaseError, OSError)


def room_bytes(conn: sqlite3.Connection, directory: Path) -> int:
    free = shutil.disk_usage(directory).free
    page_size, pages, max_pages = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                                   for p in ("page_size", "page_count", "max_page_count"))
    return min(free, (max_pages - pages) * page_size)


class StoreHealth:
    def __init__(self, path: Path, min_free_mb: float = 0.0) -> None:
        self.path = path
        self.min_free_mb = min_free_mb
        self.room: int | None = None  # bytes; None until measured (a store in memory: never)
        self.error: str | None = None  # the last failed write's error, until a write succeeds
        self.failing_since: datetime | None = None
        self.failed_writes = 0  # transactions that could not be written, since start
        self.unstored: Counter[str] = Counter()  # what they held: audit records, telemetry messages
        self._unstored_now: Counter[str] = Counter()  # the same, since the store became unwritable
        self._low = False

    @property
    def writable(self) -> bool:
        return self.error is None

    @property
    def low(self) -> bool:
        return self.room is not None and self.room < self.min_free_mb * MB

    # ---- fed by the writer's thread ------------------------------------------------------------------
    def measure(self, conn: sqlite3.Connection) -> None:
        try:
            self.room = room_bytes(conn, self.path.parent)
        except STORE_ERRORS as err:
            log.warning("cannot measure the room left for the store %s: %s", self.path, err)
            return
        if self.low != self._low:
            self._low = self.low
            if self._low:
                log.error("store low on space: %s", self._room_text())
            else:
                log.info("store has room again: %.0f MB left for %s", self.room / MB, self.path)

    def failed(self, err: BaseException, unstored: Counter[str]) -> None:
        self.failed_writes += 1
        self.unstored += unstored
        self._unstored_now += unstored
        if self.error is None:
            self.failing_since = datetime.now(UTC)
            log.error("store %s cannot be written (%s): instructions are refused until it can; %s",
                      self.path, err, self.fix)
        self.error = str(err)

    def recovered(self) -> dict[str, object] | None:
        """A write succeeded: the outage that ends here, for the audit log (None when there was none)."""
        if self.error is None:
            return None
        outage = {"event": "store_unwritable", "since": self.failing_since, "error": self.error,
                  "unstored": dict(self._unstored_now)}
        log.info("store %s is written again (unwritable since %s: %s; not stored meanwhile: %s)",
                 self.path, self.failing_since, self.error, dict(self._unstored_now) or "nothing")
        self.error, self.failing_since, self._unstored_now = None, None, Counter()
        return outage

    # ---- read on the loop ------------------------------------------------------------------------------
    @property
    def fix(self) -> str:
        return (f"free space on the file system of {self.path.parent}, or lower [store] audit_keep_segments "
                "or audit_keep_days so that fewer sealed audit segments are kept")

    def cause(self) -> str:
        """Why an instruction is refused, for its `rejected` detail."""
        return f"its store cannot be written: {self.error or 'no room'} ({self.path})"

    def alarms(self) -> tuple[str, ...]:
        alarms = []
        if not self.writable:
            lost = ", ".join(f"{n} {what}" for what, n in sorted(self._unstored_now.items())) or "nothing yet"
            alarms.append(f"store unwritable since {self.failing_since:%Y-%m-%d %H:%M:%S} UTC: {self.error} "
                          f"({self.path}); instructions are refused (INTERNAL_ERROR); not stored: {lost}; "
                          f"{self.fix}")
        if self.low:
            alarms.append(f"store low on space: {self._room_text()}")
        return tuple(alarms)

    def _room_text(self) -> str:
        room = 0.0 if self.room is None else self.room / MB
        return (f"{room:.1f} MB left for {self.path} (store.min_free_mb = {self.min_free_mb:g}); "
                f"{self.fix}, before it is full and instructions are refused")
