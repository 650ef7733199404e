"""SunSpec devices as some real ones are: the map at base 0 or 50000, voltage and reactive-power scale
factors "not implemented", no end model (reading past the last model is exception 2). Each quirk is a
simulator variant (`sim.quirks`); the gateway must discover, read and limit every one of them."""

from __future__ import annotations

import pytest

from gateway.south.device import Setpoint
from gateway.south.modbus_client import ModbusExceptionResponse
from gateway.south.sunspec_device import SunSpecDevice
from simulators.device import SunSpecDevice as SimDevice
from tests.south.conftest import reading_of, reference_read, wait_until

pytestmark = pytest.mark.asyncio

CASES = [
    ("ieee1547", ["base_0"]),
    ("ieee1547", ["base_50000"]),
    ("ieee1547", ["no_end_model"]),
    ("ieee1547", ["sf_not_implemented"]),
    ("legacy", ["base_50000", "no_end_model", "sf_not_implemented"]),
]


@pytest.mark.parametrize(("variant", "quirks"), CASES, ids=[f"{v}-{'+'.join(q)}" for v, q in CASES])
async def test_quirky_inverter_is_discovered_read_and_limited(
    field_site, free_port, variant: str, quirks: list[str]
) -> None:
    port = free_port()
    site = await field_site([
        {"id": "pv1", "kind": "pv", "port": port,
         "sim": {"variant": variant, "quirks": quirks, "rated_kw": 100.0}},
        {"id": "meter", "kind": "meter", "port": free_port()},
    ])
    pv1, sim = site.devices["pv1"], site.sim.devices["pv1"]
    assert isinstance(pv1, SunSpecDevice) and isinstance(sim, SimDevice)
    base = 0 if "base_0" in quirks else 50000 if "base_50000" in quirks else 40000
    assert sim.map.base == base
    assert all(base <= start < sim.map.end for start, _ in pv1.read_spans)  # found the map where it is

    r = await reading_of(pv1, "producing", lambda r: r.p_kw == pytest.approx(90.0, abs=1.0))
    assert r.rated_kw == pytest.approx(100.0)
    if "sf_not_implemented" in quirks:  # the points whose scale factor is 0x8000 read as not reported
        assert r.q_kvar is None and r.v_pu is None
    else:
        assert r.q_kvar is not None and r.v_pu == pytest.approx(1.0)

    if "no_end_model" in quirks:  # where the end model should be, the device has no registers
        with pytest.raises(ModbusExceptionResponse) as exc:
            await pv1.unit.read(sim.map.end, 2)
        assert exc.value.code == 2
    else:  # and pysunspec2, reading the same device on its own, finds the map at the same place
        ref = await reference_read(port)
        assert ref["base"] == base

    assert await pv1.write(Setpoint(p_kw=40.0))
    await wait_until("limited to 40 %", lambda: sim.active_limit_pct == pytest.approx(40.0))
    r = await reading_of(pv1, "at its limit", lambda r: r.p_kw == pytest.approx(40.0, abs=1.0))
    assert r.limit_pct == pytest.approx(40.0)
