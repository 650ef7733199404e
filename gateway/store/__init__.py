"""The gateway's store: one SQLite file with its state, telemetry outbox and the open audit segment,
and a directory of sealed audit segments beside it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.store.audit import AuditLog
from gateway.store.db import open_db
from gateway.store.outbox import Outbox
from gateway.store.segments import Rotation
from gateway.store.state import StateStore


class Store:
    """One connection to the store, used from one thread (the gateway writes through its writer's)."""

    def __init__(self, path: Path | str, outbox_max_messages: int, rotation: Rotation | None = None) -> None:
        self.path = Path(path)
        self.conn = open_db(self.path)
        self.state = StateStore(self.conn)
        self.outbox = Outbox(self.conn, outbox_max_messages)
        self.audit = AuditLog(self.conn, rotation)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside is on disk together when the block ends, or not at all; a failure (a full
        disk) leaves the audit chain, the outbox counters and the engine parts as they were."""
        chain, evicted = self.audit.mark(), self.outbox.evicted
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self.audit.reset(chain)
            self.outbox.evicted = evicted
            self.state.rolled_back()
            raise
        self.state.committed()

    def close(self) -> None:
        self.conn.close()
