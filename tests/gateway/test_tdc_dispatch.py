"""PROTOCOL rules on dispatch and limits (TDC-07 … TDC-16, TDC-22), read at the simulated PCC meter.

The example site: PV 250 + 150 + 30 kW (the last one on DNP3) at 0.9 irradiance (≈ 387 kW available), a
200 kW battery, a steady 120 kW site load, connection agreement export ≤ 300 kW.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.gateway.test_tdc_failsafe import Sampler
from tests.support.rig import Rig

pytestmark = pytest.mark.asyncio
TOL = 3.0  # examples/site.toml target_tolerance_kw


def dispatch(target_kw: float, start: float = 0, end: float = 300) -> dict:
    return {"product": "energy", "kind": "algorithmic", "target_kw": target_kw, "start": start, "end": end}


def envelope(export_kw: float, start: float = 0, end: float = 300, **kw: object) -> dict:
    return {"export_limit_kw": export_kw, "reason": "thermal", "start": start, "end": end, **kw}


async def assert_stays(rig: Rig, pred, seconds: float = 3.0) -> None:
    """The meter satisfies `pred` at every sample over `seconds` (it must not wander off once settled)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        p = rig.sim.meter_p_kw
        assert pred(p), f"PCC {p:.1f} kW broke the condition"
        await asyncio.sleep(0.1)


async def test_tdc_07_dispatch_inside_all_limits_reaches_target_and_is_accepted(rig: Rig) -> None:
    mark = await rig.send("ieso", "dispatch", "d-07", **dispatch(150.0))
    await rig.response("d-07", "accepted", role="ieso", start=mark)
    await rig.wait_meter(lambda p: abs(p - 150.0) <= TOL)
    t = await rig.telemetry(lambda t: t["serving"] != [], start=mark)
    assert t["serving"] == [{"ref": "d-07", "kw": pytest.approx(150.0)}]
    assert t["effective"]["target_kw"] == pytest.approx(150.0)


async def test_tdc_08_dispatch_above_export_limit_is_constrained_to_the_limit(rig: Rig) -> None:
    mark = await rig.send("ldc", "envelope", "e-08", **envelope(100.0))
    await rig.response("e-08", "accepted", role="ldc", start=mark)
    mark = await rig.send("ieso", "dispatch", "d-08", **dispatch(200.0))
    c = await rig.response("d-08", "constrained", role="ieso", start=mark)
    assert c["reason"] == "DISTRIBUTION_CONSTRAINT"
    assert c["accepted_kw"] == pytest.approx(100.0)
    con = await rig._json("gateway/constraint", lambda m: m["ref"] == "d-08", timeout=10, start=mark)
    assert con["requested_kw"] == pytest.approx(200.0)
    assert con["deliverable_kw"] == pytest.approx(100.0)
    assert con["binding"] == "envelope:e-08"
    await rig.wait_meter(lambda p: 100.0 - 3 * TOL <= p <= 100.0)
    await assert_stays(rig, lambda p: p <= 100.0)


async def test_tdc_09_envelope_tightened_mid_dispatch_brings_export_under_it(rig: Rig) -> None:
    mark = await rig.send("ieso", "dispatch", "d-09", **dispatch(200.0))
    await rig.response("d-09", "accepted", start=mark)
    await rig.wait_meter(lambda p: abs(p - 200.0) <= TOL)
    mark = await rig.send("ldc", "envelope", "e-09", **envelope(80.0))
    c = await rig.response("d-09", "constrained", role="ieso", start=mark)
    assert c["reason"] == "DISTRIBUTION_CONSTRAINT"
    assert c["accepted_kw"] == pytest.approx(80.0)
    # one control cycle plus the inverters' response (OpenDER ramps at 20 %/s)
    await rig.wait_meter(lambda p: p <= 80.0, timeout=15)
    await assert_stays(rig, lambda p: p <= 80.0)


async def test_tdc_10_most_restrictive_envelope_applies_and_replaces_and_cancel_remove_one(rig: Rig) -> None:
    await rig.send("ieso", "dispatch", "d-10", **dispatch(250.0))
    mark = await rig.send("ldc", "envelope", "e-10a", **envelope(150.0))
    await rig.send("ldc", "envelope", "e-10b", **envelope(90.0))
    await rig.response("e-10b", "accepted", start=mark)
    t = await rig.telemetry(lambda t: t["effective"]["binding"] == "envelope:e-10b", start=mark)
    assert t["effective"]["export_limit_kw"] == pytest.approx(90.0)
    await rig.wait_meter(lambda p: 90.0 - 3 * TOL <= p <= 90.0)

    mark = await rig.send("ldc", "envelope", "e-10c", **envelope(120.0, replaces="e-10b"))
    await rig.response("e-10b", "superseded", start=mark)
    t = await rig.telemetry(lambda t: t["effective"]["binding"] == "envelope:e-10c", start=mark)
    assert t["effective"]["export_limit_kw"] == pytest.approx(120.0)
    await rig.wait_meter(lambda p: 120.0 - 3 * TOL <= p <= 120.0)

    mark = await rig.send("ldc", "cancel", "c-10", ref="e-10c")
    await rig.response("e-10c", "cancelled", start=mark)
    t = await rig.telemetry(lambda t: t["effective"]["binding"] == "envelope:e-10a", start=mark)
    assert t["effective"]["export_limit_kw"] == pytest.approx(150.0)
    await rig.wait_meter(lambda p: 150.0 - 3 * TOL <= p <= 150.0)


@pytest.mark.parametrize("action", ["disconnect", "cease_to_energize"])
async def test_tdc_11_disconnect_and_cease_to_energize_override_a_dispatch_at_once(rig: Rig,
                                                                                 action: str) -> None:
    mark = await rig.send("ieso", "dispatch", "d-11", **dispatch(150.0))
    await rig.wait_meter(lambda p: abs(p - 150.0) <= TOL)
    mark = await rig.send("ldc", "override", "o-11", action=action, reason="emergency", start=0)
    c = await rig.response("d-11", "constrained", role="ieso", start=mark)
    assert c["reason"] == "OVERRIDE_ACTIVE"
    # every device is commanded: each simulator sees its output go to zero (and open, for disconnect)
    for dev_id in ("pv1", "pv2", "bess1"):
        dev = rig.sim.devices[dev_id]
        await asyncio.wait_for(_until(lambda d=dev: abs(d.p_kw) < 1.0), 15)
        if action == "disconnect":
            assert not dev.connected
    load = rig.site.simulator.load_kw
    await rig.wait_meter(lambda p: abs(p + load) <= TOL)
    t = await rig.telemetry(lambda t: t["effective"]["mode"] == "overridden", start=mark)
    assert t["effective"]["binding"] == "override:o-11"


async def test_tdc_11_instructions_back_to_back_do_not_stop_the_readings(rig: Rig) -> None:
    # Each instruction triggers a cycle at once, on the last readings; the scheduled cycles still read.
    assert rig.gateway is not None
    poller = rig.gateway.pollers["pv1"]
    assert poller.reading is not None
    seen = {poller.reading.at}
    loop = asyncio.get_running_loop()
    n, end = 0, loop.time() + 8 * rig.site.site.control_interval_s
    while len(seen) < 4 and loop.time() < end:  # three fresh readings; instructions back to back
        await rig.publish("ieso", "heartbeat", rig.message("ieso", "heartbeat", f"hb-11-{n}"))
        n += 1
        await asyncio.sleep(0)
        assert poller.reading is not None
        seen.add(poller.reading.at)
    assert len(seen) >= 4, f"pv1 read {len(seen) - 1} times in {n} instructions"


async def _until(pred) -> None:
    while not pred():
        await asyncio.sleep(0.05)


async def test_tdc_12_hold_caps_export_at_its_starting_value_but_allows_decreases(rig: Rig) -> None:
    mark = await rig.send("ieso", "dispatch", "d-12a", **dispatch(100.0, end=20))
    await rig.wait_meter(lambda p: abs(p - 100.0) <= TOL)
    await rig.send("ldc", "override", "h-12", action="hold", reason="switching", start=0)
    await rig.response("h-12", "started", start=mark)
    mark = await rig.send("ieso", "dispatch", "d-12b", **dispatch(200.0))  # supersedes, asks for more
    c = await rig.response("d-12b", "constrained", start=mark)
    assert c["accepted_kw"] <= 100.0 + TOL
    await assert_stays(rig, lambda p: p <= 100.0 + TOL)
    mark = await rig.send("ieso", "dispatch", "d-12c", **dispatch(50.0))  # decreases are allowed
    await rig.response("d-12c", "accepted", start=mark)
    await rig.wait_meter(lambda p: abs(p - 50.0) <= TOL)


async def test_tdc_13_outage_is_on_availability_before_it_starts_then_sets_its_limits(rig: Rig) -> None:
    mark = await rig.send("ieso", "dispatch", "d-13", **dispatch(150.0))
    await rig.wait_meter(lambda p: abs(p - 150.0) <= TOL)
    mark = await rig.send("ldc", "outage", "out-13", kind="planned", equipment="T1 feeder 55M3",
                          start=6, end=60)
    av = await rig._json("gateway/availability",
                         lambda a: any(w["cause"].startswith("outage") for w in a["windows"]), 10, mark)
    window = next(w for w in av["windows"] if w["cause"].startswith("outage"))
    assert window["max_export_kw"] == 0 and window["max_import_kw"] == 0
    assert abs(rig.sim.meter_p_kw - 150.0) <= 2 * TOL  # announced, not yet in force
    await rig.response("out-13", "started", start=mark, timeout=15)
    await rig.wait_meter(lambda p: abs(p) <= TOL)  # isolated: neither export nor import
    t = await rig.telemetry(lambda t: t["effective"]["binding"].startswith("outage"), start=mark)
    assert t["effective"]["export_limit_kw"] == 0


async def test_tdc_14_newer_overlapping_dispatch_supersedes_the_older(rig: Rig) -> None:
    mark = await rig.send("ieso", "dispatch", "d-14a", **dispatch(100.0))
    await rig.response("d-14a", "started", start=mark)
    await rig.send("ieso", "dispatch", "d-14b", **dispatch(160.0))
    await rig.response("d-14a", "superseded", role="ieso", start=mark)
    await rig.wait_meter(lambda p: abs(p - 160.0) <= TOL)
    t = await rig.telemetry(lambda t: t["serving"] and t["serving"][0]["ref"] == "d-14b", start=mark)
    assert len(t["serving"]) == 1


async def test_tdc_15_dispatch_and_service_overlap_only_the_priority_one_is_served(rig: Rig) -> None:
    mark = await rig.send("ieso", "dispatch", "d-15", **dispatch(150.0))
    await rig.response("d-15", "accepted", start=mark)
    await rig.send("ldc", "service", "s-15", service="peak_reduction", target_kw=40.0, start=0, end=300)
    c = await rig.response("s-15", "constrained", role="ldc", start=mark)
    assert c["reason"] == "CONFLICTING_INSTRUCTION"
    await rig.wait_meter(lambda p: abs(p - 150.0) <= TOL)
    for _ in range(3):
        t = await rig.telemetry(start=len(rig.peer.messages))
        assert t["serving"] == [{"ref": "d-15", "kw": pytest.approx(150.0)}]


async def test_tdc_16_cancel_from_issuer_ends_it_other_role_unauthorized_unknown_ref(rig: Rig) -> None:
    mark = await rig.send("ieso", "dispatch", "d-16", **dispatch(150.0))
    await rig.response("d-16", "accepted", start=mark)
    mark = await rig.send("ldc", "cancel", "c-16a", ref="d-16")
    assert (await rig.response("c-16a", "rejected", start=mark))["reason"] == "UNAUTHORIZED"
    mark = await rig.send("ieso", "cancel", "c-16b", ref="nothing-like-it")
    assert (await rig.response("c-16b", "rejected", start=mark))["reason"] == "UNKNOWN_REF"
    t = await rig.telemetry(start=mark)
    assert t["serving"] == [{"ref": "d-16", "kw": pytest.approx(150.0)}]
    mark = await rig.send("ieso", "cancel", "c-16c", ref="d-16")
    await rig.response("c-16c", "accepted", role="ieso", start=mark)
    await rig.response("d-16", "cancelled", role="ieso", start=mark)
    t = await rig.telemetry(lambda t: t["serving"] == [], start=mark)
    assert t["effective"]["target_kw"] != pytest.approx(150.0)


async def test_tdc_22_silent_device_goes_offline_others_take_its_share_and_it_comes_back(rig: Rig) -> None:
    mark = await rig.send("ieso", "dispatch", "d-22", **dispatch(150.0))
    await rig.wait_meter(lambda p: abs(p - 150.0) <= TOL)
    rig.sim.devices["pv1"].set_fault("silent")
    t = await rig.telemetry(lambda t: not next(d for d in t["devices"] if d["id"] == "pv1")["online"],
                            start=mark)
    assert all(d["online"] for d in t["devices"] if d["id"] != "pv1")
    # pv1 still produces (it only stopped answering), so the gateway cannot count on shedding it;
    # the target is still met by the others because the meter closes the loop.
    await rig.wait_meter(lambda p: abs(p - 150.0) <= TOL, timeout=30)
    mark = len(rig.peer.messages)
    rig.sim.devices["pv1"].set_fault("none")
    await rig.telemetry(lambda t: all(d["online"] for d in t["devices"]), start=mark, timeout=40)
    await rig.wait_meter(lambda p: abs(p - 150.0) <= TOL)


async def test_tdc_16_a_disconnect_and_a_hold_cancelled_back_to_back_return_to_the_dispatch_without_overshoot(
        rig: Rig) -> None:
    # The demo's step 9: each cancel triggers a cycle on the last readings, the site still at 0. The second
    # took the site for steady and the loop's target trim took the whole shortfall: the PCC went to
    # 298.9 kW against the 200 kW target (and the 300 kW export cap) once the devices had ramped up.
    await rig.send("ieso", "dispatch", "d-16r", **dispatch(200.0))
    await rig.wait_meter(lambda p: abs(p - 200.0) <= TOL, timeout=30)
    await rig.send("ldc", "override", "h-16r", action="hold", reason="switching", start=0)
    await rig.send("ldc", "override", "x-16r", action="disconnect", reason="emergency", start=0)
    await rig.wait_meter(lambda p: p < -100.0)  # every device off: the site imports its load
    sampler = Sampler(rig)
    mark = await rig.send("ldc", "cancel", "c-16x", ref="x-16r")
    await rig.send("ldc", "cancel", "c-16h", ref="h-16r")
    await rig.response("c-16h", "accepted", role="ldc", start=mark)
    await rig.wait_meter(lambda p: abs(p - 200.0) <= TOL, timeout=40)
    # the ramps overshoot a little as the battery gives way to the PV (feedforward, as before the loop)
    assert await sampler.stop() <= 200.0 + 40.0
