"""Property: whatever registers a SunSpec device sends, the driver's decoding raises nothing but
DeviceFault and never passes on a number that is not finite or not possible for the device; and
planning a command from such an image raises nothing but DeviceFault either.

The drivers discover the simulated devices over TCP once; then hypothesis feeds each one register
images of its own read plan: scale factors drawn around and beyond SunSpec's -10…10, values mixing
every word with the sentinels, NaN and infinity patterns."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.south.bus_device import BusDevice, RegisterImage
from gateway.south.device import DeviceFault, Reading, Setpoint
from gateway.south.plausible import HZ_RANGE, MAX_W, RATED_MULTIPLE
from gateway.south.sunspec_device import Image, SunSpecDevice

pytestmark = pytest.mark.asyncio

SF_WORDS = st.one_of(st.integers(-10, 10), st.sampled_from([11, -11, 100, -100, 0x7FFF, -0x7FFF, -0x8000]),
                     st.integers(-0x8000, 0x7FFF)).map(lambda sf: sf & 0xFFFF)
# float32 NaN and ±inf high words, int16/uint16/int32 sentinels and extremes, anything
WORDS = st.one_of(st.integers(0, 0xFFFF),
                  st.sampled_from([0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x7FC0, 0x7F80, 0xFF80]))


def check(reading: Reading) -> None:
    r = reading
    numbers = [r.p_kw, r.q_kvar, r.v_pu, r.hz, r.available_kw, r.max_charge_kw, r.rated_kw, r.soc_pct,
               r.limit_pct, r.setpoint_kw]
    assert all(x is None or math.isfinite(x) for x in numbers), reading
    bound_kw = RATED_MULTIPLE * reading.rated_kw if reading.rated_kw else MAX_W / 1000
    assert abs(reading.p_kw) <= bound_kw and (reading.q_kvar is None or abs(reading.q_kvar) <= bound_kw)
    assert reading.hz is None or HZ_RANGE[0] <= reading.hz <= HZ_RANGE[1]
    for pct in (reading.soc_pct, reading.limit_pct):
        assert pct is None or 0 <= pct <= 100


def decode_and_plan(dev: BusDevice, image: RegisterImage, cmd: Setpoint) -> str:
    """Take `image` as the device's last read: its reading must be plausible or a DeviceFault ("reading"
    or "fault"), and planning `cmd` on it raise nothing but DeviceFault."""
    dev._image = image
    try:
        check(dev._reading(image))
        outcome = "reading"
    except DeviceFault:
        outcome = "fault"
    if dev.kind != "meter":
        try:
            dev._power_plan(cmd)
            dev._connect_plan(cmd)
        except DeviceFault:
            pass
    return outcome


@pytest.mark.parametrize("device_id", ["pv1", "pv2", "bess1", "meter"])
async def test_any_register_image_decodes_to_a_plausible_reading_or_a_device_fault(
    run_site, device_id: str
) -> None:
    site = await run_site()
    dev = site.devices[device_id]
    assert isinstance(dev, SunSpecDevice)
    sim_map = site.sim.devices[device_id].map
    sf_addresses = {address for _, _, address, p in sim_map.points() if p.type == "sunssf"}
    outcomes: set[str] = set()

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), p_kw=st.floats(-1000, 1000), connect=st.booleans())
    def decode(data: st.DataObject, p_kw: float, connect: bool) -> None:
        spans = [(start, [data.draw(SF_WORDS if start + i in sf_addresses else WORDS) for i in range(count)])
                 for start, count in dev.read_spans]
        outcomes.add(decode_and_plan(dev, Image(spans), Setpoint(p_kw, connect)))

    decode()
    assert outcomes == {"reading", "fault"}, "both kinds of image were drawn"
