"""Fault modes, seen from a pymodbus client: silent, exception, slow, reboot; driven in-process and
through the control socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from gateway.config import DeviceConfig
from simulators.control import ControlClient, ControlError
from simulators.site import SiteSimulator
from tests.simulators.util import SunSpecReader, eventually

pytestmark = pytest.mark.asyncio

SUNS = [0x5375, 0x6E53]


@pytest_asyncio.fixture
async def pv1(start_site) -> AsyncIterator[tuple[SiteSimulator, DeviceConfig, AsyncModbusTcpClient]]:
    sim: SiteSimulator = await start_site()
    cfg = sim.devices["pv1"].cfg
    client = AsyncModbusTcpClient(cfg.host, port=cfg.port, timeout=1, retries=0)
    assert await client.connect()
    yield sim, cfg, client
    client.close()


async def read_suns(client: AsyncModbusTcpClient, cfg: DeviceConfig):
    return await client.read_holding_registers(40000, count=2, device_id=cfg.unit_id)


async def test_silent_accepts_connections_and_never_answers(pv1) -> None:
    sim, cfg, client = pv1
    sim.devices["pv1"].set_fault("silent")
    assert sim.devices["pv1"].fault == "silent"
    with pytest.raises(ModbusIOException):
        await read_suns(client, cfg)
    # a new TCP connection is still accepted
    _, writer = await asyncio.open_connection(cfg.host, cfg.port)
    writer.close()
    sim.devices["pv1"].set_fault("none")
    assert await client.connect()
    assert (await read_suns(client, cfg)).registers == SUNS


async def test_exception_answers_every_request_with_the_code(pv1) -> None:
    sim, cfg, client = pv1
    dev = sim.devices["pv1"]
    dev.set_fault("exception")
    rr = await read_suns(client, cfg)
    assert rr.isError() and rr.exception_code == 4  # SERVER_DEVICE_FAILURE
    rr = await client.write_register(dev.map.address(704, "WMaxLimPctEna"), 1, device_id=cfg.unit_id)
    assert rr.isError() and rr.exception_code == 4
    assert dev.map.get(704, "WMaxLimPctEna") == 0  # the refused write was not applied
    dev.set_fault("exception", code=6)  # SERVER_DEVICE_BUSY
    assert (await read_suns(client, cfg)).exception_code == 6
    dev.set_fault("none")
    assert (await read_suns(client, cfg)).registers == SUNS


async def test_slow_answers_after_the_delay(pv1) -> None:
    sim, cfg, _ = pv1
    sim.devices["pv1"].set_fault("slow", delay_s=1.0)
    client = AsyncModbusTcpClient(cfg.host, port=cfg.port, timeout=5, retries=0)
    assert await client.connect()
    try:
        t0 = time.monotonic()
        rr = await read_suns(client, cfg)
        assert rr.registers == SUNS
        assert time.monotonic() - t0 >= 0.9
        # writes are slow too, and still applied
        t0 = time.monotonic()
        rr = await client.write_register(sim.devices["pv1"].map.address(715, "AlarmReset"), 1,
                                         device_id=cfg.unit_id)
        assert not rr.isError() and time.monotonic() - t0 >= 0.9
        assert sim.devices["pv1"].map.get(715, "AlarmReset") == 1
    finally:
        client.close()


async def test_reboot_drops_connections_refuses_then_serves_defaults(pv1) -> None:
    sim, cfg, client = pv1
    dev = sim.devices["pv1"]
    rr = await client.write_registers(dev.map.address(704, "WMaxLimPctEna"), [1, 4000], device_id=cfg.unit_id)
    assert not rr.isError()
    await eventually(lambda: abs(dev.p_kw - 100.0) < 0.5, what="limited to 40 %")
    reader, writer = await asyncio.open_connection(cfg.host, cfg.port)

    dev.set_fault("reboot", duration_s=1.5)
    assert dev.fault == "reboot"
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # our connection was dropped
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(cfg.host, cfg.port)

    await eventually(lambda: dev.fault == "none", timeout=10, what="back from reboot")
    assert await client.connect()
    addr = dev.map.address(704, "WMaxLimPctEna")
    regs = (await client.read_holding_registers(addr, count=2, device_id=cfg.unit_id)).registers
    assert regs == [0, 10000]  # the limit is gone: volatile registers back to power-on values
    await eventually(lambda: abs(dev.p_kw - 225.0) < 0.5, what="unlimited again")


async def test_control_socket_drives_faults_sun_and_load(start_site) -> None:
    sim: SiteSimulator = await start_site(simulator={"irradiance_pu": 0.9, "load_kw": 120.0})
    port = sim.site.simulator.control_port
    assert port is not None
    async with ControlClient(port) as ctl:
        state = await ctl.state()
        assert set(state["devices"]) == {"pv1", "pv2", "pv3", "bess1", "meter"}
        assert state["devices"]["pv1"]["p_kw"] == pytest.approx(225.0)
        assert state["meter_p_kw"] == pytest.approx(267.0, abs=0.5)  # pv3 (DNP3) gives 27 kW

        await ctl.fault("meter", "exception", code=11)
        assert sim.meter.fault == "exception"
        await ctl.fault("meter", "none")
        await ctl.irradiance(0.5)
        await ctl.load(100.0)
        expected = 125.0 + 75.0 + 15.0 - 100.0  # pv1, pv2, pv3 (DNP3), load
        await eventually(lambda: abs(sim.meter_p_kw - expected) < 0.5, what="new sun and load")
        assert (await ctl.state())["load_kw"] == pytest.approx(100.0)
        site = await ctl.site()  # the site without its devices
        assert "devices" not in site
        assert site["load_kw"] == pytest.approx(100.0)
        assert site["meter_p_kw"] == pytest.approx(expected, abs=0.5)

        with pytest.raises(ControlError, match="unknown device"):
            await ctl.fault("nope", "silent")
        with pytest.raises(ControlError, match="unknown fault mode"):
            await ctl.fault("pv1", "wobbly")
        with pytest.raises(ControlError, match="unknown cmd"):
            await ctl.request("dance")
        with pytest.raises(ControlError, match="irradiance"):
            await ctl.irradiance(7.0)
        # the connection survives refused commands
        await ctl.fault("pv1", "reboot", duration_s=0.5)
        assert sim.devices["pv1"].fault == "reboot"
        await eventually(lambda: sim.devices["pv1"].fault == "none", what="reboot over")


async def test_stuck_pv_answers_and_reads_back_writes_but_its_output_keeps_the_old_limit(start_site) -> None:
    sim: SiteSimulator = await start_site()  # sun 0.9: pv1 (250 kW) and pv2 (150 kW) unlimited at 90 %
    pv1, pv2 = sim.devices["pv1"], sim.devices["pv2"]
    async with SunSpecReader(pv1.cfg) as r1, SunSpecReader(pv2.cfg) as r2:
        await r1.write(704, WMaxLimPct=40.0, WMaxLimPctEna=1)
        await r2.write(123, WMaxLimPct=40.0, WMaxLim_Ena=1)
        await eventually(lambda: abs(pv1.p_kw - 100.0) < 0.5 and abs(pv2.p_kw - 60.0) < 0.5,
                         what="both limited to 40 %")
        pv1.set_fault("stuck")
        assert pv1.fault == "stuck"
        await r1.write(704, WMaxLimPct=10.0)
        await r2.write(123, WMaxLimPct=10.0)  # the witness: a device that follows the same command
        assert (await r1.read(704))["WMaxLimPct"] == pytest.approx(10.0)  # the write reads back
        outputs = []

        def pv2_followed() -> bool:
            outputs.append(pv1.p_kw)
            return abs(pv2.p_kw - 15.0) < 0.5

        await eventually(pv2_followed, what="pv2 at its new 10 % limit")
        assert min(outputs) == pytest.approx(100.0, abs=0.5), "stuck pv1 followed the new limit"
        assert pv1.active_limit_pct == pytest.approx(40.0)  # the limit the physics keeps

        pv1.set_fault("none")
        await eventually(lambda: abs(pv1.p_kw - 25.0) < 0.5, what="pv1 follows again once the fault clears")


async def test_stuck_battery_keeps_its_setpoint_whatever_is_written(start_site) -> None:
    # a 1 kWh battery: 50 kW moves its SoC by ~1.4 %/s, so the SoC shows which way it really goes
    small = {"sim": {"capacity_kwh": 1.0, "initial_soc_pct": 70.0}}
    sim: SiteSimulator = await start_site(devices={"bess1": small})
    bess = sim.devices["bess1"]
    async with SunSpecReader(bess.cfg) as r:
        await r.write(704, WSetMod=1, WSet=50_000, WSetEna=1)  # discharge 50 kW
        await eventually(lambda: abs(bess.p_kw - 50.0) < 0.5, what="discharging at 50 kW")
        bess.set_fault("stuck")
        await r.write(704, WSet=-50_000)  # charge: not followed
        assert (await r.read(704))["WSet"] == -50_000
        soc = bess.soc_pct
        # a battery following the new setpoint would have turned to charging within its 1 s response
        await eventually(lambda: bess.soc_pct < soc - 5.0, what="the SoC still falling 3.6 s later")
        assert bess.p_kw == pytest.approx(50.0, abs=0.5)
        bess.set_fault("none")
        await eventually(lambda: abs(bess.p_kw + 50.0) < 0.5, what="charging once the fault clears")


async def test_stuck_through_the_control_socket_and_not_for_the_meter(start_site) -> None:
    sim: SiteSimulator = await start_site()
    port = sim.site.simulator.control_port
    assert port is not None
    async with ControlClient(port) as ctl:
        await ctl.fault("pv1", "stuck")
        assert (await ctl.state())["devices"]["pv1"]["fault"] == "stuck"
        with pytest.raises(ControlError, match="unknown fault mode 'stuck' for a simulated meter"):
            await ctl.fault("meter", "stuck")
        assert sim.meter.fault == "none"  # the refused command changed nothing
        await ctl.fault("pv1", "silent")  # one fault at a time: the new one replaces it
        assert sim.devices["pv1"].fault == "silent" and not sim.devices["pv1"].stuck
        await ctl.fault("pv1", "none")
        assert sim.devices["pv1"].fault == "none"


@pytest.mark.parametrize("sf", [100, -100, 0x7FFF])
async def test_bad_sf_serves_every_scale_factor_out_of_range_and_leaves_the_map_alone(pv1, sf: int) -> None:
    sim, cfg, client = pv1
    dev = sim.devices["pv1"]
    w_sf = dev.map.address(701, "W_SF")
    before = (await client.read_holding_registers(w_sf, count=1, device_id=cfg.unit_id)).registers
    dev.set_fault("bad_sf", sf=sf)
    assert dev.fault == "bad_sf"
    for mid, name in ((701, "W_SF"), (702, "W_SF"), (704, "WMaxLimPct_SF")):
        rr = await client.read_holding_registers(dev.map.address(mid, name), count=1, device_id=cfg.unit_id)
        assert rr.registers == [sf & 0xFFFF]
    assert dev.map.get(701, "W_SF") == before[0]  # the device itself keeps its scale factors
    dev.set_fault("none")
    assert (await client.read_holding_registers(w_sf, count=1, device_id=cfg.unit_id)).registers == before


async def test_nan_and_garbage_change_the_measurements_on_the_wire_only(pv1) -> None:
    sim, cfg, client = pv1
    dev = sim.devices["pv1"]
    w, hz = dev.map.address(701, "W"), dev.map.address(701, "Hz")

    async def regs(address: int, count: int = 1) -> list[int]:
        return (await client.read_holding_registers(address, count=count, device_id=cfg.unit_id)).registers

    good_w = await regs(w)
    dev.set_fault("nan")  # an int16 cannot be NaN: it reads SunSpec's "not implemented"
    assert await regs(w) == [0x8000] and await regs(hz) == [0xFFFF]
    assert await regs(dev.map.address(701, "W_SF")) != [0x8000]  # scale factors are not measurements
    assert await regs(dev.map.address(702, "WMaxRtg")) != [0x8000]  # nor are ratings
    dev.set_fault("garbage")
    draws = {tuple(await regs(w, 40)) for _ in range(5)}
    assert len(draws) == 5, "a new draw on every read"
    dev.set_fault("none")
    assert await regs(w) == good_w
    with pytest.raises(ValueError, match="a bad scale factor is outside"):
        dev.set_fault("bad_sf", sf=3)
    assert dev.fault == "none"  # refused: nothing changed


async def test_value_faults_through_the_control_socket(start_site) -> None:
    sim: SiteSimulator = await start_site()
    port = sim.site.simulator.control_port
    assert port is not None
    async with ControlClient(port) as ctl:
        await ctl.fault("meter", "bad_sf", sf=-100)
        assert sim.meter.fault == "bad_sf"
        reg = sim.meter.map.address(203, "W_SF")
        assert sim.meter.read(reg, 1) == [-100 & 0xFFFF]
        await ctl.fault("meter", "nan")
        assert sim.meter.read(sim.meter.map.address(203, "W"), 1) == [0x8000]
        await ctl.fault("pv3", "nan")  # DNP3
        assert sim.devices["pv3"].fault == "nan"
        with pytest.raises(ControlError, match="unknown fault mode 'bad_sf' for a DNP3 device"):
            await ctl.fault("pv3", "bad_sf")  # DNP3 points carry no scale factors
        await ctl.fault("pv3", "none")
        await ctl.fault("meter", "none")
        assert sim.meter.read(reg, 1) != [-100 & 0xFFFF]
