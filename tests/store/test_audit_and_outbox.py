"""The audit chain finds an edited, removed or reordered record and names it; the outbox keeps order."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.store import Store
from gateway.store.audit import AuditLog, verify
from gateway.store.db import open_db
from gateway.store.outbox import Outbox

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def filled_log(tmp_path: Path, n: int = 5):
    conn = open_db(tmp_path / "gw.sqlite")
    log = AuditLog(conn)
    for i in range(n):
        log.append("inbound", T0, {"topic": "tdc/v1/s/ieso/dispatch", "i": i})
    return conn, log


def test_tdc_23_intact_chain_verifies(tmp_path: Path) -> None:
    conn, _ = filled_log(tmp_path)
    result = verify(conn)
    assert result.ok and result.records == 5


def test_tdc_23_chain_continues_across_reopen(tmp_path: Path) -> None:
    conn, _ = filled_log(tmp_path)
    conn.close()
    conn = open_db(tmp_path / "gw.sqlite")
    AuditLog(conn).append("decision", T0, {"binding": "connection_agreement"})
    assert verify(conn).ok


def test_tdc_23_edited_record_is_named(tmp_path: Path) -> None:
    conn, _ = filled_log(tmp_path)
    conn.execute("UPDATE audit SET record = '{\"i\": 99}' WHERE seq = 3")
    result = verify(conn)
    assert not result.ok
    assert "record 3" in result.problem and "edited" in result.problem


def test_tdc_23_removed_record_is_named(tmp_path: Path) -> None:
    conn, _ = filled_log(tmp_path)
    conn.execute("DELETE FROM audit WHERE seq = 2")
    result = verify(conn)
    assert not result.ok
    assert "record 2 was removed" in result.problem


def test_tdc_23_reordered_records_are_named(tmp_path: Path) -> None:
    conn, _ = filled_log(tmp_path)
    two, three = conn.execute("SELECT at, kind, record, prev_hash, hash FROM audit WHERE seq IN (2, 3) "
                              "ORDER BY seq").fetchall()
    swap = "UPDATE audit SET at = ?, kind = ?, record = ?, prev_hash = ?, hash = ? WHERE seq = ?"
    conn.execute(swap, (*three, 2))
    conn.execute(swap, (*two, 3))
    result = verify(conn)
    assert not result.ok
    assert "record 2 does not link to record 1" in result.problem


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    _, log = filled_log(tmp_path, 1)
    with pytest.raises(ValueError, match="unknown audit record kind"):
        log.append("gossip", T0, {})


def test_outbox_keeps_order_evicts_oldest_and_remembers_seq(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.sqlite", outbox_max_messages=3)
    conn, box = store.conn, store.outbox
    for seq in range(1, 6):
        with store.transaction():
            box.put(seq, f"m{seq}".encode())
    assert [s for s, _ in box.pending()] == [3, 4, 5]
    assert box.evicted == 2
    box.ack(4)
    assert [p for _, p in box.pending()] == [b"m5"]
    conn.close()
    assert Outbox(open_db(tmp_path / "gw.sqlite"), 3).last_seq() == 5
