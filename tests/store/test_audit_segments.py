"""The audit log in segments (TDC-23, PROTOCOL §8): sealed into files of their own, retired by the
retention with an anchor, and verified as one chain across them, which still names the first edited,
removed or reordered record, and a segment that is gone without retention having retired it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.store import Store
from gateway.store.audit import verify
from gateway.store.chain import chain_hash
from gateway.store.segments import Rotation, segment_dir

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SIZE = 10  # records a segment


def fill(store: Store, n: int, start: datetime = T0, step: timedelta = timedelta(seconds=1)) -> None:
    """n records, a transaction each, the writer's maintenance (seal, retire) after each, as it runs."""
    for i in range(n):
        at = start + i * step
        with store.transaction():
            store.audit.append("inbound", at, {"topic": "tdc/v1/s/ieso/dispatch", "i": i})
        while store.audit.seal_due(at) is not None:
            pass
        store.audit.retire_due(at)


def segmented(tmp_path: Path, n: int = 35, **retention: float) -> Store:
    store = Store(tmp_path / "gw.sqlite", 100, Rotation(segment_records=SIZE, **retention))
    fill(store, n)
    return store


def segment_file(store: Store, number: int) -> Path:
    directory = segment_dir(store.conn)
    assert directory is not None
    return directory / f"segment-{number:06d}.sqlite"


def rewrite(path: Path, sql: str, *params: object) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(sql, params)
    conn.close()


def test_tdc_23_full_segments_are_sealed_into_files_and_verified_as_one_chain(tmp_path: Path) -> None:
    store = segmented(tmp_path)
    assert sorted(p.name for p in segment_dir(store.conn).iterdir()) == [
        "segment-000001.sqlite", "segment-000002.sqlite", "segment-000003.sqlite"]
    assert store.conn.execute("SELECT MIN(seq), COUNT(*) FROM audit").fetchone() == (31, 5)  # the open one
    result = verify(store.conn)
    assert result.ok and result.records == 35 and result.segments == 3 and result.first_seq == 1
    assert [r[3]["i"] for r in store.audit.records()] == list(range(35))
    assert store.audit.count == 35
    # the chain goes on after a restart, across the last seal
    store.close()
    store = Store(tmp_path / "gw.sqlite", 100, Rotation(segment_records=SIZE))
    fill(store, 10, start=T0 + timedelta(hours=1))
    result = verify(store.conn)
    assert result.ok and result.records == 45 and result.segments == 4


def test_tdc_23_retention_keeps_n_segments_and_verify_says_where_the_chain_starts(tmp_path: Path) -> None:
    store = segmented(tmp_path, 55, keep_segments=2)
    rows = store.conn.execute("SELECT segment, retired_reason FROM audit_segments ORDER BY segment"
                              ).fetchall()
    assert [n for n, reason in rows if reason] == [1, 2, 3]
    assert "audit_keep_segments = 2" in rows[0][1]
    assert not segment_file(store, 1).exists() and segment_file(store, 4).exists()
    result = verify(store.conn)
    assert result.ok and result.first_seq == 31 and result.records == 25 and result.segments == 2
    assert "records 1 to 30" in result.start and "retired by retention" in result.start


def test_tdc_23_retention_by_age(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.sqlite", 100, Rotation(segment_records=SIZE, keep_days=2))
    fill(store, 40, step=timedelta(hours=3))  # 30 h a segment: the first two end over 2 days before the last
    result = verify(store.conn)
    assert result.ok and result.first_seq == 21, result
    assert "older than store.audit_keep_days = 2" in result.start


def test_tdc_23_verify_command_reports_segments_and_the_start(tmp_path: Path, capsys) -> None:
    store = segmented(tmp_path, 55, keep_segments=2)
    store.close()
    assert main(["audit", "verify", "--db", str(tmp_path / "gw.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "intact: 25 records verified in 2 sealed segment(s)" in out and "from record 31" in out


def test_tdc_23_edited_record_in_a_sealed_segment_is_named(tmp_path: Path) -> None:
    store = segmented(tmp_path)
    rewrite(segment_file(store, 2), "UPDATE audit SET record = '{\"i\": 99}' WHERE seq = 13")
    result = verify(store.conn)
    assert not result.ok and result.records == 12
    assert "record 13" in result.problem and "edited" in result.problem and "segment 2" in result.problem


def test_tdc_23_removed_record_at_the_end_of_a_segment_is_named(tmp_path: Path) -> None:
    store = segmented(tmp_path)
    rewrite(segment_file(store, 2), "DELETE FROM audit WHERE seq = 20")
    result = verify(store.conn)
    assert not result.ok and "record 20 was removed" in result.problem and "segment 2" in result.problem


def test_tdc_23_removed_first_record_after_a_seal_is_named(tmp_path: Path) -> None:
    store = segmented(tmp_path)
    store.conn.execute("DELETE FROM audit WHERE seq = 31")
    result = verify(store.conn)
    assert not result.ok and "record 31 was removed (record 32 follows record 30)" in result.problem


def test_tdc_23_records_reordered_across_a_segment_boundary_are_named(tmp_path: Path) -> None:
    store = segmented(tmp_path)
    query = "SELECT at, kind, record, prev_hash, hash FROM audit WHERE seq = ?"
    ten = sqlite3.connect(segment_file(store, 1)).execute(query, (10,)).fetchone()
    eleven = sqlite3.connect(segment_file(store, 2)).execute(query, (11,)).fetchone()
    swap = "UPDATE audit SET at = ?, kind = ?, record = ?, prev_hash = ?, hash = ? WHERE seq = ?"
    rewrite(segment_file(store, 1), swap, *eleven, 10)
    rewrite(segment_file(store, 2), swap, *ten, 11)
    result = verify(store.conn)
    assert not result.ok and "record 10 does not link to record 9" in result.problem


def test_tdc_23_a_segment_gone_without_retention_is_named(tmp_path: Path) -> None:
    store = segmented(tmp_path)
    segment_file(store, 2).unlink()
    result = verify(store.conn)
    assert not result.ok
    assert "segment 2 (records 11 to 20) is missing" in result.problem
    assert "retention did not retire it" in result.problem


def test_tdc_23_a_segment_dropped_from_the_table_is_named(tmp_path: Path) -> None:
    store = segmented(tmp_path)
    store.conn.execute("DELETE FROM audit_segments WHERE segment = 2")
    result = verify(store.conn)
    assert not result.ok and "segment 2 is not in the segment table" in result.problem


def test_tdc_23_swapped_or_rechained_segment_files_are_named(tmp_path: Path) -> None:
    store = segmented(tmp_path)
    one, two = segment_file(store, 1), segment_file(store, 2)
    one.rename(tmp_path / "x")
    two.rename(one)
    (tmp_path / "x").rename(two)
    result = verify(store.conn)
    assert not result.ok and "is not the segment that was sealed" in result.problem
    two.rename(tmp_path / "x")
    one.rename(two)
    (tmp_path / "x").rename(one)
    assert verify(store.conn).ok
    # an edit with every hash after it recomputed, the file's own seal too: the store's row still differs
    conn = sqlite3.connect(two, isolation_level=None)
    rows = conn.execute("SELECT seq, at, kind, record, prev_hash FROM audit ORDER BY seq").fetchall()
    prev = rows[0][4]
    for seq, at, kind, record, _ in rows:
        record = record.replace('"i":14', '"i":41')
        digest = chain_hash(seq, at, kind, record, prev)
        conn.execute("UPDATE audit SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                     (record, prev, digest, seq))
        prev = digest
    conn.execute("UPDATE seal SET last_hash = ?", (prev,))
    conn.close()
    result = verify(store.conn)
    assert not result.ok and "segment 2" in result.problem
    assert "not the segment that was sealed" in result.problem


def test_tdc_23_a_retired_mark_after_a_kept_segment_is_named(tmp_path: Path) -> None:
    store = segmented(tmp_path)
    store.conn.execute("UPDATE audit_segments SET retired_at = ?, retired_reason = 'x' WHERE segment = 2",
                       (T0.isoformat(),))
    result = verify(store.conn)
    assert not result.ok and "segment 2 is marked retired but older segments are kept" in result.problem


def test_tdc_23_a_failed_transaction_leaves_no_gap_in_the_chain(tmp_path: Path) -> None:
    """A full disk: the transaction is rolled back whole and the chain goes on from its last record."""
    store = Store(tmp_path / "gw.sqlite", 100)
    fill(store, 3)
    store.conn.execute("PRAGMA max_page_count = 1")  # no room for one more page
    with pytest.raises(sqlite3.OperationalError, match="full"), store.transaction():
        for i in range(200):
            store.audit.append("inbound", T0, {"big": "x" * 1000, "i": i})
    store.conn.execute("PRAGMA max_page_count = 1073741823")
    fill(store, 2)
    result = verify(store.conn)
    assert result.ok and result.records == 5, result.problem
