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


async def test_tdc_17_the_ldcs_own_default_envelope_applies_once_the_link_is_lost_and_its_envelopes_end(
        make_rig) -> None:
    """The issue's case: an LDC default_envelope of 19.2 kW received, then the LDC silent past
    comms_timeout_s and its last envelope ended: the LDC's default (not the site file's 50 kW) applies."""
    rig: Rig = await make_rig(comms_timeout_s=3.0)
    mark = await rig.send("ldc", "default_envelope", "de-17", export_limit_kw=19.2)
    await rig.send("ldc", "envelope", "e-17b", **envelope(100.0, end=6))
    await rig.response("e-17b", "completed", start=mark, timeout=20)
    t = await rig.telemetry(lambda t: t["effective"]["binding"] == "default_envelope", start=mark)
    assert t["effective"]["export_limit_kw"] == pytest.approx(19.2)
    assert t["effective"]["mode"] == "failsafe"
    await rig.wait_meter(lambda p: p <= 19.2)
    sampler = Sampler(rig)
    for _ in range(3):
        await rig.telemetry(start=len(rig.peer.messages))
    assert await sampler.stop() <= 19.2 + 0.5


async def test_tdc_22_a_silent_devices_share_moves_to_the_others_and_it_comes_back(make_rig) -> None:
    """pv1 stops answering during a 70 kW dispatch the others can meet: they take its share (whatever pv1
    then does on its own timer), and it is brought back when it answers again."""
    rig: Rig = await make_rig(devices={"pv1": {"reversion_timeout_s": 4.0}})
    mark = await rig.send("ieso", "dispatch", "d-22", product="energy", kind="algorithmic", target_kw=70.0,
                          start=0, end=300)
    await rig.response("d-22", "accepted", start=mark)
    await rig.wait_meter(lambda p: abs(p - 70.0) <= 3.0)
    rig.sim.devices["pv1"].set_fault("silent")
    await rig.telemetry(lambda t: device(t, "pv1")["online"] is False, start=len(rig.peer.messages))
    # pv1 reverts to its safe limit on its own (20 % = 50 kW) after 4 s: the others cover the change
    await rig.wait_meter(lambda p: rig.sim.devices["pv1"].p_kw < 60.0 and abs(p - 70.0) <= 3.0, timeout=30)
    rig.sim.devices["pv1"].set_fault("none")
    await rig.telemetry(lambda t: device(t, "pv1")["online"] and device(t, "pv1")["setpoint_kw"] is not None,
                        start=len(rig.peer.messages), timeout=45)
    await rig.wait_meter(lambda p: abs(p - 70.0) <= 3.0)
