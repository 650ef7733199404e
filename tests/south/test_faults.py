"""Device faults from the simulators: silent, exception, reboot; and two unit ids behind one endpoint."""

from __future__ import annotations

import asyncio

import pytest

from gateway.south.device import DeviceFault, DeviceOffline, Setpoint
from tests.south.conftest import reading_of, wait_until

pytestmark = pytest.mark.asyncio

FAST = {"timeout_s": 0.3}


async def test_silent_device_times_out_goes_offline_and_comes_back(run_site) -> None:
    site = await run_site(devices={"pv1": FAST}, site={"control_interval_s": 0.2})
    pv1 = site.devices["pv1"]
    assert await pv1.read() is not None and not pv1.stale
    site.sim.devices["pv1"].set_fault("silent")

    readings = await asyncio.gather(*(d.read() for d in site.devices.values()))
    by_id = dict(zip(site.devices, readings, strict=True))
    assert by_id.pop("pv1") is None
    assert all(r is not None for r in by_id.values()), "the other devices are unaffected"
    assert not pv1.online
    assert isinstance(pv1.last_error, DeviceOffline)
    assert "no answer within 0.3 s" in str(pv1.last_error)
    assert await pv1.read() is None  # waiting for its retry: no I/O, no delay
    await wait_until("pv1 stale after 3 control intervals without a good read", lambda: pv1.stale)

    site.sim.devices["pv1"].set_fault("none")
    await reading_of(pv1, "back online", lambda r: True)
    assert pv1.online and pv1.last_error is None and not pv1.stale


async def test_exception_fault_is_a_clean_error(run_site) -> None:
    site = await run_site()
    bess = site.devices["bess1"]
    site.sim.devices["bess1"].set_fault("exception", code=4)

    assert await bess.read() is None
    assert isinstance(bess.last_error, DeviceFault)
    assert "exception 4 (server device failure)" in str(bess.last_error)
    assert str(bess.last_error).startswith("bess1: ")

    site.sim.devices["bess1"].set_fault("none")
    await reading_of(bess, "answering again", lambda r: True)


async def test_write_refused_with_an_exception_is_recorded_and_retried(run_site) -> None:
    site = await run_site()
    bess = site.devices["bess1"]
    site.sim.devices["bess1"].set_fault("exception", code=4)

    assert not await bess.write(Setpoint(p_kw=20.0))
    assert bess.online, "a device that answers is not offline"
    assert isinstance(bess.last_error, DeviceFault)
    assert [(w.point, w.result) for w in site.writes] == [
        ("704.WSetMod", "exception 4"), ("704.WSet", "exception 4"), ("704.WSetRvrt", "exception 4"),
    ]

    site.sim.devices["bess1"].set_fault("none")
    assert await bess.write(Setpoint(p_kw=20.0))
    assert site.writes[-1].point == "802.SetOp" and site.writes[-1].result == "ok"


async def test_reboot_reconnects_and_reapplies_the_last_setpoint(run_site) -> None:
    site = await run_site()
    pv1, sim_pv1 = site.devices["pv1"], site.sim.devices["pv1"]
    assert await pv1.write(Setpoint(p_kw=100.0))
    await wait_until("pv1 limited", lambda: sim_pv1.active_limit_pct == pytest.approx(40.0))

    sim_pv1.set_fault("reboot", duration_s=1.0)
    # Its volatile registers are back to their power-on values: no limit.
    await wait_until("pv1 rebooted", lambda: sim_pv1.active_limit_pct is None)
    await reading_of(pv1, "back online with the limit re-applied", lambda r: r.limit_pct is not None)
    await wait_until("pv1 limited again", lambda: sim_pv1.active_limit_pct == pytest.approx(40.0))
    assert "reapply" in {w.purpose for w in site.writes_to("pv1", "704.WMaxLimPctEna")}


async def test_two_unit_ids_behind_one_endpoint_share_one_connection(run_site, free_port) -> None:
    port = free_port()
    site = await run_site(devices={"pv1": {"port": port, **FAST}, "bess1": {"port": port, "unit_id": 2}})
    pv1, bess = site.devices["pv1"], site.devices["bess1"]
    assert pv1.unit.endpoint is bess.unit.endpoint
    assert (pv1.unit.unit_id, bess.unit.unit_id) == (1, 2)

    assert await pv1.write(Setpoint(p_kw=100.0))
    assert await bess.write(Setpoint(p_kw=-30.0))
    sim_pv1, sim_bess = site.sim.devices["pv1"], site.sim.devices["bess1"]
    await wait_until("both units follow", lambda: sim_pv1.active_limit_pct == pytest.approx(40.0)
                     and sim_bess.p_kw == pytest.approx(-30.0, abs=0.5))
    r_pv, r_bess = await asyncio.gather(pv1.read(), bess.read())
    assert r_pv is not None and r_pv.limit_pct == pytest.approx(40.0)
    assert r_bess is not None and r_bess.setpoint_kw == pytest.approx(-30.0)

    # One unit going silent costs the other a wait on the shared line, never its answers.
    site.sim.devices["pv1"].set_fault("silent")
    r_pv, r_bess = await asyncio.gather(pv1.read(), bess.read())
    assert r_pv is None and not pv1.online
    assert r_bess is not None and bess.online
