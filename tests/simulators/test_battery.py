"""Battery: charge and discharge through 704 WSet, SoC following the energy, SoC limits, SetOp."""

from __future__ import annotations

import pytest

from simulators.site import SiteSimulator
from tests.simulators.util import SunSpecReader, eventually

pytestmark = pytest.mark.asyncio

SLACK_S = 5.0


def small_battery(**sim: float) -> dict:
    """bess1 shrunk to 1 kWh so that 100 kW moves SoC by ~2.8 %/s, and a test sees it quickly."""
    return {"devices": {"bess1": {"sim": {"rated_kw": 200.0, "capacity_kwh": 1.0, **sim}}}}


async def test_negative_wset_charges_positive_discharges(start_site) -> None:
    sim: SiteSimulator = await start_site(**small_battery(initial_soc_pct=50.0))
    bess = sim.devices["bess1"]
    async with SunSpecReader(bess.cfg) as r:
        await r.write(704, WSetMod=1, WSet=-100_000, WSetEna=1)  # WATTS, charge 100 kW
        await eventually(lambda: abs(bess.p_kw + 100.0) < 0.5, timeout=SLACK_S, what="charging at 100 kW")
        soc0 = (await r.read(713))["SoC"]
        rising = await eventually(lambda: _soc_beyond(r, soc0, +1.0), timeout=SLACK_S, what="SoC rising")
        assert rising["802"]["ChaSt"] == 4  # CHARGING
        assert rising["701"]["W"] == pytest.approx(-100_000, abs=10)
        assert rising["802"]["W"] == pytest.approx(-100_000, abs=10)

        await r.write(704, WSet=150_000)  # discharge 150 kW
        await eventually(lambda: abs(bess.p_kw - 150.0) < 0.5, timeout=SLACK_S, what="discharging")
        soc1 = (await r.read(802))["SoC"]
        falling = await eventually(lambda: _soc_beyond(r, soc1, -1.0), timeout=SLACK_S, what="SoC falling")
        assert falling["802"]["ChaSt"] == 3  # DISCHARGING
        assert falling["701"]["TotWhInj"] > 0 and falling["701"]["TotWhAbs"] > 0


async def _soc_beyond(r: SunSpecReader, soc: float, delta: float) -> dict | None:
    """All of 713/802/701 once both SoC points moved `delta` % past `soc` (and agree)."""
    stor, bat, meas = await r.read(713), await r.read(802), await r.read(701)
    moved = stor["SoC"] - soc if delta > 0 else soc - stor["SoC"]
    if moved >= abs(delta) and bat["SoC"] == pytest.approx(stor["SoC"], abs=0.11):
        return {"713": stor, "802": bat, "701": meas}
    return None


async def test_charging_stops_at_soc_max(start_site) -> None:
    sim: SiteSimulator = await start_site(**small_battery(initial_soc_pct=93.0, soc_max_pct=95.0))
    bess = sim.devices["bess1"]
    async with SunSpecReader(bess.cfg) as r:
        await r.write(704, WSetMod=1, WSet=-200_000, WSetEna=1)
        await eventually(lambda: bess.soc_pct >= 94.9, timeout=SLACK_S, what="SoC at its maximum")
        await eventually(lambda: bess.p_kw == 0.0, timeout=SLACK_S, what="charging stopped")
        bat = await r.read(802)
        assert bat["SoC"] == pytest.approx(95.0, abs=0.1)
        assert bat["SoCMax"] == 95.0
        assert bat["ChaSt"] == 5  # FULL
        # discharging is still allowed from the top
        await r.write(704, WSet=50_000)
        await eventually(lambda: bess.p_kw > 0, timeout=SLACK_S, what="discharging from full")


async def test_discharging_stops_at_soc_min(start_site) -> None:
    sim: SiteSimulator = await start_site(**small_battery(initial_soc_pct=12.0, soc_min_pct=10.0))
    bess = sim.devices["bess1"]
    async with SunSpecReader(bess.cfg) as r:
        await r.write(704, WSetMod=1, WSet=200_000, WSetEna=1)
        await eventually(lambda: bess.soc_pct <= 10.1, timeout=SLACK_S, what="SoC at its minimum")
        await eventually(lambda: bess.p_kw == 0.0, timeout=SLACK_S, what="discharging stopped")
        stor = await r.read(713)
        assert stor["SoC"] == pytest.approx(10.0, abs=0.1)
        assert (await r.read(802))["ChaSt"] == 2  # EMPTY


async def test_setpoint_reverts_to_idle(start_site) -> None:
    sim: SiteSimulator = await start_site()
    bess = sim.devices["bess1"]
    async with SunSpecReader(bess.cfg) as r:
        await r.write(704, WSetMod=1, WSet=80_000, WSetRvrt=0, WSetEnaRvrt=1, WSetRvrtTms=1, WSetEna=1)
        await eventually(lambda: abs(bess.p_kw - 80.0) < 0.5, timeout=SLACK_S, what="discharging at 80 kW")
        await eventually(lambda: bess.map.get(704, "WSet") == 0, timeout=SLACK_S, what="WSet reversion")
        await eventually(lambda: bess.p_kw == 0.0, timeout=SLACK_S, what="idle after reversion")


async def test_setop_disconnect_ceases_output(start_site) -> None:
    sim: SiteSimulator = await start_site()
    bess = sim.devices["bess1"]
    async with SunSpecReader(bess.cfg) as r:
        await r.write(704, WSetMod=1, WSet=-50_000, WSetEna=1)
        await eventually(lambda: abs(bess.p_kw + 50.0) < 0.5, timeout=SLACK_S, what="charging")
        await r.write(802, SetOp=2)  # DISCONNECT
        await eventually(lambda: bess.p_kw == 0.0, timeout=SLACK_S, what="disconnected → 0 W")
        bat = await r.read(802)
        assert bat["State"] == 1  # DISCONNECTED
        assert not bess.connected
