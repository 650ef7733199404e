"""The gateway's store: one SQLite file with its state, telemetry outbox and audit log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.store.audit import AuditLog
from gateway.store.db import open_db
from gateway.store.outbox import Outbox
from gateway.store.state import StateStore


class Store:
    def __init__(self, path: Path | str, outbox_max_messages: int) -> None:
        self.path = Path(path)
        self.conn = open_db(self.path)
        self.state = StateStore(self.conn)
        self.outbox = Outbox(self.conn, outbox_max_messages)
        self.audit = AuditLog(self.conn)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside is on disk together when the block ends, or not at all."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()
