"""Commands written by the driver, seen in the right registers by pysunspec2 and obeyed by the simulators."""

from __future__ import annotations

import asyncio

import pytest

from gateway.south.device import Setpoint
from tests.south.conftest import reading_of, reference_read, wait_until

pytestmark = pytest.mark.asyncio


async def test_pv_limit_goes_to_704_with_reversion_and_output_follows(run_site) -> None:
    site = await run_site()
    pv1, sim_pv1 = site.devices["pv1"], site.sim.devices["pv1"]
    cfg = next(d for d in site.config.devices if d.id == "pv1")

    assert await pv1.write(Setpoint(p_kw=100.0))  # 40 % of 250 kW

    ctl = (await reference_read(cfg.port))[704]
    assert ctl["WMaxLimPct"] == pytest.approx(40.0)
    assert ctl["WMaxLimPctEna"] == 1
    assert ctl["WMaxLimPctRvrtTms"] == cfg.reversion_timeout_s
    assert ctl["WMaxLimPctRvrt"] == pytest.approx(cfg.safe_limit_pct)
    assert ctl["WMaxLimPctEnaRvrt"] == 1
    # Only the points meant to change were written, the enable last.
    assert [w.point for w in site.writes_to("pv1") if w.purpose == "setpoint"] == [
        "704.WMaxLimPct", "704.WMaxLimPctRvrt", "704.WMaxLimPctEnaRvrt", "704.WMaxLimPctRvrtTms",
        "704.WMaxLimPctEna",
    ]
    assert all(w.result == "ok" for w in site.writes)

    await wait_until("pv1 output down to its limit", lambda: sim_pv1.p_kw == pytest.approx(100.0, abs=0.5))
    # the registers follow the output at the inverter's measurement refresh
    r = await reading_of(pv1, "limit and output read back",
                         lambda r: r.limit_pct is not None and r.p_kw == pytest.approx(100.0, abs=0.5))
    assert r.limit_pct == pytest.approx(40.0)
    assert r.setpoint_kw == pytest.approx(100.0)


async def test_a_new_pv_limit_writes_the_value_alone_and_concurrent_commands_write_once(run_site) -> None:
    site = await run_site()
    pv1, sim_pv1 = site.devices["pv1"], site.sim.devices["pv1"]
    assert await pv1.write(Setpoint(p_kw=100.0))
    first = len(site.writes_to("pv1"))

    assert await pv1.write(Setpoint(p_kw=125.0))  # 50 %: the reversion settings and enable stand
    assert [(w.point, w.raw) for w in site.writes_to("pv1")[first:]] == [("704.WMaxLimPct", 5000)]
    await wait_until("pv1 limited to 50 %", lambda: sim_pv1.active_limit_pct == pytest.approx(50.0))

    # The writer and a read's refresh at once: the second waits for the first and finds it done.
    second = len(site.writes_to("pv1"))
    results = await asyncio.gather(pv1.write(Setpoint(p_kw=75.0)), pv1.write(Setpoint(p_kw=75.0)))
    assert results == [True, True]
    assert [(w.point, w.raw) for w in site.writes_to("pv1")[second:]] == [("704.WMaxLimPct", 3000)]


async def test_legacy_pv_limit_goes_to_123(run_site) -> None:
    site = await run_site()
    pv2, sim_pv2 = site.devices["pv2"], site.sim.devices["pv2"]
    cfg = next(d for d in site.config.devices if d.id == "pv2")

    assert await pv2.write(Setpoint(p_kw=60.0))  # 40 % of 150 kW

    ctl = (await reference_read(cfg.port))[123]
    assert ctl["WMaxLimPct"] == pytest.approx(40.0)
    # 123 would revert to "no limit": the timer is 0, so the inverter keeps the gateway's last limit;
    # Conn would go back to CONNECT: its timer is 0 too
    assert ctl["WMaxLimPct_RvrtTms"] == 0
    assert ctl["WMaxLim_Ena"] == 1
    assert ctl["Conn_RvrtTms"] == 0 and ctl["Conn"] == 1
    assert {w.point for w in site.writes_to("pv2")} == {
        "123.WMaxLimPct", "123.WMaxLimPct_RvrtTms", "123.WMaxLim_Ena", "123.Conn_RvrtTms", "123.Conn",
    }
    await wait_until("pv2 output down to its limit", lambda: sim_pv2.p_kw == pytest.approx(60.0, abs=0.5))


async def test_battery_charges_and_discharges_on_its_setpoint(run_site) -> None:
    site = await run_site()
    bess, sim_bess = site.devices["bess1"], site.sim.devices["bess1"]
    cfg = next(d for d in site.config.devices if d.id == "bess1")

    assert await bess.write(Setpoint(p_kw=-80.0))
    ctl = (await reference_read(cfg.port))[704]
    assert (ctl["WSetEna"], ctl["WSetMod"], ctl["WSet"]) == (1, 1, pytest.approx(-80000))
    assert (ctl["WSetRvrt"], ctl["WSetEnaRvrt"], ctl["WSetRvrtTms"]) == (0, 1, cfg.reversion_timeout_s)
    await wait_until("battery charging at 80 kW", lambda: sim_bess.p_kw == pytest.approx(-80.0, abs=0.5))
    r = await reading_of(bess, "charge read back", lambda r: r.p_kw == pytest.approx(-80.0, abs=0.5))
    assert r.setpoint_kw == pytest.approx(-80.0)

    assert await bess.write(Setpoint(p_kw=50.0))
    await wait_until("battery discharging at 50 kW", lambda: sim_bess.p_kw == pytest.approx(50.0, abs=0.5))
    await reading_of(bess, "discharge read back", lambda r: r.setpoint_kw == pytest.approx(50.0))


@pytest.mark.parametrize(
    ("device_id", "point", "off", "on"),
    [("pv1", "703.ES", 0, 1), ("pv2", "123.Conn", 0, 1), ("bess1", "802.SetOp", 2, 1)],
)
async def test_disconnect_and_connect(run_site, device_id: str, point: str, off: int, on: int) -> None:
    site = await run_site()
    dev, sim_dev = site.devices[device_id], site.sim.devices[device_id]
    p_kw = 10.0 if device_id == "bess1" else 50.0

    assert await dev.write(Setpoint(p_kw=p_kw, connect=False))
    await wait_until(f"{device_id} ceases to energize", lambda: not sim_dev.connected and sim_dev.p_kw == 0)
    await reading_of(dev, "disconnected read back", lambda r: r.connected is False)
    # Disconnect goes first (its reversion timer, if any, just before it), before the power command.
    writes = site.writes_to(device_id)
    first_power = next(i for i, w in enumerate(writes) if w.purpose != "connect")
    assert (writes[first_power - 1].point, writes[first_power - 1].raw) == (point, off)

    assert await dev.write(Setpoint(p_kw=p_kw, connect=True))
    assert site.writes_to(device_id, point)[-1].raw == on
    await wait_until(f"{device_id} back in service", lambda: sim_dev.connected and sim_dev.p_kw > 1)
    await reading_of(dev, "connected read back", lambda r: r.connected is True)


async def test_nothing_is_written_before_the_first_command(run_site) -> None:
    # After a restart the first write a device sees must carry the restored limits (TDC-19).
    site = await run_site()
    pv1 = site.devices["pv1"]
    for _ in range(3):
        assert await pv1.read() is not None
    assert site.writes_to("pv1") == []


async def test_controller_heartbeat_counts_up_in_715(run_site) -> None:
    site = await run_site()
    pv1 = site.devices["pv1"]
    cfg = next(d for d in site.config.devices if d.id == "pv1")
    assert await pv1.write(Setpoint(p_kw=200.0))

    def beats() -> list:
        return [w for w in site.writes_to("pv1") if w.purpose == "heartbeat"]

    async def two_beats() -> bool:
        await pv1.read()  # the control loop's read keeps the heartbeat going, at most once a second
        return len(beats()) >= 2

    await wait_until("two heartbeats written", two_beats)
    raws = [w.raw for w in beats()]
    assert {w.point for w in beats()} == {"715.ControllerHb"}
    assert raws == list(range(raws[0], raws[0] + len(raws)))
    assert (await reference_read(cfg.port))[715]["ControllerHb"] >= raws[-1]
