"""The engine's state written incrementally (a part per record and seen id, only what changed), the
writer thread, and what happens when the store is full: the failure is counted and alarmed, never raised,
and an instruction that cannot be written is not left in force (TDC-19, TDC-23)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import site_params
from gateway.core.engine import Engine
from gateway.core.instructions import SEEN_RETENTION
from gateway.core.outbound import Response
from gateway.journal import Journal, _keep_transient, unwritten
from gateway.protocol.codec import decode_inbound
from gateway.store import Store
from gateway.store import writer as writer_module
from gateway.store.audit import verify
from gateway.store.health import StoreHealth
from gateway.store.segments import Rotation
from gateway.store.state import assemble, split
from gateway.store.writer import InlineWriter, StoreWriter
from simulators.example_site import example_site

NOW = datetime.now(UTC).replace(microsecond=0)
PARAMS = site_params(example_site())
UNLIMITED = 1073741823  # SQLite's default max_page_count


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def envelope(msg_id: str, export_kw: float, at: datetime = NOW):
    body = {"v": 1, "type": "envelope", "id": msg_id, "issuer": "ldc", "issued_at": iso(at),
            "start": iso(at), "end": iso(at + timedelta(hours=1)), "export_limit_kw": export_kw,
            "reason": "thermal"}
    return decode_inbound("ldc", "envelope", json.dumps(body).encode())


def dispatch(msg_id: str, target_kw: float, at: datetime = NOW):
    body = {"v": 1, "type": "dispatch", "id": msg_id, "issuer": "ieso", "issued_at": iso(at),
            "resource_id": PARAMS.resource_id, "start": iso(at), "end": iso(at + timedelta(hours=1)),
            "product": "energy", "kind": "algorithmic", "target_kw": target_kw}
    return decode_inbound("ieso", "dispatch", json.dumps(body).encode())


def cancel(msg_id: str, ref: str):
    body = {"v": 1, "type": "cancel", "id": msg_id, "issuer": "ldc", "issued_at": iso(NOW), "ref": ref}
    return decode_inbound("ldc", "cancel", json.dumps(body).encode())


def engine_with(n: int) -> Engine:
    engine = Engine(PARAMS, NOW)
    for i in range(n):
        engine.receive(envelope(f"e-{i}", 100.0 + i), NOW)
    return engine


def save(store: Store, engine: Engine) -> int:
    with store.transaction():
        return store.state.save_engine(engine.snapshot())


def parts(store: Store) -> list[str]:
    return [p for (p,) in store.conn.execute("SELECT path FROM engine_parts ORDER BY path")]


def fill_to_the_limit(conn: sqlite3.Connection) -> None:
    """No room for one more page, and the pages there are full: SQLite then answers "database or disk is
    full" to the next write, as on a full disk."""
    conn.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
    conn.execute("PRAGMA max_page_count = 1")  # becomes the pages there are
    for size in (4096, 256, 16):
        with contextlib.suppress(sqlite3.OperationalError):
            while True:
                conn.execute("INSERT INTO filler VALUES (zeroblob(?))", (size,))


def fill_audit(store: Store) -> None:
    """Fill the audit log's last page too (on a full disk the next record that needs a page fails)."""
    with contextlib.suppress(sqlite3.OperationalError):
        while True:
            with store.transaction():
                store.audit.append("event", NOW, {"event": "filler"})


# ---- incremental state -------------------------------------------------------------------------------------
def test_tdc_19_state_is_written_a_part_per_record_and_only_what_changed(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.sqlite", 100)
    engine = engine_with(20)
    whole = len(json.dumps(engine.snapshot()))
    first = save(store, engine)
    assert first >= whole * 0.9
    assert sum('"records", "ldc", "e-' in p for p in parts(store)) == 20
    assert save(store, engine) == 0  # nothing changed: nothing written
    engine.heard("ieso", NOW + timedelta(seconds=1))  # a sign of life: one small part
    assert 0 < save(store, engine) < whole / 10
    engine.receive(cancel("c-1", "e-3"), NOW)  # its record goes, its seen id is updated, the cancel's is new
    assert save(store, engine) < whole / 5
    assert not any('"e-3"' in p and '"records"' in p for p in parts(store))
    store.close()
    # restored by reassembling the parts: the same state
    store = Store(tmp_path / "gw.sqlite", 100)
    restored = Engine(PARAMS, NOW)
    restored.restore(store.state.load_engine())
    assert restored.snapshot() == engine.snapshot()
    assert set(restored.status(NOW).active) == {f"e-{i}" for i in range(20) if i != 3}


def test_tdc_19_a_one_row_snapshot_of_an_older_version_is_restored_then_replaced(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.sqlite", 100)
    engine = engine_with(2)
    with store.transaction():
        store.state.save("engine", engine.snapshot())
    assert store.state.load_engine() == engine.snapshot()
    save(store, engine)
    assert store.state.load("engine") is None and store.state.load_engine() == engine.snapshot()


def test_split_keeps_empty_roles_and_a_snapshot_of_another_shape_whole() -> None:
    snap = engine_with(0).snapshot()
    assert assemble(split(snap)) == snap  # records {"ieso": {}, "ldc": {}} come back empty, not missing
    other = {"format": 9, "state": [1, 2, 3]}
    assert assemble(split(other)) == other


# ---- the writer ------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_writer_runs_jobs_in_order_on_its_own_thread(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.sqlite", 100)
    writer = StoreWriter(lambda: Store(tmp_path / "gw.sqlite", 100), StoreHealth(tmp_path / "gw.sqlite"))
    journal = Journal(store, writer)
    threads = []
    writer.submit(lambda s: threads.append(threading.current_thread().name))
    written = [journal.event("e", NOW, i=i) for i in range(50)]
    assert all([await w for w in written])
    assert threads == ["store-writer"]
    assert [r["i"] for _, _, _, r in store.audit.records("event")] == list(range(50))
    journal.close()


@pytest.mark.asyncio
async def test_tdc_23_full_store_is_counted_and_alarmed_not_raised_and_leaves_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite"
    health = StoreHealth(path, min_free_mb=1)
    writer = StoreWriter(lambda: Store(path, 100), health)
    journal = Journal(Store(path, 100), writer)
    assert await journal.event("before", NOW)
    writer.submit(lambda s: fill_to_the_limit(s.conn))
    big = "x" * 20_000
    assert not await journal.event("lost", NOW, big=big)
    assert not await journal.telemetry(1, big.encode())
    assert not health.writable
    for _ in range(100):  # the writer measures the room left every CHECK_S
        if health.low:
            break
        await asyncio.sleep(0.05)
    assert health.low and health.room < 1024 * 1024
    assert health.unstored == {"audit records": 1, "telemetry messages": 1}
    unwritable, low = health.alarms()
    assert "store unwritable" in unwritable and "database or disk is full" in unwritable
    assert "free space on the file system of" in unwritable and "store.min_free_mb = 1" in low
    # room again: the next write goes through, and the outage is in the log
    writer.submit(lambda s: s.conn.execute(f"PRAGMA max_page_count = {UNLIMITED}"))
    assert await journal.event("after", NOW)
    assert health.writable and health.alarms() == ()
    events = [r for _, _, _, r in journal.store.audit.records("event")]
    assert [e["event"] for e in events] == ["before", "store_unwritable", "after"]
    assert events[1]["unstored"] == {"audit records": 1, "telemetry messages": 1}
    result = verify(journal.store.conn)
    assert result.ok and result.records == 3
    journal.close()


@pytest.mark.asyncio
async def test_tdc_23_a_full_store_stays_unwritable_until_there_is_room_not_on_a_write_that_fits(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.sqlite", 100)
    journal = Journal(store, InlineWriter(store, StoreHealth(store.path)))
    store.conn.execute("CREATE TABLE spare AS SELECT zeroblob(40000) AS b")  # ten pages
    fill_to_the_limit(store.conn)
    fill_audit(store)
    assert not await journal.event("lost", NOW, big="x" * 20_000)
    # an outbox acknowledged, say: some pages free again, and a small write fits in them
    store.conn.execute("DROP TABLE spare")
    assert await journal.event("small", NOW)
    assert not journal.health.writable  # still no room: instructions still refused, the alarm stays
    assert "store unwritable" in journal.health.alarms()[0]
    store.conn.execute(f"PRAGMA max_page_count = {UNLIMITED}")
    assert await journal.event("after", NOW) and journal.health.writable
    events = [r["event"] for _, _, _, r in store.audit.records("event")]
    # the outage is recorded once it is over, after the write that ended it
    assert events == ["filler"] * events.count("filler") + ["small", "after", "store_unwritable"]


@pytest.mark.asyncio
async def test_a_bug_in_a_job_is_raised_where_awaited_not_taken_for_a_full_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.sqlite", 100)
    journal = Journal(store, InlineWriter(store, StoreHealth(store.path)))
    assert await journal.telemetry(1, b"{}")
    with pytest.raises(sqlite3.IntegrityError):
        await journal.telemetry(1, b"{}")  # the same seq twice: a bug in the caller
    assert journal.health.writable and journal.health.failed_writes == 0
    assert store.outbox.depth() == 1


@pytest.mark.asyncio
async def test_tdc_23_writer_seals_full_segments_between_jobs(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite"
    writer = StoreWriter(lambda: Store(path, 100, Rotation(segment_records=100)), StoreHealth(path))
    journal = Journal(Store(path, 100), writer)
    assert all([await journal.event("e", NOW, i=i) for i in range(250)])
    journal.close()  # its last maintenance has run
    result = verify(journal.store.conn)
    assert result.ok and result.records == 250 and result.segments == 2


@pytest.mark.asyncio
async def test_tdc_23_a_seal_that_fails_keeps_the_records_open_and_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(writer_module, "ROTATE_RETRY_S", 0.0)
    path = tmp_path / "gw.sqlite"
    store = Store(path, 100, Rotation(segment_records=100))
    journal = Journal(store, InlineWriter(store))
    blocker = tmp_path / "gw.sqlite.audit"
    blocker.write_text("not a directory")  # where the segment files go
    assert all([await journal.event("e", NOW, i=i) for i in range(120)])
    assert "audit segments could not be sealed" in caplog.text
    assert verify(store.conn).segments == 0 and store.audit.count == 120  # all still in the open segment
    blocker.unlink()
    assert await journal.event("e", NOW, i=120)
    result = verify(store.conn)
    assert result.ok and result.segments == 1 and result.records == 121


# ---- an instruction the store cannot take ----------------------------------------------------------
def journal_on(tmp_path: Path) -> tuple[Journal, Engine]:
    store = Store(tmp_path / "gw.sqlite", 100)
    journal = Journal(store, InlineWriter(store, StoreHealth(store.path)))
    engine = engine_with(1)
    journal.restore(engine)
    return journal, engine


@pytest.mark.asyncio
async def test_tdc_19_a_market_instruction_that_cannot_be_written_is_rolled_back_not_left_in_force(
        tmp_path: Path) -> None:
    journal, engine = journal_on(tmp_path)
    before = engine.snapshot()
    fill_to_the_limit(journal.store.conn)
    fill_audit(journal.store)
    msg = dispatch("d-new", 20.0)
    engine.receive(msg, NOW)
    assert "d-new" in engine.state.store.records["ieso"]
    assert not await journal.instruction(msg, "mqtt", [], engine, NOW)
    store = engine.state.store
    assert "d-new" not in store.records["ieso"] and "d-new" not in store.seen["ieso"]
    assert engine.snapshot()["state"]["store"] == before["state"]["store"]
    # known unwritable now: the next one is rolled back at once, before anything can act on it
    other = dispatch("d-other", 30.0)
    engine.receive(other, NOW)
    written = journal.instruction(other, "mqtt", [], engine, NOW)
    assert "d-other" not in engine.state.store.records["ieso"]
    assert not await written
    # a message that changes nothing in force stands: its answer goes out, its record is counted lost
    assert await journal.instruction(envelope("e-0", 100.0), "mqtt", [], engine, NOW)
    # room again: once a write has gone through (in the gateway, the next control cycle's), the same
    # instruction is taken as new
    journal.store.conn.execute(f"PRAGMA max_page_count = {UNLIMITED}")
    assert await journal.event("cycle", NOW) and journal.health.writable
    outs = engine.receive(msg, NOW)
    assert [getattr(o, "status", None) for o in outs][:2] == ["received", "accepted"]
    assert await journal.instruction(msg, "mqtt", [], engine, NOW)
    assert "d-new" in engine.state.store.records["ieso"]
    assert verify(journal.store.conn).ok


@pytest.mark.asyncio
async def test_tdc_19_an_ldc_limit_that_cannot_be_written_stays_in_force_and_its_answer_says_so(
        tmp_path: Path) -> None:
    # refusing a tighter limit (or a trip) because the disk is full would leave the feeder without it
    journal, engine = journal_on(tmp_path)
    fill_to_the_limit(journal.store.conn)
    fill_audit(journal.store)
    for msg_id in ("e-tight", "e-tighter"):  # found full on the first, known unwritable on the second
        msg = envelope(msg_id, 20.0)
        outs = engine.receive(msg, NOW)
        written = journal.instruction(msg, "mqtt", [], engine, NOW)
        assert await written and written.kept and written.stored is False
        assert msg_id in engine.state.store.records["ldc"]
        [decision] = [o for o in unwritten(outs, msg, journal.health.cause())
                      if isinstance(o, Response) and o.status != "received"]
        assert decision.status == "accepted" and "in force, but not written down" in decision.detail
        assert "database or disk is full" in decision.detail
    # room again: the next cycle's state write takes it, and it survives a restart
    journal.store.conn.execute(f"PRAGMA max_page_count = {UNLIMITED}")
    assert await journal.event("cycle", NOW)
    with journal.store.transaction():
        journal.store.state.save_engine(engine.snapshot())
    restored = Engine(PARAMS, NOW)
    journal.restore(restored)
    assert "e-tighter" in restored.state.store.records["ldc"]


@dataclass
class _Inner:
    wall: int = 0
    mono: float = field(default=0.0, metadata={"transient": True})  # as gateway.core.serde.transient()


@dataclass
class _State:
    inner: _Inner
    records: dict = field(default_factory=dict)
    ramp: str | None = field(default=None, metadata={"transient": True})


def test_a_rollback_restores_what_is_persisted_and_keeps_what_belongs_to_the_process() -> None:
    live = _State(_Inner(wall=2, mono=7.5), {"e-new": 1}, ramp="under way")
    restored = _State(_Inner(wall=1), {})  # from the snapshot before the instruction: no transient fields
    _keep_transient(live, restored)
    assert restored == _State(_Inner(wall=1, mono=7.5), {}, ramp="under way")



def test_tdc_19_a_seen_id_kept_longer_once_its_instruction_ends_is_written_again(tmp_path: Path) -> None:
    # a seen id's JSON is made once and its part known unchanged by identity (serde.to_jsonable,
    # StateStore.save_engine): the one that changes must be a new object, and be written
    store = Store(tmp_path / "gw.sqlite", 100)
    engine = engine_with(0)
    engine.receive(dispatch("d-1", 10.0), NOW)
    save(store, engine)
    assert save(store, engine) == 0  # nothing changed: nothing written, nothing encoded again
    ended = NOW + timedelta(hours=1)
    engine.state.store.drop(engine.state.store.records["ieso"]["d-1"], ended)
    assert save(store, engine) > 0
    restored = Engine(PARAMS, NOW)
    restored.restore(store.state.load_engine())
    assert restored.state.store.seen["ieso"]["d-1"].keep_until == ended + SEEN_RETENTION
    assert "d-1" not in restored.state.store.records["ieso"]
