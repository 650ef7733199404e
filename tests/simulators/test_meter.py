"""The PCC meter reads Σ DER output − site load, positive = export, consistent per phase."""

from __future__ import annotations

import pytest

from simulators.site import SiteSimulator
from tests.simulators.util import SunSpecReader, eventually

pytestmark = pytest.mark.asyncio


def balanced(sim: SiteSimulator) -> bool:
    return abs(sim.meter_p_kw - (sim.der_p_kw - sim.load_kw)) < 1e-6


async def test_meter_is_der_sum_minus_load(start_site) -> None:
    sim: SiteSimulator = await start_site(simulator={"irradiance_pu": 0.9, "load_kw": 120.0})
    assert sim.meter_p_kw == pytest.approx(225.0 + 135.0 + 27.0 - 120.0)  # pv1, pv2, pv3 (DNP3), load
    async with SunSpecReader(sim.site.meter) as meter, SunSpecReader(sim.devices["bess1"].cfg) as bess:
        sf = (await meter.read(203))["W_SF"]

        async def meter_reads(kw: float) -> bool:
            m = await meter.read(203)
            return abs(m["W"] - kw * 1000.0) <= 10**sf and m["WphA"] + m["WphB"] + m["WphC"] == m["W"]

        # more load than generation: the site imports, W < 0
        sim.set_load(500.0)
        await eventually(lambda: meter_reads(387.0 - 500.0), what="import at the PCC")
        # less sun
        sim.set_irradiance(0.2)
        await eventually(lambda: meter_reads(50.0 + 30.0 + 6.0 - 500.0), what="less PV")
        # the battery discharging adds to the DER sum
        await bess.write(704, WSetMod=1, WSet=100_000, WSetEna=1)
        await eventually(lambda: meter_reads(50.0 + 30.0 + 6.0 + 100.0 - 500.0), what="battery discharging")
        assert balanced(sim)
        m = await meter.read(203)
        assert m["VA"] >= abs(m["W"])
        assert m["PF"] < 0  # importing: the power factor carries the sign of W
        assert m["TotWhImp"] > 0


async def test_meter_follows_the_load_profile(start_site) -> None:
    sim: SiteSimulator = await start_site(
        simulator={"irradiance_pu": 0.0, "load_kw": 100.0, "load_variation_kw": 30.0, "load_period_s": 2.0}
    )
    seen: list[float] = []

    def swung() -> bool:
        seen.append(sim.meter_p_kw)
        return max(seen) >= -100.0 + 0.9 * 30.0 and min(seen) <= -100.0 - 0.9 * 30.0

    await eventually(swung, timeout=10.0, what="the load sine seen at the meter")
    assert all(-130.5 <= p <= -69.5 for p in seen)
