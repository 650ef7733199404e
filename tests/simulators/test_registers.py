"""Register-level behaviour seen from a plain pymodbus client: read-only points, bounds, unit ids."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient

from gateway.config import DeviceConfig
from simulators.site import SiteSimulator

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def pv1(start_site) -> AsyncIterator[tuple[SiteSimulator, DeviceConfig, AsyncModbusTcpClient]]:
    sim: SiteSimulator = await start_site()
    cfg = sim.devices["pv1"].cfg
    client = AsyncModbusTcpClient(cfg.host, port=cfg.port, timeout=5, retries=0)
    assert await client.connect()
    yield sim, cfg, client
    client.close()


async def test_writes_to_read_only_registers_are_ignored(pv1) -> None:
    sim, cfg, client = pv1
    m = sim.devices["pv1"].map
    for model, point, bogus in [(701, "W_SF", 3), (701, "ID", 999), (701, "L", 7), (702, "WMaxRtg", 1),
                                (701, "W", 1234), (1, "DA", 42), (704, "VarSetEna", 1)]:
        addr = m.address(model, point)
        before = (await client.read_holding_registers(addr, count=1, device_id=cfg.unit_id)).registers
        rr = await client.write_register(addr, bogus, device_id=cfg.unit_id)
        assert not rr.isError(), (model, point)  # accepted on the wire ...
        after = (await client.read_holding_registers(addr, count=1, device_id=cfg.unit_id)).registers
        assert after == before, (model, point)  # ... never applied
    assert m.get(701, "W_SF") == 1
    assert m.get(704, "VarSetEna") is None  # an unimplemented control stays "not implemented"


async def test_a_write_spanning_read_only_points_applies_only_the_writable_ones(pv1) -> None:
    sim, cfg, client = pv1
    m = sim.devices["pv1"].map
    # 704 from WMaxLimPctEna to WMaxLimPctRvrtRem: Ena, Pct, Rvrt, EnaRvrt, RvrtTms (RW), RvrtRem (R)
    start = m.address(704, "WMaxLimPctEna")
    end = m.address(704, "WMaxLimPctRvrtRem") + 2
    regs = [1, 5000, 2000, 1, 0, 30, 0xAAAA, 0xAAAA]
    assert end - start == len(regs)
    rr = await client.write_registers(start, regs, device_id=cfg.unit_id)
    assert not rr.isError()
    assert m.get(704, "WMaxLimPctEna") == 1
    assert m.eng(704, "WMaxLimPct") == pytest.approx(50.0)
    assert m.get(704, "WMaxLimPctRvrtTms") == 30
    assert 0 < m.get(704, "WMaxLimPctRvrtRem") <= 30  # the device's countdown, not 0xAAAAAAAA


async def test_outside_the_map_is_an_illegal_address(pv1) -> None:
    sim, cfg, client = pv1
    end = sim.devices["pv1"].map.end
    for addr in (0, 39999, end):
        rr = await client.read_holding_registers(addr, count=1, device_id=cfg.unit_id)
        assert rr.isError() and rr.exception_code == 2
    rr = await client.read_holding_registers(end - 1, count=2, device_id=cfg.unit_id)  # straddles the end
    assert rr.isError() and rr.exception_code == 2
    rr = await client.write_register(end + 10, 1, device_id=cfg.unit_id)
    assert rr.isError() and rr.exception_code == 2


async def test_unknown_unit_id_answers_gateway_target_failed(pv1) -> None:
    _, cfg, client = pv1
    rr = await client.read_holding_registers(40000, count=2, device_id=cfg.unit_id + 1)
    assert rr.isError() and rr.exception_code == 0x0B
    rr = await client.write_register(40000, 1, device_id=cfg.unit_id + 1)
    assert rr.isError() and rr.exception_code == 0x0B
    # ... and the device itself still answers on the same connection
    rr = await client.read_holding_registers(40000, count=2, device_id=cfg.unit_id)
    assert rr.registers == [0x5375, 0x6E53]


async def test_coil_access_is_an_illegal_function(pv1) -> None:
    _, cfg, client = pv1
    rr = await client.read_coils(40000, count=8, device_id=cfg.unit_id)
    assert rr.isError() and rr.exception_code == 1


async def test_devices_sharing_a_port_answer_under_their_own_unit_ids(start_site, free_port) -> None:
    port = free_port()
    sim: SiteSimulator = await start_site(devices={"pv1": {"port": port, "unit_id": 1},
                                                   "pv2": {"port": port, "unit_id": 2}})
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
    assert await client.connect()
    try:
        for unit, model in ((1, 701), (2, 103)):
            rr = await client.read_holding_registers(40070, count=1, device_id=unit)
            assert rr.registers == [model]
        rr = await client.read_holding_registers(40070, count=1, device_id=3)
        assert rr.exception_code == 0x0B
    finally:
        client.close()
    assert sim.devices["pv2"].cfg.port == port
