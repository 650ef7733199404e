"""TDC-22 for a device that answers with values no device can have: the whole gateway over a real mosquitto
and the simulators over TCP. A SunSpec inverter whose scale factors read outside -10…10 (which raised
OverflowError in the codec, out of the driver, on 93c7720) is a device not answering: marked offline with
an error naming the point and its raw value, its share taken by the others, the export limit held at the
simulated meter, the gateway still answering MQTT; when the fault clears, it is brought back."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import broker, make_rig  # noqa: F401  (the gateway tests' rig, shared)
from tests.gateway.test_faults import LIMIT, TOL, audit, device_online, under_envelope
from tests.gateway.test_tdc_failsafe import Sampler, envelope
from tests.simulators.util import eventually

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("sf", [0x7FFF, -0x7FFF])  # 10^32767 overflows a float; 10^-32767 is 0
async def test_tdc_22_scale_factors_out_of_range_mark_the_device_offline_and_the_limit_holds(
    make_rig, sf: int  # noqa: F811
) -> None:
    rig = await make_rig()
    await under_envelope(rig)
    sampler = Sampler(rig)
    rig.sim.devices["pv1"].set_fault("bad_sf", sf=sf)
    await device_online(rig, "pv1", False)

    def offline_event() -> dict | None:
        events = [e for e in audit(rig, "event") if e.get("device") == "pv1"]
        return events[-1] if events and events[-1]["event"] == "device_offline" else None

    event = await eventually(offline_event, timeout=5, what="pv1's device_offline audited")
    assert event["error"].startswith("pv1: 701.W = ")
    assert f"under 701.W_SF = {sf}: outside SunSpec's scale factors -10…10" in event["error"]
    # still up and answering: a tighter envelope is accepted and met without pv1
    mark = await rig.send("ldc", "envelope", "e-tight", **envelope(LIMIT - 20))
    await rig.response("e-tight", "accepted", start=mark)
    await rig.wait_meter(lambda p: p <= LIMIT - 20 + TOL)
    status = await rig.wait_status(lambda s: s["devices"]["online"] == s["devices"]["total"] - 1,
                                   start=mark)
    assert status["state"] == "online"
    rig.sim.devices["pv1"].set_fault("none")
    await device_online(rig, "pv1", True, timeout=45)
    assert await sampler.stop() <= LIMIT + TOL
