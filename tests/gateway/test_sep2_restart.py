"""The 2030.5 client's Responses across a restart (CSIP-AUS ALL-18 control responses, ALL-30 persisting
through reconnection; PROTOCOL TDC-19, nothing answered twice as new): which statuses each control has
had, and the ones queued but not yet posted, are in the gateway's store. A gateway stopped, or killed
with SIGKILL, and started again on the same store posts each status once, in order, and posts the one
it queued while the server was failing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.north.sep2.model import COMPLETED, RECEIVED, STARTED
from simulators.sep2_certs import Pki
from simulators.sep2_server import Sep2Server
from tests.gateway import test_sep2_gateway as sep2_site
from tests.gateway.test_tdc_failsafe import GatewayProcess
from tests.support.rig import Rig

pki, server = sep2_site.pki, sep2_site.server  # fixtures: the test PKI, the utility-server simulator
statuses = sep2_site.statuses

pytestmark = pytest.mark.asyncio


async def stored(rig: Rig, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
    """The 2030.5 client's entry in the gateway's store, once `pred` holds for it (read-only, beside the
    running gateway)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value: dict[str, Any] | None = None
    while loop.time() < deadline:
        conn = sqlite3.connect(f"file:{rig.site.store.path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM state WHERE key = 'north.sep2'").fetchone()
        finally:
            conn.close()
        value = json.loads(row[0]) if row else None
        if value is not None and pred(value):
            return value
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the store's 2030.5 state did not come to the condition in {timeout} s: {value}")


def queued(state: dict[str, Any], mrid: str) -> list[int]:
    return [due["status"] for due in state["outbox"] if due["mrid"] == mrid]


async def test_all_18_a_restarted_gateway_posts_no_response_twice(
        make_rig: Callable[..., Awaitable[Rig]], pki: Pki, server: Sep2Server) -> None:
    rig = await make_rig(sections=sep2_site.sep2_sections(pki, server))
    first = server.add_control(1, server.now() - 1, 25, export_w=40_000)
    await server.wait_for(lambda: statuses(server, first) == [RECEIVED, STARTED], timeout=15)
    await rig.stop_gateway()
    await rig.start_gateway()  # the same site file, the same store
    # a control new to the restarted gateway gets its Responses: the programs have been read and the
    # Responses due posted, and the first control's would have gone out before or with them
    second = server.add_control(1, server.now() - 1, 120, import_w=90_000)
    await server.wait_for(lambda: statuses(server, second) == [RECEIVED, STARTED], timeout=20)
    assert statuses(server, first) == [RECEIVED, STARTED]
    # and it still completes the first at its end, once
    await server.wait_for(lambda: COMPLETED in statuses(server, first), timeout=40)
    assert statuses(server, first) == [RECEIVED, STARTED, COMPLETED]
    assert not server.errors


async def test_all_30_tdc_19_a_response_queued_while_the_server_failed_is_posted_after_a_kill(
        make_rig: Callable[..., Awaitable[Rig]], pki: Pki, server: Sep2Server, tmp_path: Path,
        ) -> None:
    rig = await make_rig(gateway=False, sections=sep2_site.sep2_sections(pki, server))
    gw = GatewayProcess(rig, tmp_path)
    gw.start()
    try:
        await rig.wait_status(lambda s: s["state"] == "online", timeout=30)
        mrid = server.add_control(1, server.now() - 1, 8, export_w=40_000)
        running = server.add_control(1, server.now() - 1, 300, import_w=90_000)  # still listed after
        await server.wait_for(lambda: statuses(server, mrid) == statuses(server, running)
                              == [RECEIVED, STARTED], timeout=20)
        server.fail(500)  # the server goes away; the control runs to its end from what was read
        await stored(rig, lambda s: queued(s, mrid) == [COMPLETED], timeout=30)
        mark = len(rig.peer.messages)
        gw.kill()  # SIGKILL: nothing is written on the way out
        await rig.wait_status(lambda s: s["state"] == "offline", start=mark)
        server.clear_faults()
        gw.start()
        await server.wait_for(lambda: COMPLETED in statuses(server, mrid), timeout=30)
        await stored(rig, lambda s: not s["outbox"])  # struck off in the store once posted
        # a control new to the restarted gateway is answered: the programs have been read and planned,
        # so a second received or started for the running control would have gone out before or with it
        new = server.add_control(1, server.now() - 1, 120, generation_w=300_000)
        await server.wait_for(lambda: statuses(server, new) == [RECEIVED, STARTED], timeout=20)
        assert statuses(server, mrid) == [RECEIVED, STARTED, COMPLETED]
        assert statuses(server, running) == [RECEIVED, STARTED]
        assert not server.errors
    finally:
        gw.stop()


async def test_all_30_a_control_the_server_stops_listing_is_followed_to_its_end_after_a_restart(
        make_rig: Callable[..., Awaitable[Rig]], pki: Pki, server: Sep2Server) -> None:
    # 2030.5: a control that leaves the list is not cancelled; the restarted gateway has it from its store
    rig = await make_rig(sections=sep2_site.sep2_sections(pki, server))
    mrid = server.add_control(1, server.now() - 1, 300, export_w=40_000)
    await server.wait_for(lambda: statuses(server, mrid) == [RECEIVED, STARTED], timeout=15)
    await rig.stop_gateway()
    server.remove(mrid)
    await rig.start_gateway()
    # the programs have been read and planned once a control new to it is answered
    new = server.add_control(1, server.now() - 1, 300, import_w=90_000)
    await server.wait_for(lambda: statuses(server, new) == [RECEIVED, STARTED], timeout=20)
    mark = len(rig.peer.messages)
    t = await rig.telemetry(lambda t: t["effective"]["export_limit_kw"] is not None, start=mark)
    assert f"sep2:{mrid}" in t["effective"]["binding"] and t["effective"]["export_limit_kw"] == 40.0
    await rig.wait_meter(lambda p: p <= 40.5, timeout=20)
    assert statuses(server, mrid) == [RECEIVED, STARTED]
