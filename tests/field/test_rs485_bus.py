"""Several devices on one RS-485 line (a real pseudo-terminal pair, Modbus RTU framing end to end):
controlled together, one request in flight at a time, a silent one costing the others no more than its
own timeout, and a failed line retried with backoff while another line carries on."""

from __future__ import annotations

import asyncio

import pytest

from gateway.south.bus_device import BusDevice
from gateway.south.device import DeviceOffline, Setpoint
from tests.field.conftest import rtu
from tests.south.conftest import reading_of, wait_until

pytestmark = pytest.mark.asyncio


def three_on_one_line(line, meter_port: int) -> list[dict]:
    """A SunSpec 1547 inverter, a Huawei (vendor map) and a legacy SunSpec inverter on one line."""
    return [
        rtu(line, 1, id="inv1", kind="pv", sim={"rated_kw": 100.0}),
        rtu(line, 2, id="inv2", kind="pv", protocol="modbus", profile="huawei_sun2000",
            sim={"rated_kw": 50.0}),
        rtu(line, 3, id="inv3", kind="pv", sim={"rated_kw": 80.0, "variant": "legacy"}),
        {"id": "meter", "kind": "meter", "port": meter_port},
    ]


async def test_three_devices_on_one_line_are_controlled_together(line, field_site, free_port) -> None:
    bus = await line("rs485")
    site = await field_site(three_on_one_line(bus, free_port()))
    inverters = [site.devices[i] for i in ("inv1", "inv2", "inv3")]
    units = [d.unit for d in inverters if isinstance(d, BusDevice)]
    assert len({id(u.endpoint) for u in units}) == 1, "one connection (one serial port) for the line"
    assert str(units[0].endpoint) == bus.gateway_end

    # Commanded together: each task queues on the line and the line serves them in turn.
    assert all(await asyncio.gather(*(d.write(Setpoint(p_kw=20.0)) for d in inverters)))
    for dev, rated in zip(inverters, (100.0, 50.0, 80.0), strict=True):
        pct = 100 * 20.0 / rated
        sim = site.sim.devices[dev.id]
        await wait_until(f"{dev.id} limited to 20 kW",
                         lambda s=sim, pct=pct: s.active_limit_pct == pytest.approx(pct))
        r = await reading_of(dev, "output at the limit", lambda r: r.p_kw == pytest.approx(20.0, abs=0.5))
        assert r.limit_pct == pytest.approx(pct)
    # every write went out and was answered on the line
    assert {w.result for w in site.writes} == {"ok"}
    assert {w.device_id for w in site.writes} == {"inv1", "inv2", "inv3"}


async def test_a_silent_device_does_not_stall_the_others_beyond_its_timeout(
    line, field_site, free_port
) -> None:
    bus = await line("rs485")
    site = await field_site(three_on_one_line(bus, free_port()))
    inv1, inv2, inv3 = (site.devices[i] for i in ("inv1", "inv2", "inv3"))
    site.sim.devices["inv2"].set_fault("silent")

    # Cycles as the control loop runs them: every device read at once. The silent one holds the line
    # for its timeout once, then waits out its backoff without touching the line; the other two are
    # answered in the very cycle in which it timed out, and in every cycle after.
    for cycle in range(6):
        r1, r2, r3 = await asyncio.gather(inv1.read(), inv2.read(), inv3.read())
        assert r2 is None
        assert r1 is not None and r3 is not None, f"cycle {cycle}: {inv1.last_error} / {inv3.last_error}"
    assert isinstance(inv2.last_error, DeviceOffline)
    assert "no answer within 0.5 s" in str(inv2.last_error)
    assert inv1.online and inv3.online and not inv1.stale and not inv3.stale

    # and they take commands while it is silent
    assert await inv1.write(Setpoint(p_kw=30.0)) and await inv3.write(Setpoint(p_kw=40.0))
    sim1, sim3 = site.sim.devices["inv1"], site.sim.devices["inv3"]
    await wait_until("inv1 and inv3 limited", lambda: (sim1.active_limit_pct, sim3.active_limit_pct) == (
        pytest.approx(30.0), pytest.approx(50.0)))
    assert not await inv2.write(Setpoint(p_kw=10.0))  # kept, applied when it answers again

    site.sim.devices["inv2"].set_fault("none")
    await reading_of(inv2, "back on the line with its command", lambda r: r.limit_pct == pytest.approx(20.0))
    assert site.sim.devices["inv2"].active_limit_pct == pytest.approx(20.0)


async def test_a_failed_line_is_retried_with_backoff_while_another_line_carries_on(
    line, field_site, free_port
) -> None:
    bus_a, bus_b = await line("line-a"), await line("line-b")
    site = await field_site([
        rtu(bus_a, 1, id="a1", kind="pv"),
        rtu(bus_a, 2, id="a2", kind="pv", protocol="modbus", profile="huawei_sun2000"),
        rtu(bus_b, 1, id="b1", kind="pv"),
        {"id": "meter", "kind": "meter", "port": free_port()},
    ])
    a1, a2, b1 = (site.devices[i] for i in ("a1", "a2", "b1"))
    assert isinstance(a1, BusDevice) and isinstance(b1, BusDevice)
    await bus_a.stop()  # line A's USB adapter is pulled: its serial port is gone

    async def line_a_down() -> bool:
        await asyncio.gather(a1.read(), a2.read())
        return not a1.online and not a2.online and a1.unit.endpoint.failed_connects > 0

    await wait_until("line A's devices offline, its port failing to open", line_a_down)
    assert isinstance(a1.last_error, DeviceOffline) and isinstance(a2.last_error, DeviceOffline)
    for _ in range(5):  # line B carries on meanwhile
        assert await b1.read() is not None
    assert b1.unit.endpoint.failed_connects == 0

    await bus_a.start()  # plugged back in, at the same path, and the devices on it restart
    site.sim.devices["a1"].set_fault("reboot", duration_s=0.0)
    await reading_of(a1, "line A back", lambda r: True, timeout_s=30)
    await reading_of(a2, "line A back", lambda r: True, timeout_s=30)
    assert a1.unit.endpoint.failed_connects == 0  # reset by the successful reopen
    assert await b1.read() is not None
