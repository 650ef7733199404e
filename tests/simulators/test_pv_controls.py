"""Active power limit, setpoint, reversion and connect/disconnect of the PV inverter, through pysunspec2."""

from __future__ import annotations

import asyncio

import pytest

from simulators.site import SiteSimulator
from tests.simulators.util import SunSpecReader, eventually

pytestmark = pytest.mark.asyncio

# examples/site.toml: pv1 250 kW ieee1547, pv2 150 kW legacy; response time 1 s (OpenDER AP_RT: a full
# 1 pu change of the limit takes 1 s). At 0.9 pu irradiance pv1 makes 225 kW and pv2 135 kW.
SLACK_S = 5.0


def near(value: float, target: float, tol: float = 0.5) -> bool:
    return abs(value - target) <= tol


async def _measured(r: SunSpecReader, model_id: int, w: float) -> dict | None:
    """The model's points once its `W` reads `w` (± 10 W), else None."""
    points = await r.read(model_id)
    return points if abs(points["W"] - w) <= 10 else None


async def test_1547_limit_is_reached_within_the_response_time(start_site) -> None:
    sim: SiteSimulator = await start_site()
    pv = sim.devices["pv1"]
    cfg = pv.cfg
    assert near(pv.p_kw, 225.0)
    async with SunSpecReader(cfg) as r:
        await r.write(704, WMaxLimPct=40.0, WMaxLimPctEna=1)
        await eventually(lambda: near(pv.p_kw, 100.0), timeout=cfg.sim.response_time_s + SLACK_S,
                         what="40 % of 250 kW")
        # the registers follow the output at the inverter's measurement refresh
        meas = await eventually(lambda: _measured(r, 701, 100_000), timeout=SLACK_S, what="701 W at 100 kW")
        assert meas["InvSt"] == 4  # THROTTLED
        assert meas["ThrotSrc"] & 1  # MAX_W
        assert meas["ThrotPct"] == 40
        assert pv.active_limit_pct == pytest.approx(40.0)
        # a limit above what the sun gives does not throttle
        await r.write(704, WMaxLimPct=95.0)
        await eventually(lambda: near(pv.p_kw, 225.0), timeout=SLACK_S, what="back to available power")
        assert (await r.read(701))["InvSt"] == 3  # RUNNING


async def test_1547_limit_reverts_when_not_refreshed(start_site) -> None:
    sim: SiteSimulator = await start_site()
    pv = sim.devices["pv1"]
    async with SunSpecReader(pv.cfg) as r:
        await r.write(704, WMaxLimPctRvrt=20.0, WMaxLimPctEnaRvrt=1)
        await r.write(704, WMaxLimPct=40.0, WMaxLimPctRvrtTms=2, WMaxLimPctEna=1)
        ctl = await r.read(704)
        assert 1 <= ctl["WMaxLimPctRvrtRem"] <= 2
        # refreshed every 0.5 s for longer than the 2 s timeout: it must hold
        for _ in range(7):
            await asyncio.sleep(0.5)
            await r.write(704, WMaxLimPct=40.0)
            assert (await r.read(704))["WMaxLimPct"] == pytest.approx(40.0)
        await eventually(lambda: near(pv.p_kw, 100.0), timeout=SLACK_S, what="limited to 100 kW")

        # no refresh now: back to the reversion value (20 % = 50 kW), seen from the client
        ctl = await eventually(lambda: _reverted(r), timeout=2 + SLACK_S, what="WMaxLimPct reversion")
        assert (ctl["WMaxLimPct"], ctl["WMaxLimPctEna"], ctl["WMaxLimPctRvrtRem"]) == (20.0, 1, 0)
        await eventually(lambda: near(pv.p_kw, 50.0), timeout=SLACK_S, what="reverted to 20 %")


async def _reverted(r: SunSpecReader) -> dict | None:
    ctl = await r.read(704)
    return ctl if ctl["WMaxLimPct"] == pytest.approx(20.0) else None


async def test_1547_fixed_w_setpoint_and_its_reversion(start_site) -> None:
    sim: SiteSimulator = await start_site()
    pv = sim.devices["pv1"]
    async with SunSpecReader(pv.cfg) as r:
        await r.write(704, WSetMod=1, WSet=60_000, WSetEnaRvrt=0, WSetRvrtTms=1, WSetEna=1)
        await eventually(lambda: near(pv.p_kw, 60.0), timeout=SLACK_S, what="WSet 60 kW")
        assert (await r.read(701))["ThrotSrc"] & 2  # FIXED_W
        await eventually(lambda: pv.map.get(704, "WSetEna") == 0, timeout=SLACK_S, what="WSet reversion")
        await eventually(lambda: near(pv.p_kw, 225.0), timeout=SLACK_S, what="back to available power")


async def test_1547_permit_service_and_opctl_cease_to_energize(start_site) -> None:
    sim: SiteSimulator = await start_site()
    pv = sim.devices["pv1"]
    async with SunSpecReader(pv.cfg) as r:
        await r.write(703, ES=0)  # DISABLED
        await eventually(lambda: pv.p_kw == 0.0, timeout=SLACK_S, what="ES disabled → 0 W")
        meas = await r.read(701)
        assert (meas["W"], meas["ConnSt"], meas["St"]) == (0, 0, 0)
        assert not pv.connected
        await r.write(703, ES=1)
        await eventually(lambda: pv.p_kw > 0.0, timeout=SLACK_S + 5, what="re-entering service")
        await r.write(715, OpCtl=0)  # STOP
        await eventually(lambda: pv.p_kw == 0.0, timeout=SLACK_S, what="OpCtl STOP → 0 W")


async def test_1547_der_heartbeat_counts_seconds(start_site) -> None:
    sim: SiteSimulator = await start_site()
    async with SunSpecReader(sim.devices["pv1"].cfg) as r:
        first = (await r.read(715))["DERHb"]
        await asyncio.sleep(1.2)
        assert (await r.read(715))["DERHb"] >= first + 1


async def test_legacy_limit_reverts_to_disabled(start_site) -> None:
    sim: SiteSimulator = await start_site()
    pv = sim.devices["pv2"]
    assert near(pv.p_kw, 135.0)
    async with SunSpecReader(pv.cfg) as r:
        await r.write(123, WMaxLimPct=50.0, WMaxLimPct_RvrtTms=2, WMaxLim_Ena=1)
        await eventually(lambda: near(pv.p_kw, 75.0), timeout=pv.cfg.sim.response_time_s + SLACK_S,
                         what="50 % of 150 kW")
        inv = await eventually(lambda: _measured(r, 103, 75_000), timeout=SLACK_S, what="103 W at 75 kW")
        assert inv["St"] == 5  # THROTTLED
        await eventually(lambda: pv.map.get(123, "WMaxLim_Ena") == 0, timeout=SLACK_S, what="123 reversion")
        await eventually(lambda: near(pv.p_kw, 135.0), timeout=SLACK_S, what="limit dropped")
        assert (await r.read(123))["WMaxLimPct"] == pytest.approx(50.0)  # SunSpec: only the enable reverts


async def test_legacy_conn_disconnects_and_reconnects(start_site) -> None:
    sim: SiteSimulator = await start_site()
    pv = sim.devices["pv2"]
    async with SunSpecReader(pv.cfg) as r:
        await r.write(123, Conn=0)
        await eventually(lambda: pv.p_kw == 0.0, timeout=SLACK_S, what="Conn=0 → 0 W")
        assert (await r.read(103))["St"] == 1  # OFF
        assert not (await r.read(122))["PVConn"] & 1
        await r.write(123, Conn=1)
        await eventually(lambda: pv.p_kw > 0.0, timeout=SLACK_S + 5, what="reconnected")
