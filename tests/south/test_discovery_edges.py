"""Discovery on maps the example site does not have: other base addresses, no end model, no map."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from gateway.config import DeviceConfig
from gateway.south.device import DeviceFault
from gateway.south.modbus_client import ModbusPool
from gateway.south.profile import load_profile
from gateway.south.sunspec_device import SunSpecDevice, discover
from gateway.south.sunspec_models import model_def
from simulators.modbus_server import ModbusEndpoint
from simulators.sunspec_map import SunSpecMap

pytestmark = pytest.mark.asyncio

METER_MODELS = {1: {"Mn": "test"}, 203: {"W": -1234, "W_SF": -1, "Hz": 6000, "Hz_SF": -2}}


class Truncated:
    """A map served without its end model: reading there is an illegal address (exception 2)."""

    def __init__(self, smap: SunSpecMap) -> None:
        self.smap = smap
        self.base = smap.base

    @property
    def end(self) -> int:
        return self.smap.end - 2

    def read(self, address: int, count: int) -> list[int]:
        return self.smap.read(address, count)

    def write(self, address: int, values: list[int]) -> list[int]:
        return self.smap.write(address, values)[0]


@pytest_asyncio.fixture
async def serve(free_port) -> AsyncIterator[Callable[[object], Awaitable[int]]]:
    """`await serve(bank)` → the port of a Modbus endpoint serving `bank` as unit 1."""
    endpoints: list[ModbusEndpoint] = []

    async def _serve(bank: object) -> int:
        ep = ModbusEndpoint("127.0.0.1", free_port())
        ep.add_unit(1, bank)  # type: ignore[arg-type]
        await ep.start()
        endpoints.append(ep)
        return ep.port

    yield _serve
    for ep in endpoints:
        await ep.stop()


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[ModbusPool]:
    p = ModbusPool()
    yield p
    await p.close()


@pytest.mark.parametrize("base", [0, 50000])
async def test_map_at_another_base_address(serve, pool: ModbusPool, base: int) -> None:
    port = await serve(SunSpecMap(METER_MODELS, base=base))
    found = await discover(pool.unit("127.0.0.1", port, 1, 1.0))
    assert found.base == base
    assert list(found.models) == [1, 203]
    assert found.models[203].address == base + 2 + model_def(1).length + 2  # after "SunS" and model 1


async def test_map_without_end_model_is_tolerated_and_read(serve, pool: ModbusPool) -> None:
    port = await serve(Truncated(SunSpecMap(METER_MODELS)))
    found = await discover(pool.unit("127.0.0.1", port, 1, 1.0))
    assert list(found.models) == [1, 203]

    cfg = DeviceConfig(id="m", kind="meter", port=port)
    meter = SunSpecDevice(cfg, unit=pool.unit("127.0.0.1", port, 1, 1.0),
                          profile=load_profile("sunspec", "meter"), stale_after_s=3.0)
    assert await meter.connect()
    r = await meter.read()
    assert r is not None
    assert r.p_kw == pytest.approx(-0.1234)  # -1234 × 10^-1 W, positive = export
    assert r.hz == pytest.approx(60.0)
    assert r.q_kvar is None  # VAR not implemented by this meter


async def test_no_sunspec_map_and_missing_models_are_clean_faults(serve, pool: ModbusPool) -> None:
    port = await serve(SunSpecMap(METER_MODELS, base=1000))  # at none of the standard base addresses
    cfg = DeviceConfig(id="m", kind="meter", port=port)
    meter = SunSpecDevice(cfg, unit=pool.unit("127.0.0.1", port, 1, 1.0),
                          profile=load_profile("sunspec", "meter"), stale_after_s=3.0)
    assert not await meter.connect()
    assert str(meter.last_error) == "m: discovery: no SunSpec map: no 'SunS' marker at 40000, 0, 50000"

    port = await serve(SunSpecMap({1: {"Mn": "not an inverter"}, 203: {"W": 0, "W_SF": 0}}))
    cfg = DeviceConfig(id="pv9", kind="pv", port=port)
    pv = SunSpecDevice(cfg, unit=pool.unit("127.0.0.1", port, 1, 1.0),
                       profile=load_profile("sunspec", "pv"), stale_after_s=3.0)
    assert not await pv.connect()
    assert isinstance(pv.last_error, DeviceFault)
    message = str(pv.last_error)
    assert message.startswith("pv9: found models [1, 203], but the profile needs one of (ieee1547: 701 + 702")
    assert "legacy: 103/102/101 + 120 + 123" in message
    assert not pv.online and pv.stale
