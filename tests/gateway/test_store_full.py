"""A full disk under a running gateway (mosquitto, the simulated site over TCP): the store's room is
alarmed before anything is lost; once full, an instruction that cannot be written is refused with
INTERNAL_ERROR and a detail naming the cause and the fix, and is not in force; telemetry goes on live and
what could not be stored is counted; control holds the limit at the meter; nothing crashes; and when room
comes back everything is taken again, the audit chain whole (TDC-19, TDC-21, TDC-23).

The disk is filled for real as SQLite sees it: `PRAGMA max_page_count` on the gateway's own writing
connection, so SQLite answers "database or disk is full" exactly as on a full file system.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.config import WebSection
from gateway.store import Store
from gateway.store.audit import verify
from gateway.store.db import open_db
from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto, free_port
from tests.gateway.test_tdc_failsafe import Sampler, dispatch, envelope
from tests.store.test_state_and_writer import fill_to_the_limit
from tests.support.rig import Rig

pytestmark = pytest.mark.asyncio
TOL = 3.0
MIN_FREE_MB = 50.0


async def on_writer(gw: Gateway, sql: str) -> None:
    """Run one statement on the gateway's writing connection (the writer's thread)."""
    await asyncio.wrap_future(gw.journal.writer.submit(lambda store: store.conn.execute(sql)))


async def room_left(gw: Gateway, pages: int) -> None:
    """Leave SQLite room for `pages` more pages of the store (0: none, the pages there are full)."""
    def limit(store) -> None:
        count = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {count + pages}")
    await asyncio.wrap_future(gw.journal.writer.submit(limit))


def fill_free_pages(path) -> None:
    """Fill the pages SQLite has free in the store, on a connection of the test's own (its writes each
    their own transaction: one that finds the store full is rolled back alone)."""
    conn = open_db(path)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # filler: not worth an fsync a row
        fill_to_the_limit(conn)
    finally:
        conn.close()


async def metrics(rig: Rig) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{rig.site.web.port}/metrics") as r:
        text = await r.text()
    return {s.name + "".join(f"{{{v}}}" for v in s.labels.values()): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def store_alarms(status: dict) -> list[str]:
    return [a for a in status["alarms"] if a.startswith("store ")]


async def test_tdc_19_full_disk_alarmed_first_then_refused_clearly_while_control_holds_and_recovers(
        broker: Mosquitto) -> None:
    site = example_site()
    site.web = WebSection(enabled=True, port=free_port())
    site.store.min_free_mb = MIN_FREE_MB
    rig = Rig(site, broker.url)
    await rig.start()
    sampler = None
    try:
        gw = rig.gateway
        assert gw is not None
        health = gw.journal.health
        mark = await rig.send("ldc", "envelope", "e-1", **envelope(100.0))
        await rig.send("ieso", "dispatch", "d-1", **dispatch(200.0))
        await rig.response("d-1", "constrained", start=mark)
        await rig.wait_meter(lambda p: 100.0 - 3 * TOL <= p <= 100.0 + TOL)
        sampler = Sampler(rig)

        # 1. little room left (8 MB < min_free_mb): the alarm, while everything is still written
        mark = len(rig.peer.messages)
        await room_left(gw, 2000)
        status = await rig.wait_status(lambda s: bool(store_alarms(s)), start=mark)
        [low] = store_alarms(status)
        assert low.startswith("store low on space") and f"store.min_free_mb = {MIN_FREE_MB:g}" in low
        assert health.writable and health.failed_writes == 0 and not health.unstored  # nothing lost yet
        m = await metrics(rig)
        assert m["der_gateway_store_low"] == 1 and m["der_gateway_store_writable"] == 1
        assert m["der_gateway_store_room_bytes"] < MIN_FREE_MB * 1024 * 1024

        # 2. full: no room for one more page, and the free pages filled (a second connection), as on a
        # full disk; market dispatches (held at the envelope, harmless if taken) until the store refuses one
        await room_left(gw, 0)
        await asyncio.to_thread(fill_free_pages, site.store.path)
        refusal = None
        for i in range(20):
            mark = len(rig.peer.messages)
            await rig.send("ieso", "dispatch", f"fill-{i}", **dispatch(200.0))
            await rig.response(f"fill-{i}", "received", start=mark)
            decided = await rig.peer.wait_for(
                lambda t, p, i=i: t.endswith("gateway/response/ieso") and f'"fill-{i}"' in p.decode()
                and '"received"' not in p.decode(), start=mark, timeout=10)
            if b'"rejected"' in decided[1]:
                refusal = rig.responses(f"fill-{i}", start=mark)[-1]
                break
        assert refusal is not None, "the store never filled up"
        assert refusal["reason"] == "INTERNAL_ERROR"
        detail = refusal["detail"]
        assert "database or disk is full" in detail and str(site.store.path) in detail  # the cause
        assert "free space on the file system" in detail and "Send it again" in detail  # the fixes
        assert "not in force" in detail
        assert f"fill-{i}" not in gw.engine.state.store.records["ieso"]  # not left accepted in memory
        # the LDC's tighter envelope is not refused for a full disk: it is enforced, and its answer says
        # it was not written down (refusing it would leave the feeder without it)
        mark = len(rig.peer.messages)
        await rig.send("ldc", "envelope", "e-tight", **envelope(60.0))
        tight = await rig.response("e-tight", "accepted", start=mark)
        assert "in force, but not written down" in tight["detail"] and "Send it again" in tight["detail"]
        assert "database or disk is full" in tight["detail"]
        status = await rig.wait_status(lambda s: any("unwritable" in a for a in s["alarms"]), start=mark)
        assert any("instructions are refused" in a for a in store_alarms(status))
        await rig.wait_meter(lambda p: p <= 60.0 + TOL)
        # telemetry goes on live, the limit in force; what could not be stored is counted
        await rig.telemetry(lambda t: t["effective"]["export_limit_kw"] == pytest.approx(60.0, abs=1.5),
                            start=len(rig.peer.messages))
        m = await metrics(rig)
        assert m["der_gateway_store_writable"] == 0 and m["der_gateway_store_failed_writes_total"] >= 1
        assert m["der_gateway_store_unstored_total{audit}"] >= 1
        assert not health.writable
        # control held the limit through all of it (sampled since before the alarm), and the gateway
        # runs on
        assert await sampler.stop() <= 100.0 + TOL
        sampler = None
        assert rig._gw_task is not None and not rig._gw_task.done()

        # 3. room again: the alarms clear, the refused dispatch is taken as new, and the envelope holds it
        mark = len(rig.peer.messages)
        await on_writer(gw, "PRAGMA max_page_count = 1073741823")
        await rig.wait_status(lambda s: not store_alarms(s), start=mark, timeout=30)
        mark = await rig.send("ieso", "dispatch", f"fill-{i}", **dispatch(200.0))
        again = await rig.response(f"fill-{i}", "constrained", start=mark)
        assert again["accepted_kw"] == pytest.approx(60.0, abs=1.5)
        mark = await rig.send("ldc", "envelope", "e-tighter", **envelope(50.0))
        stored = await rig.response("e-tighter", "accepted", start=mark)
        assert not stored.get("detail")
        await rig.wait_meter(lambda p: p <= 50.0 + TOL)
    finally:
        if sampler is not None:
            await sampler.stop()
        await rig.stop()
    store = Store(site.store.path, 10)
    result = verify(store.conn)
    assert result.ok, result.problem  # no gap where the disk was full
    events = [r for _, _, _, r in store.audit.records("event")]
    store.close()
    outage = next(e for e in events if e["event"] == "store_unwritable")
    assert "database or disk is full" in outage["error"] and outage["unstored"]["audit records"] >= 1
