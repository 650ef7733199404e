"""Who writes the store: each job (a function of a `Store`) runs in one transaction, in submission order,
and its future says when it is on disk.

`StoreWriter` runs the jobs on a thread of its own with its own connection, so the event loop never waits
for SQLite or an fsync: the caller awaits the future where durability matters (an instruction before its
answer). Between jobs it seals full audit segments, applies the retention and measures the room left.
`InlineWriter` runs them at once on the caller's thread and connection (tests, tools).

A job's future answers True once it is committed. One that fails because the store cannot be written
(full disk, I/O error) is rolled back whole and its future answers False; the failure is counted in
`StoreHealth`, never raised into the gateway. A job that fails for any other reason is a bug: logged,
and raised where its future is awaited.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.config import StoreSection
from gateway.store import Store
from gateway.store.health import STORE_ERRORS, StoreHealth, store_error
from gateway.store.segments import Rotation

log = logging.getLogger(__name__)
Job = Callable[[Store], Any]
CHECK_S = 1.0  # how often the room is measured and the retention looked at, at most
ROTATE_RETRY_S = 60.0  # after a seal or retirement failed (no room for the segment's file, say)


@dataclass
class _Item:
    job: Job
    future: Future
    unstored: Counter[str]  # what the job holds, counted as not stored if it fails


class _Runner:
    """What both writers do with a job, and between jobs."""

    store: Store | None
    health: StoreHealth
    _rotate_after = 0.0  # monotonic time before which sealing and retention are not tried again

    def _run_job(self, item: _Item) -> None:
        try:
            store = self._store()
            with store.transaction():
                item.job(store)
        except Exception as err:
            if not store_error(err):
                log.exception("store job failed")
                item.future.set_exception(err)
                return
            self.health.failed(err, item.unstored)
            self._measure()
            item.future.set_result(False)
            return
        self._recovered(store)
        item.future.set_result(True)

    def _recovered(self, store: Store) -> None:
        if self.health.writable:
            return
        self._measure()
        outage = self.health.recovered()
        if outage is not None:
            try:
                with store.transaction():
                    store.audit.append("event", datetime.now(UTC), outage)
            except STORE_ERRORS as err:
                log.warning("the end of the store's outage could not be audited: %s", err)

    def _maintain(self) -> None:
        """Seal what is full, retire what retention no longer keeps, measure the room left."""
        if time.monotonic() >= self._rotate_after:
            try:
                store = self._store()
                now = datetime.now(UTC)
                while (segment := store.audit.seal_due(now)) is not None:
                    log.info("audit: sealed %s into %s", segment.describe(), segment.file)
                for segment in store.audit.retire_due(now):
                    log.info("audit: retired %s (%s)", segment.describe(), segment.retired_reason)
            except Exception as err:  # the open segment goes on taking records meanwhile
                self._rotate_after = time.monotonic() + ROTATE_RETRY_S
                if store_error(err):
                    log.warning("audit segments could not be sealed or retired (%s): tried again in %.0f s",
                                err, ROTATE_RETRY_S)
                else:
                    log.exception("audit segments could not be sealed or retired: tried again in %.0f s",
                                  ROTATE_RETRY_S)
        self._measure()

    def _measure(self) -> None:
        if self.store is not None and self.store.path.name != ":memory:":
            self.health.measure(self.store.conn)

    def _store(self) -> Store:
        raise NotImplementedError


class InlineWriter(_Runner):
    def __init__(self, store: Store, health: StoreHealth | None = None) -> None:
        self.store = store
        self.health = health or StoreHealth(store.path)

    def submit(self, job: Job, unstored: Counter[str] | None = None) -> Future:
        future: Future = Future()
        self._run_job(_Item(job, future, unstored or Counter()))
        self._maintain()
        return future

    @property
    def queued(self) -> int:
        return 0  # a job runs as it is submitted

    def close(self) -> None:
        pass

    def _store(self) -> Store:
        return self.store


class StoreWriter(_Runner):
    def __init__(self, open_store: Callable[[], Store], health: StoreHealth) -> None:
        self._open = open_store
        self.health = health
        self.store: Store | None = None  # opened on the writer's thread, used only there
        self._jobs: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Job, unstored: Counter[str] | None = None) -> Future:
        future: Future = Future()
        self._jobs.put(_Item(job, future, unstored or Counter()))
        return future

    @property
    def queued(self) -> int:
        """Jobs submitted and not yet started (/metrics): each cycle awaits its own, so this stays at a
        cycle's few unless the disk is slower than the cycles."""
        return self._jobs.qsize()

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, then close the connection."""
        self._jobs.put(None)
        self._thread.join(timeout_s)

    def _store(self) -> Store:
        if self.store is None:
            self.store = self._open()  # a failure (no room for the file) is the job's: tried again next job
        return self.store

    def _loop(self) -> None:
        checked = 0.0
        while True:
            try:
                item = self._jobs.get(timeout=CHECK_S)
            except queue.Empty:
                item = False
            if item is None:
                self._maintain()
                break
            if item:
                self._run_job(item)
            if time.monotonic() - checked >= CHECK_S:
                checked = time.monotonic()
                self._maintain()
        if self.store is not None:
            self.store.close()


def writer_for(section: StoreSection) -> StoreWriter:
    """The gateway's writer, sealing and retiring audit segments as the site file's [store] says."""
    rotation = Rotation(section.audit_segment_records, section.audit_keep_segments, section.audit_keep_days)
    return StoreWriter(lambda: Store(section.path, section.outbox_max_messages, rotation),
                       StoreHealth(section.path, section.min_free_mb))
