"""What a device reverts to when the gateway dies (PROTOCOL §6, TDC-20): the lower of its safe limit and
the command's `revert_kw` (its share of the LDC limits in force), written with every setpoint; and the
connect state, refreshed and read back like the power command. Drivers against the simulators over TCP,
registers checked with pysunspec2's own client."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.south.device import Setpoint
from gateway.south.profile import load_profile
from gateway.south.sunspec_device import SunSpecDevice
from tests.simulators.util import SunSpecReader
from tests.south.conftest import reading_of, reference_read, wait_until
from tests.support.driven_site import DrivenSite

pytestmark = pytest.mark.asyncio

REVERSION_S = 2.0


def _cfg(site: DrivenSite, device_id: str):
    return next(d for d in site.config.devices if d.id == device_id)


def _since(site: DrivenSite, device_id: str, mark: int) -> list[tuple[str, int | str]]:
    return [(w.point, w.raw) for w in site.writes_to(device_id)[mark:]]


async def test_tdc_20_1547_reversion_is_the_lower_of_the_safe_limit_and_the_ldc_share(run_site) -> None:
    site = await run_site(devices={"pv1": {"reversion_timeout_s": REVERSION_S, "safe_limit_pct": 20.0}})
    pv1, sim_pv1, cfg = site.devices["pv1"], site.sim.devices["pv1"], _cfg(site, "pv1")

    assert await pv1.write(Setpoint(p_kw=150.0))  # the LDC restricts nothing: the safe limit, 20 %
    ctl = (await reference_read(cfg.port))[704]
    assert (ctl["WMaxLimPctRvrt"], ctl["WMaxLimPctEnaRvrt"]) == (pytest.approx(20.0), 1)

    # the LDC's share falls below the safe limit: that alone writes the reversion value alone
    mark = len(site.writes_to("pv1"))
    assert await pv1.write(Setpoint(p_kw=150.0, revert_kw=25.0))  # 10 % of 250 kW
    assert _since(site, "pv1", mark) == [("704.WMaxLimPctRvrt", 1000)]
    mark = len(site.writes_to("pv1"))
    assert await pv1.write(Setpoint(p_kw=150.0, revert_kw=100.0))  # 40 %: the safe limit is lower again
    assert _since(site, "pv1", mark) == [("704.WMaxLimPctRvrt", 2000)]
    mark = len(site.writes_to("pv1"))
    assert await pv1.write(Setpoint(p_kw=150.0, revert_kw=33.345))  # 13.338 %: rounded down, never up
    assert _since(site, "pv1", mark) == [("704.WMaxLimPctRvrt", 1333)]

    # cease_to_energize: 0 now and 0 after the reversion timer; the refresh carries the reversion value
    assert await pv1.write(Setpoint(p_kw=0.0, revert_kw=0.0))
    ctl = (await reference_read(cfg.port))[704]
    assert (ctl["WMaxLimPct"], ctl["WMaxLimPctRvrt"], ctl["WMaxLimPctEna"]) == (0, 0, 1)

    async def refreshed() -> bool:
        await pv1.read()
        return any(w.purpose == "refresh" for w in site.writes_to("pv1", "704.WMaxLimPctRvrt"))

    await wait_until("a refresh with the reversion value", refreshed)
    assert site.writes_to("pv1", "704.WMaxLimPctRvrt")[-1].raw == 0
    await pv1.close()  # the gateway dies
    await wait_until("pv1's timer runs out", lambda: sim_pv1.map.get(704, "WMaxLimPctRvrtRem") == 0,
                     timeout_s=3 * REVERSION_S)
    assert sim_pv1.active_limit_pct == pytest.approx(0.0)  # reverted to 0, not to the safe 20 %
    await wait_until("pv1 at 0 kW", lambda: sim_pv1.p_kw < 0.5)


async def test_changes_of_the_reversion_value_alone_never_put_off_the_refresh(run_site) -> None:
    """Writing 704 WMaxLimPctRvrt does not restart the device's reversion timer: a share that changes every
    cycle (a ramping envelope) must not be taken for a refresh, or the device reverts under a live gateway."""
    site = await run_site(devices={"pv1": {"reversion_timeout_s": REVERSION_S, "safe_limit_pct": 100.0}})
    pv1, sim_pv1 = site.devices["pv1"], site.sim.devices["pv1"]
    assert await pv1.write(Setpoint(p_kw=150.0, revert_kw=50.0))
    await wait_until("pv1 limited", lambda: sim_pv1.active_limit_pct == pytest.approx(60.0))
    end, share = time.monotonic() + 2 * REVERSION_S, 50.0
    while time.monotonic() < end:
        share += 1.0  # 0.4 % more each cycle: a new reversion value every time
        assert await pv1.write(Setpoint(p_kw=150.0, revert_kw=share))
        assert await pv1.read() is not None
        assert sim_pv1.active_limit_pct == pytest.approx(60.0), "reverted while the gateway lives"
        await asyncio.sleep(0.2)
    assert "refresh" in {w.purpose for w in site.writes_to("pv1", "704.WMaxLimPctEna")}


async def test_tdc_20_battery_reversion_never_discharges_more_than_revert_kw(run_site) -> None:
    site = await run_site(devices={"bess1": {"reversion_timeout_s": REVERSION_S}})
    bess, sim_bess, cfg = site.devices["bess1"], site.sim.devices["bess1"], _cfg(site, "bess1")
    # the shipped profile reverts to idle (0 W): an LDC share leaves it there
    assert await bess.write(Setpoint(p_kw=50.0, revert_kw=30.0))
    assert (await reference_read(cfg.port))[704]["WSetRvrt"] == 0

    # a profile whose own reversion discharges 50 kW (+ = into the grid, as 704 WSet)
    shipped = load_profile("sunspec", "battery")
    variant = shipped.variants[0]
    assert variant.power is not None
    power = variant.power.model_copy(update={"reversion": 50_000.0})
    profile = shipped.model_copy(update={"variants": [variant.model_copy(update={"power": power})]})
    dev = SunSpecDevice(cfg, unit=bess.unit, profile=profile, stale_after_s=3.0, on_write=site.writes.append)
    assert await dev.connect()
    assert await dev.write(Setpoint(p_kw=-40.0))  # charging; nothing from the LDC: its own 50 kW
    assert (await reference_read(cfg.port))[704]["WSetRvrt"] == 50_000
    mark = len(site.writes_to("bess1"))
    assert await dev.write(Setpoint(p_kw=-40.0, revert_kw=20.0))  # the LDC's share: at most 20 kW
    assert _since(site, "bess1", mark) == [("704.WSetRvrt", 20_000)]
    await dev.close()  # the gateway dies: from charging to its reversion value, a 20 kW discharge
    await wait_until("bess1 discharges its share", lambda: sim_bess.p_kw == pytest.approx(20.0, abs=0.5),
                     timeout_s=3 * REVERSION_S + 5)


async def test_tdc_20_legacy_123_keeps_its_last_limit_unless_full_output_is_safe(run_site) -> None:
    # safe_limit_pct 100: full output, what 123 reverts to, is safe while the LDC restricts nothing
    site = await run_site(devices={"pv2": {"reversion_timeout_s": REVERSION_S, "safe_limit_pct": 100.0}})
    pv2, sim_pv2, cfg = site.devices["pv2"], site.sim.devices["pv2"], _cfg(site, "pv2")
    assert await pv2.write(Setpoint(p_kw=60.0))
    assert (await reference_read(cfg.port))[123]["WMaxLimPct_RvrtTms"] == REVERSION_S

    # an LDC share below full output: the timer alone goes to 0, and the device keeps the limit
    mark = len(site.writes_to("pv2"))
    assert await pv2.write(Setpoint(p_kw=60.0, revert_kw=30.0))
    assert _since(site, "pv2", mark) == [("123.WMaxLimPct_RvrtTms", 0)]

    # disconnect: Conn opened with its own timer at 0 (123 would reconnect when it ran out), limit 0
    assert await pv2.write(Setpoint(p_kw=0.0, connect=False, revert_kw=0.0))
    ctl = (await reference_read(cfg.port))[123]
    assert (ctl["Conn"], ctl["Conn_RvrtTms"], ctl["WMaxLimPct"], ctl["WMaxLimPct_RvrtTms"]) == (0, 0, 0, 0)
    await pv2.close()  # the gateway dies: no timer of the device runs, it stays open at 0
    assert all(r.deadline is None for r in sim_pv2.reversions)
    await wait_until("pv2 at 0 kW", lambda: sim_pv2.p_kw == 0.0 and not sim_pv2.connected)


@pytest.mark.parametrize(
    ("device_id", "point", "mid", "name", "off", "on"),
    [("pv1", "703.ES", 703, "ES", 0, 1), ("pv2", "123.Conn", 123, "Conn", 0, 1),
     ("bess1", "802.SetOp", 802, "SetOp", 2, 1)],
)
async def test_connect_state_is_refreshed_read_back_and_written_again(
    run_site, device_id: str, point: str, mid: int, name: str, off: int, on: int
) -> None:
    site = await run_site(devices={device_id: {"reversion_timeout_s": REVERSION_S}})
    dev, sim_dev = site.devices[device_id], site.sim.devices[device_id]
    assert await dev.write(Setpoint(p_kw=0.0, connect=False))
    await wait_until(f"{device_id} disconnected", lambda: not sim_dev.connected)

    # the control loop for longer than a refresh (0.4 × the timeout): the open state is rewritten
    end = time.monotonic() + REVERSION_S
    while time.monotonic() < end:
        assert await dev.read() is not None
        assert await dev.write(Setpoint(p_kw=0.0, connect=False))
        await asyncio.sleep(0.2)
    assert "refresh" in {w.purpose for w in site.writes_to(device_id, point)}

    # another master (or the front panel) closes it: the read-back sees it, and it is opened again
    async with SunSpecReader(_cfg(site, device_id)) as other:
        await other.write(mid, **{name: on})
    assert sim_dev.map.get(mid, name) == on
    await reading_of(dev, "the open state written again", lambda r: sim_dev.map.get(mid, name) == off)
    again = site.writes_to(device_id, point)[-1]
    assert (again.raw, again.purpose) == (off, "reapply")
