"""The limit holds whatever the devices do (issue 17), over MQTT on a real mosquitto with the simulators on
TCP, read at the simulated meter: a device that answers but does not follow its command."""

from __future__ import annotations

import json

import aiohttp
import pytest

from gateway.config import WebSection
from simulators.example_site import example_site
from simulators.mosquitto import Mosquitto, free_port
from tests.gateway.test_faults import audit
from tests.gateway.test_tdc_failsafe import Sampler, envelope
from tests.support.rig import Rig
from tests.web.util import base_url

pytestmark = pytest.mark.asyncio
LIMIT = 20.0  # low enough that PV must be curtailed (the battery charging at most 200 kW)


def device(t: dict, dev_id: str) -> dict:
    return next(d for d in t["devices"] if d["id"] == dev_id)


async def test_tdc_08_a_device_stuck_at_full_output_is_found_and_the_others_bring_the_export_under_the_limit(
        broker: Mosquitto) -> None:
    """pv1 (250 kW, 225 kW of sun) keeps its output whatever it is told. On the base code the meter sat
    above the envelope for as long as it lasted: the stuck inverter was given its share, the others theirs."""
    site = example_site({"pv1": {"response_time_s": 3.0}})
    site.web = WebSection(enabled=True, port=free_port())
    rig = Rig(site, broker.url)
    await rig.start()
    try:
        await stuck_device_scenario(rig)
    finally:
        await rig.stop()


async def stuck_device_scenario(rig: Rig) -> None:
    await rig.wait_meter(lambda p: p > 200.0)  # default mode: PV at what the sun gives
    rig.sim.devices["pv1"].set_fault("stuck")
    mark = await rig.send("ldc", "envelope", "e-stuck", **envelope(LIMIT))
    await rig.response("e-stuck", "accepted", start=mark)
    await rig.wait_meter(lambda p: LIMIT - 15.0 <= p <= LIMIT, timeout=30)
    t = await rig.telemetry(lambda t: device(t, "pv1")["following"] is False, start=mark, timeout=30)
    assert device(t, "pv1")["online"] and device(t, "pv1")["p_kw"] > 200.0
    status = await rig.wait_status(lambda s: any("pv1 does not follow" in a for a in s["alarms"]), start=mark)
    assert status["state"] == "online"
    async with aiohttp.ClientSession() as http, http.get(base_url(rig) + "/api/status") as r:
        page = await r.json()  # the status page's data
    assert next(d for d in page["devices"] if d["id"] == "pv1")["state"] == "not following"
    assert any("pv1 does not follow" in a["text"] for a in page["alarms"])
    sampler = Sampler(rig)
    for _ in range(3):
        await rig.telemetry(start=len(rig.peer.messages))
    assert await sampler.stop() <= LIMIT + 1.0  # and it stays there
    assert rig.sim.devices["pv1"].p_kw > 200.0  # still stuck: the others carry it
    events = [e for e in audit(rig, "event") if e.get("device") == "pv1"]
    assert any(e["event"] == "device_not_following" for e in events)
    resent = [w for w in audit(rig, "write") if w.get("device_id") == "pv1" and w["purpose"] == "reapply"]
    assert resent, "the command it does not follow is written again"
    # it follows again once the fault clears, and gets its share back
    rig.sim.devices["pv1"].set_fault("none")
    mark = len(rig.peer.messages)
    await rig.telemetry(lambda t: device(t, "pv1")["following"] is True, start=mark, timeout=30)
    status = await rig.wait_status(lambda s: not any("pv1" in a for a in s["alarms"]), start=mark)
    await rig.wait_meter(lambda p: LIMIT - 15.0 <= p <= LIMIT, timeout=30)
    assert json.dumps(status)  # a status with no alarm for pv1 came
