"""Several unit ids behind one TCP endpoint: a TCP-to-RTU converter in front of an RS-485 line (RTU frames
over TCP) and a Modbus TCP gateway; one connection, one request in flight, each unit its own device."""

from __future__ import annotations

import asyncio

import pytest

from gateway.south.bus_device import BusDevice
from gateway.south.device import DeviceOffline, Setpoint
from gateway.south.modbus_client import BusSpec, ModbusPool, ModbusTimeout, SerialLine
from tests.south.conftest import reading_of, wait_until

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("transport", ["rtu_over_tcp", "tcp"])
async def test_two_unit_ids_behind_one_tcp_endpoint(field_site, free_port, transport: str) -> None:
    port = free_port()
    behind = {"transport": transport, "port": port, "timeout_s": 0.5}
    site = await field_site([
        {"id": "pv1", "kind": "pv", "unit_id": 1, **behind, "sim": {"rated_kw": 60.0}},
        {"id": "pv2", "kind": "pv", "unit_id": 2, "protocol": "modbus", "profile": "huawei_sun2000", **behind,
         "sim": {"rated_kw": 40.0}},
        {"id": "meter", "kind": "meter", "port": free_port()},
    ])
    pv1, pv2 = site.devices["pv1"], site.devices["pv2"]
    assert isinstance(pv1, BusDevice) and isinstance(pv2, BusDevice)
    assert pv1.unit.endpoint is pv2.unit.endpoint  # one connection to the converter
    assert pv1.unit.endpoint.spec.transport == transport

    assert all(await asyncio.gather(pv1.write(Setpoint(p_kw=30.0)), pv2.write(Setpoint(p_kw=10.0))))
    await wait_until("both units limited", lambda: (
        site.sim.devices["pv1"].active_limit_pct, site.sim.devices["pv2"].active_limit_pct
    ) == (pytest.approx(50.0), pytest.approx(25.0)))
    r1, r2 = await asyncio.gather(
        reading_of(pv1, "at its limit", lambda r: r.p_kw == pytest.approx(30.0, abs=0.5)),
        reading_of(pv2, "at its limit", lambda r: r.p_kw == pytest.approx(10.0, abs=0.5)),
    )
    assert (r1.rated_kw, r2.rated_kw) == (60.0, 40.0)  # each unit answers for itself

    # One unit silent behind the converter: the other keeps answering on the same connection.
    site.sim.devices["pv2"].set_fault("silent")
    for _ in range(3):
        ok, silent = await asyncio.gather(pv1.read(), pv2.read())
        assert ok is not None and silent is None
    assert isinstance(pv2.last_error, DeviceOffline)


async def test_an_absent_unit_behind_an_rtu_converter_is_silence(field_site, free_port) -> None:
    """On RS-485 nobody answers for a unit id that is not on the line; through a transparent converter
    that is a timeout, not an exception (a Modbus TCP gateway would answer 0x0B instead)."""
    port = free_port()
    await field_site([
        {"id": "pv1", "kind": "pv", "unit_id": 1, "transport": "rtu_over_tcp", "port": port},
        {"id": "meter", "kind": "meter", "port": free_port()},
    ])
    pool = ModbusPool()
    try:
        spec = BusSpec(transport="rtu_over_tcp", port=port)
        assert len(await pool.unit_on(spec, 1, 0.5).read(40000, 2)) == 2
        with pytest.raises(ModbusTimeout, match=r"no answer within 0\.3 s"):
            await pool.unit_on(spec, 7, 0.3).read(40000, 2)
        assert len(await pool.unit_on(spec, 1, 0.5).read(40000, 2)) == 2  # the line is usable after it
    finally:
        await pool.close()


async def test_a_bus_in_use_with_other_settings_is_refused() -> None:
    pool = ModbusPool()
    pool.unit_on(BusSpec(transport="tcp", port=1502), 1, 1.0)
    with pytest.raises(ValueError, match="already in use with other settings"):
        pool.unit_on(BusSpec(transport="rtu_over_tcp", port=1502), 2, 1.0)
    await pool.close()


async def test_the_gap_on_a_serial_line_is_never_below_the_rtu_silent_interval() -> None:
    slow = SerialLine("/dev/ttyUSB0", baudrate=9600)  # 3.5 characters of 10 bits at 9600 baud
    assert slow.silent_interval_s == pytest.approx(3.5 * 10 / 9600)
    assert SerialLine("/dev/ttyUSB0", baudrate=115200).silent_interval_s == pytest.approx(0.00175)
    even_2 = SerialLine("/dev/ttyUSB0", baudrate=9600, parity="E", stopbits=2)  # 12 bits a character
    assert even_2.silent_interval_s == pytest.approx(3.5 * 12 / 9600)
    assert BusSpec(transport="rtu", serial=slow, gap_s=0.0).effective_gap_s == pytest.approx(3.5 * 10 / 9600)
    assert BusSpec(transport="rtu", serial=slow, gap_s=0.05).effective_gap_s == 0.05
    assert BusSpec(transport="rtu_over_tcp", port=4001, gap_s=0.025).effective_gap_s == 0.025  # as configured
