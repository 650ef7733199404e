"""Is the store writable, and how much room is left: fed by the writer, read by status, /metrics and the
instruction path.

Room is the free space of the store's file system, or less when SQLite's own page limit
(`max_page_count`) leaves less. Below `min_free_mb` the gateway raises an alarm while everything is
still written; once a write fails (SQLite's "database or disk is full", an I/O error) the store is
*unwritable*: market instructions are refused, the LDC's are enforced unwritten (journal.py), what
could not be stored is counted. It is writable again once a
write succeeds with at least `RECOVERY_MB` of room: on a full disk small writes still fit in the pages
SQLite has freed (an outbox acknowledged), and a store taken as writable on one of them would fail the
next instruction and flap between the two.
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
RECOVERY_MB = 4.0  # room for thousands of audit records: enough to take instructions again
# What a store that cannot take a write raises: SQLite's "database or disk is full", "disk I/O error",
# "attempt to write a readonly database" (OperationalError), a corrupt file (DatabaseError itself), the
# file system's own errors. A DatabaseError subclass other than OperationalError (a constraint, a misuse)
# is a bug in what was written, and is not taken for one of these (see `store_error`).
STORE_ERRORS = (sqlite3.DatabaseError, OSError)


def store_error(err: BaseException) -> bool:
    return isinstance(err, sqlite3.OperationalError | OSError) or type(err) is sqlite3.DatabaseError


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
            log.error("store %s cannot be written (%s): market instructions are refused until it can, "
                      "the LDC's enforced but not written; %s",
                      self.path, err, self.fix)
        self.error = str(err)

    def recovered(self) -> dict[str, object] | None:
        """A write succeeded (and the room was measured since): the outage that ends here, for the audit
        log; None when there was none, or when it goes on for want of room."""
        if self.error is None or (self.room is not None and self.room < RECOVERY_MB * MB):
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
                "or audit_keep_days in the site file and restart the gateway, so that fewer sealed audit "
                "segments are kept")

    def cause(self) -> str:
        """Why an instruction was not written, for the detail of its answer."""
        return (f"its store {self.path} cannot be written: {self.error or 'no room'}; the site's operator "
                f"must {self.fix}")

    def alarms(self) -> tuple[str, ...]:
        alarms = []
        if not self.writable:
            # what could not be stored meanwhile is counted in /metrics, not here: a status that changed
            # with every count would be republished every cycle
            alarms.append(f"store unwritable since {self.failing_since:%Y-%m-%d %H:%M:%S} UTC: {self.error} "
                          f"({self.path}); market instructions are refused (INTERNAL_ERROR), the LDC's are "
                          f"enforced but not written (they would not survive a restart), audit records and "
                          f"telemetry not stored are counted (/metrics der_gateway_store_unstored); "
                          f"{self.fix}")
        if self.low:
            alarms.append(f"store low on space: {self._room_text()}")
        return tuple(alarms)

    def _room_text(self) -> str:
        room = 0.0 if self.room is None else self.room / MB
        return (f"{room:.1f} MB left for {self.path} (store.min_free_mb = {self.min_free_mb:g}); "
                f"{self.fix}, before it is full and market instructions are refused")
