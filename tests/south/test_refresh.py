"""Reversion: the driver keeps an unchanged setpoint alive, and a device left alone reverts on its own."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.south.device import Setpoint
from gateway.south.sunspec_device import REFRESH_FRACTION
from tests.south.conftest import wait_until

pytestmark = pytest.mark.asyncio

REVERSION_S = 4.0


async def test_unchanged_setpoint_is_refreshed_and_the_device_never_reverts(run_site) -> None:
    site = await run_site(devices={"pv1": {"reversion_timeout_s": REVERSION_S}})
    pv1, sim_pv1 = site.devices["pv1"], site.sim.devices["pv1"]
    assert REFRESH_FRACTION < 0.5

    assert await pv1.write(Setpoint(p_kw=100.0))
    await wait_until("pv1 limited", lambda: sim_pv1.active_limit_pct == pytest.approx(40.0))
    # The control loop for 1.5 × the reversion timeout: a read and the same command every 0.25 s.
    cycles = 0
    end = time.monotonic() + 1.5 * REVERSION_S
    while time.monotonic() < end:
        assert await pv1.read() is not None
        assert await pv1.write(Setpoint(p_kw=100.0))
        assert sim_pv1.active_limit_pct == pytest.approx(40.0), "the device reverted: refresh came too late"
        cycles += 1
        await asyncio.sleep(0.25)

    enables = site.writes_to("pv1", "704.WMaxLimPctEna")
    assert enables[0].purpose == "setpoint"
    refreshes = [w for w in enables if w.purpose == "refresh"]
    assert len(refreshes) >= 2
    # Unchanged, it is rewritten only when a refresh is due, not on every call.
    assert len(enables) < cycles / 3
    # A refresh rewrites the value, the reversion settings and the timer, then the enable.
    assert {w.point for w in site.writes_to("pv1") if w.purpose == "refresh"} >= {
        "704.WMaxLimPct", "704.WMaxLimPctRvrtTms", "704.WMaxLimPctEna",
    }


async def test_after_close_the_device_reverts_to_its_safe_limit(run_site) -> None:
    site = await run_site(devices={"pv1": {"reversion_timeout_s": REVERSION_S, "safe_limit_pct": 20.0}})
    pv1, sim_pv1 = site.devices["pv1"], site.sim.devices["pv1"]

    assert await pv1.write(Setpoint(p_kw=150.0))
    await wait_until("pv1 limited", lambda: sim_pv1.active_limit_pct == pytest.approx(60.0))
    await pv1.close()  # the gateway goes away without a word
    await wait_until("pv1 reverts to its safe limit", lambda: sim_pv1.active_limit_pct == pytest.approx(20.0),
                     timeout_s=3 * REVERSION_S)
    await wait_until("pv1 output at the safe limit", lambda: sim_pv1.p_kw == pytest.approx(50.0, abs=0.5))
