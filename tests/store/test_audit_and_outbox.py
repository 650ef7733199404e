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


def test_tdc_23_device_writes_a_record_per_request_in_batches_with_room_between(tmp_path: Path) -> None:
    from gateway.journal import WRITE_BATCH, Journal
    from gateway.south.device import WriteRecord

    store = Store(tmp_path / "gw.sqlite", 100)
    journal = Journal(store)
    n = WRITE_BATCH + 10  # devices, each written a limit (two points in one request) and a heartbeat
    for i in range(n):
        at = 1_795_000_000.0 + i / 1000
        journal.on_write(WriteRecord(f"pv{i}", "704.WMaxLimPct", 40311, 5000, "ok", "setpoint", at))
        journal.on_write(WriteRecord(f"pv{i}", "704.WMaxLimPctRvrt", 40312, 2000, "ok", "setpoint", at))
        journal.on_write(WriteRecord(f"pv{i}", "715.ControllerHb", 40400, i, "ok", "heartbeat", at + 0.0005))
    batches = journal.writes(T0)
    next(batches)  # the first transaction is committed: another can go in before the rest
    assert store.audit.count == WRITE_BATCH
    store.audit.append("inbound", T0, {"topic": "tdc/v1/s/ieso/dispatch"})
    assert list(batches) == [None]
    records = [r for _, _, kind, r in store.audit.records() if kind == "write"]
    requests = [r for r in records if r["purpose"] == "setpoint"]
    assert len(requests) == n
    assert requests[0]["points"] == [["704.WMaxLimPct", 5000], ["704.WMaxLimPctRvrt", 2000]]
    assert requests[0]["address"] == 40311 and requests[0]["device_id"] == "pv0"
    [beats] = [r for r in records if r["purpose"] == "heartbeat"]
    assert beats["devices"] == {f"pv{i}": i for i in range(n)}
    assert verify(store.conn).ok and list(journal.writes(T0)) == []  # recorded once
