"""The gateway's DNP3 device driver (opendnp3 master) against the simulated DER (dnp3py outstation with
OpenDER physics), behind the same `Device` interface as SunSpec."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio

from gateway.config import DeviceConfig
from gateway.south.device import DeviceOffline, Reading, Setpoint, WriteRecord
from gateway.south.dnp3_device import Dnp3Device
from simulators.dnp3_der import AO_CONNECT_REVERSION, AO_LIMIT, BO_CONNECT, BO_LIMIT, Dnp3PvInverter
from simulators.physics import STEP_S

pytestmark = pytest.mark.asyncio


RATED_KW = 100.0
SUN = 0.9


@dataclass
class Der:
    sim: Dnp3PvInverter
    dev: Dnp3Device
    writes: list[WriteRecord]

    async def read_until(self, pred: Callable[[Reading], bool], timeout: float = 15.0) -> Reading:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            r = await self.dev.read()
            if r is not None and pred(r):
                return r
            if loop.time() > deadline:
                raise TimeoutError(f"no such reading in {timeout} s; last {r}, error {self.dev.last_error}")
            await asyncio.sleep(0.2)


async def _physics(sim: Dnp3PvInverter) -> None:
    while True:
        sim.step(time.monotonic())
        await asyncio.sleep(STEP_S)


@pytest_asyncio.fixture
async def der(free_port: Callable[[], int]) -> AsyncIterator[Der]:
    # safe_limit_pct 100: full output is this device's safe state, so what AN2018 reverts to (the limit mode
    # off) is within it and the timeout is written, until a command's revert_kw says otherwise
    cfg = DeviceConfig(id="pv-dnp3", kind="pv", protocol="dnp3", port=free_port(), timeout_s=0.5,
                       reversion_timeout_s=2.0, safe_limit_pct=100.0, sim={"rated_kw": RATED_KW})
    sim = Dnp3PvInverter(cfg, SUN)
    await sim.start()
    physics = asyncio.create_task(_physics(sim))
    writes: list[WriteRecord] = []
    dev = Dnp3Device.from_config(cfg, stale_after_s=3.0, on_write=writes.append)
    yield Der(sim, dev, writes)
    await dev.close()
    physics.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await physics
    await sim.stop()


async def test_dnp3_device_reads_the_an2018_points(der: Der) -> None:
    r = await der.read_until(lambda r: r.p_kw > 0.8 * SUN * RATED_KW)
    assert r.rated_kw == RATED_KW and r.available_kw == pytest.approx(SUN * RATED_KW)
    assert r.hz == pytest.approx(60.0) and r.v_pu == pytest.approx(1.0)
    assert r.connected is True and r.limit_pct is None and r.setpoint_kw is None
    assert der.dev.online and not der.dev.stale


async def test_dnp3_active_power_limit_through_bo17_ao88_is_read_back(der: Der) -> None:
    await der.read_until(lambda r: True)
    assert await der.dev.write(Setpoint(40.0))
    assert [(w.point, w.raw, w.result, w.purpose) for w in der.writes] == [
        ("AO85", 2, "ok", "setpoint"), ("AO88", 400, "ok", "setpoint"), ("BO17", 1, "ok", "setpoint"),
        ("AO17", 0, "ok", "connect"), ("BO5", 1, "ok", "connect")]  # the limit first, then energize
    assert der.sim.limit_enabled and der.sim.limit_raw == 400
    r = await der.read_until(lambda r: abs(r.p_kw - 40.0) < 1.0)
    assert r.limit_pct == pytest.approx(40.0) and r.setpoint_kw == pytest.approx(40.0)  # BI69 + AI149


async def test_dnp3_connect_through_bo5(der: Der) -> None:
    await der.read_until(lambda r: True)
    assert await der.dev.write(Setpoint(RATED_KW, connect=False))
    # cease to energize before anything else (the switch's reversion timeout, 0, just before it)
    assert [(w.point, w.raw) for w in der.writes[:2]] == [("AO17", 0), ("BO5", 0)]
    await der.read_until(lambda r: r.connected is False and abs(r.p_kw) < 0.5)
    assert not der.sim.switch_closed
    assert await der.dev.write(Setpoint(RATED_KW, connect=True))
    await der.read_until(lambda r: r.connected is True and r.p_kw > 0.5 * SUN * RATED_KW)


async def test_tdc_20_dnp3_device_keeps_the_limit_while_the_gateway_lives_and_reverts_after(der: Der) -> None:
    await der.read_until(lambda r: True)
    assert await der.dev.write(Setpoint(30.0))
    started = time.monotonic()
    while time.monotonic() - started < 3.0:  # longer than the 2 s reversion timeout: refreshed, held
        await der.read_until(lambda r: True)
        assert der.sim.limit_enabled
    assert "refresh" in {w.purpose for w in der.writes}
    await der.dev.close()  # the gateway stops: nothing refreshes the limit any more
    await asyncio.wait_for(_until(lambda: not der.sim.limit_enabled), 10)


async def test_dnp3_device_recovers_after_the_simulator_restarts(der: Der) -> None:
    await der.read_until(lambda r: True)
    assert await der.dev.write(Setpoint(30.0, connect=False))
    der.sim.set_fault("reboot", duration_s=1.0)  # link dropped, volatile settings back to power-on
    assert der.sim.switch_closed and not der.sim.limit_enabled
    await _until_offline(der)
    assert isinstance(der.dev.last_error, DeviceOffline)
    r = await der.read_until(lambda r: r.limit_pct == pytest.approx(30.0) and r.connected is False)
    assert der.dev.online and not der.sim.switch_closed and der.sim.limit_raw == 300
    assert {w.purpose for w in der.writes if w.point in ("BO5", "AO88")} >= {"reapply"}
    assert r.setpoint_kw == pytest.approx(30.0)


async def test_dnp3_silent_device_times_out_and_comes_back(der: Der) -> None:
    await der.read_until(lambda r: True)
    der.sim.set_fault("silent")
    await _until_offline(der)
    assert "poll" in str(der.dev.last_error)
    der.sim.set_fault("none")
    await der.read_until(lambda r: True)
    assert der.dev.online


async def test_dnp3_limit_lost_on_the_device_is_written_again(der: Der) -> None:
    await der.read_until(lambda r: True)
    assert await der.dev.write(Setpoint(50.0))
    await der.read_until(lambda r: r.limit_pct is not None)
    der.sim.server.on_binary(BO_LIMIT, False)  # e.g. another master, or the front panel, turns it off
    await der.read_until(lambda r: r.limit_pct == pytest.approx(50.0) and der.sim.limit_enabled)
    assert "reapply" in {w.purpose for w in der.writes}


async def test_tdc_20_dnp3_limit_is_kept_when_full_output_would_exceed_the_ldc_share(der: Der) -> None:
    """AN2018 has no reversion value (at AO85's timeout the limit mode turns off): while the LDC's share
    (revert_kw) is below full output, AO85 is written as 0, and the device keeps the gateway's last limit
    when the gateway dies; a change of revert_kw alone writes AO85 alone."""
    await der.read_until(lambda r: True)
    assert await der.dev.write(Setpoint(30.0))  # nothing from the LDC: full output is safe (fixture)
    assert der.sim.reversion_s == 2
    first = len(der.writes)
    assert await der.dev.write(Setpoint(30.0, revert_kw=10.0))
    assert [(w.point, w.raw, w.purpose) for w in der.writes[first:]] == [("AO85", 0, "setpoint")]
    assert der.sim.reversion_s == 0 and der.sim.limit_enabled  # no timer: the limit holds for good
    second = len(der.writes)
    assert await der.dev.write(Setpoint(30.0, revert_kw=RATED_KW))  # a share of full output: the timer
    assert [(w.point, w.raw) for w in der.writes[second:]] == [("AO85", 2)]
    assert await der.dev.write(Setpoint(0.0, revert_kw=0.0))  # cease_to_energize
    await der.dev.close()
    assert der.sim.reversion_s == 0 and der.sim.limit_enabled and der.sim.limit_raw == 0
    r = der.sim
    await asyncio.wait_for(_until(lambda: r.p_kw < 0.5), 10)


async def test_dnp3_connect_state_is_refreshed_read_back_and_written_again(der: Der) -> None:
    await der.read_until(lambda r: True)
    assert await der.dev.write(Setpoint(30.0, connect=False))
    assert der.sim.connect_reversion_s == 0  # AO17 0: the open switch stays open when the gateway dies
    started = time.monotonic()
    while time.monotonic() - started < 2.0:  # longer than a refresh (0.4 × the 2 s timeout)
        await der.read_until(lambda r: True)
    assert "refresh" in {w.purpose for w in der.writes if w.point == "BO5"}
    der.sim.server.on_binary(BO_CONNECT, True)  # another master, or the front panel, closes it
    await der.read_until(lambda r: r.connected is False and not der.sim.switch_closed)
    assert [w.raw for w in der.writes if w.point == "BO5" and w.purpose == "reapply"][-1:] == [0]


async def test_dnp3_simulator_switch_goes_back_closed_at_its_reversion_timeout(der: Der) -> None:
    der.sim.server.on_analog(AO_CONNECT_REVERSION, 1)
    der.sim.server.on_binary(BO_CONNECT, False)
    assert not der.sim.switch_closed
    await asyncio.wait_for(_until(lambda: der.sim.switch_closed), 5)


async def _until(pred: Callable[[], bool]) -> None:
    while not pred():
        await asyncio.sleep(0.05)


async def _until_offline(der: Der, timeout: float = 10.0) -> None:
    async def go() -> None:
        while await der.dev.read() is not None or der.dev.online:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(go(), timeout)



async def test_dnp3_stuck_device_reads_the_limit_back_but_keeps_its_output(der: Der) -> None:
    # the witness: the same inverter, not stuck, given the same limits (it is never served)
    witness = Dnp3PvInverter(der.sim.cfg, SUN)
    stepping = asyncio.create_task(_physics(witness))
    try:
        await der.read_until(lambda r: True)
        assert await der.dev.write(Setpoint(40.0))
        witness.server.on_binary(BO_LIMIT, True)
        witness.server.on_analog(AO_LIMIT, 400)
        await der.read_until(lambda r: abs(r.p_kw - 40.0) < 1.0)
        der.sim.set_fault("stuck")
        assert der.sim.fault == "stuck"
        assert await der.dev.write(Setpoint(10.0))
        witness.server.on_analog(AO_LIMIT, 100)
        # the command is taken and read back (AI149); the output keeps the 40 % it had
        await der.read_until(lambda r: r.limit_pct == pytest.approx(10.0))
        assert der.sim.limit_raw == 100 and der.sim.active_limit_pct == pytest.approx(40.0)
        seen = []

        def witness_followed() -> bool:
            seen.append(der.sim.p_kw)
            return abs(witness.p_kw - 10.0) < 1.0

        await asyncio.wait_for(_until(witness_followed), 10)
        assert min(seen) == pytest.approx(40.0, abs=1.0), "the stuck inverter followed the new limit"
        der.sim.set_fault("none")
        await der.read_until(lambda r: abs(r.p_kw - 10.0) < 1.0)
    finally:
        stepping.cancel()


async def test_dnp3_measurement_flagged_over_range_is_a_fault_naming_the_point(der: Der) -> None:
    await der.read_until(lambda r: r.p_kw > 0)
    der.sim.set_fault("nan")
    await _until_offline(der)
    err = str(der.dev.last_error)
    assert err.startswith("pv-dnp3: AI537 = 2147483647")
    assert "flagged OVER_RANGE; no reading without active power" in err
    der.sim.set_fault("none")
    r = await der.read_until(lambda r: r.p_kw > 0)
    assert r.hz == pytest.approx(60.0)  # the flags are back to ONLINE too


async def test_dnp3_garbage_measurements_never_escape_the_driver(der: Der) -> None:
    await der.read_until(lambda r: True)
    der.sim.set_fault("garbage")
    for _ in range(10):
        der.dev._retry.succeeded()  # no backoff between the reads
        r = await der.dev.read()
        assert r is not None or der.dev.last_error is not None
        if r is not None:
            assert abs(r.p_kw) <= 2 * RATED_KW and (r.hz is None or 40 <= r.hz <= 70)
    der.sim.set_fault("none")
    await der.read_until(lambda r: r.p_kw > 0 and r.hz == pytest.approx(60.0))
