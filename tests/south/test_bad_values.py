"""Values a device should never send, from the simulators over TCP: scale factors outside SunSpec's
-10…10, measurements that read "not implemented" or garbage. The driver's read and write paths raise
nothing but DeviceError, a reading never holds a non-finite or impossible number, and a reading without a
usable active power fails as a DeviceFault naming the point, its raw value and why."""

from __future__ import annotations

import logging
import math

import pytest

from gateway.south.device import DeviceError, DeviceFault, Reading, Setpoint
from gateway.south.plausible import HZ_RANGE, MAX_W, RATED_MULTIPLE
from gateway.south.sunspec_device import Image
from tests.south.conftest import reading_of, wait_until

pytestmark = pytest.mark.asyncio


def plausible(r: Reading, rated_kw: float) -> bool:
    numbers = [r.p_kw, r.q_kvar, r.v_pu, r.hz, r.available_kw, r.max_charge_kw, r.rated_kw, r.soc_pct,
               r.limit_pct, r.setpoint_kw]
    return (all(x is None or math.isfinite(x) for x in numbers)
            and abs(r.p_kw) <= RATED_MULTIPLE * rated_kw
            and (r.hz is None or HZ_RANGE[0] <= r.hz <= HZ_RANGE[1])
            and (r.soc_pct is None or 0 <= r.soc_pct <= 100))


@pytest.mark.parametrize("sf", [100, -100, 0x7FFF, -0x7FFF])
async def test_scale_factor_out_of_range_is_a_fault_naming_the_point_and_the_device_comes_back(
    run_site, sf: int
) -> None:
    site = await run_site()
    pv1, sim = site.devices["pv1"], site.sim.devices["pv1"]
    assert await pv1.write(Setpoint(p_kw=100.0))
    sim.set_fault("bad_sf", sf=sf)
    assert await pv1.read() is None
    err = pv1.last_error
    assert isinstance(err, DeviceFault) and not pv1.online
    assert str(err).startswith("pv1: 701.W = ") and f"under 701.W_SF = {sf}:" in str(err)
    assert "outside SunSpec's scale factors -10…10" in str(err)
    # recovery (discovery, then the command re-applied) meets the bad scale factors too: still a fault
    await wait_until("a recovery attempt", lambda: _read_fails(pv1))
    assert isinstance(pv1.last_error, DeviceFault)
    sim.set_fault("none")
    await reading_of(pv1, "back, the limit in force", lambda r: r.limit_pct == pytest.approx(40.0))
    assert pv1.online and pv1.last_error is None


async def _read_fails(dev) -> bool:
    """Read once after the retry delay: True when that read was tried and failed."""
    before = dev.last_error
    return await dev.read() is None and dev.last_error is not before


@pytest.mark.parametrize("mode", ["nan", "garbage"])
@pytest.mark.parametrize("device_id", ["pv1", "pv2", "bess1", "meter"])
async def test_nan_and_garbage_measurements_never_escape_the_driver(
    run_site, mode: str, device_id: str
) -> None:
    site = await run_site(devices={device_id: {"timeout_s": 0.5}})
    dev, sim = site.devices[device_id], site.sim.devices[device_id]
    rated_kw = MAX_W / 1000 / RATED_MULTIPLE if device_id == "meter" else sim.cfg.sim.rated_kw
    sim.set_fault(mode)
    outcomes = set()
    for _ in range(20):
        dev._retry.succeeded()  # no backoff between the reads: every read decodes a new image
        r = await dev.read()
        if r is None:
            assert isinstance(dev.last_error, DeviceError), dev.last_error
            outcomes.add("fault")
        else:
            assert plausible(r, rated_kw), r
            outcomes.add("reading")
        if device_id != "meter":
            assert await dev.write(Setpoint(p_kw=10.0)) in (True, False)  # never raises
    if mode == "nan":  # the active power reads "not implemented": no reading
        assert outcomes == {"fault"}
        assert "active power as not implemented" in str(dev.last_error), dev.last_error
    sim.set_fault("none")
    await reading_of(dev, "back", lambda r: True)


async def test_an_unusable_optional_value_is_not_reported_and_logged_when_it_starts_and_ends(
    run_site, caplog: pytest.LogCaptureFixture
) -> None:
    site = await run_site()
    pv1, sim = site.devices["pv1"], site.sim.devices["pv1"]
    good = await pv1.read()
    assert good is not None and good.hz == pytest.approx(60.0)
    hz = sim.map.address(701, "Hz")
    spans = pv1._image._spans["holding"]

    def with_hz(raw: int) -> Image:  # pv1's last read, its frequency (uint32) set to `raw`
        words = {hz: raw >> 16, hz + 1: raw & 0xFFFF}
        return Image([(start, [words.get(start + i, r) for i, r in enumerate(regs)])
                      for start, regs in spans])

    caplog.set_level(logging.INFO, logger="gateway.south.device")
    bad = [pv1._reading(with_hz(0x7FFE)) for _ in range(3)]  # 327.66 Hz under Hz_SF = -2
    assert all(r.hz is None and r.p_kw == pytest.approx(good.p_kw, abs=1.0) for r in bad)
    assert [r.getMessage() for r in caplog.records] == [
        "pv1: hz not reported: 701.Hz = 32766 × 10^-2: 327.66 Hz is outside 40…70 Hz"]
    assert pv1._reading(with_hz(6000)).hz == pytest.approx(60.0)
    assert caplog.records[-1].getMessage() == "pv1: hz reported again"
