"""TDC-22 for a PCC meter that sends NaN: the example site with its meter an Eastron SDM630 (float32
registers, vendor profile), the whole gateway over a real mosquitto. On 93c7720 the NaN went into the
control core and telemetry; now the meter is a device not answering, with an error naming the register,
and without a usable meter the gateway takes no load credit, so the export limit holds at the simulated
meter. The gateway stays up and answers MQTT, and takes the meter back when it sends numbers again."""

from __future__ import annotations

import math

import pytest

from tests.gateway.conftest import broker, make_rig  # noqa: F401  (the gateway tests' rig, shared)
from tests.gateway.test_faults import LIMIT, TOL, audit, under_envelope
from tests.gateway.test_tdc_failsafe import Sampler, envelope
from tests.simulators.util import eventually

pytestmark = pytest.mark.asyncio


async def test_tdc_22_nan_meter_is_offline_with_its_register_named_and_the_limit_holds(
    make_rig,  # noqa: F811
) -> None:
    rig = await make_rig(devices={"meter": {"protocol": "modbus", "profile": "eastron_sdm630"}})
    await under_envelope(rig)
    sampler = Sampler(rig)
    rig.sim.meter.set_fault("nan")
    # the meter is not a device of telemetry's `devices`: without a usable meter, the site's values are None
    await rig.telemetry(lambda t: t["site"]["p_kw"] is None, start=len(rig.peer.messages))

    def offline_event() -> dict | None:
        events = [e for e in audit(rig, "event") if e.get("device") == "meter"]
        return events[-1] if events and events[-1]["event"] == "device_offline" else None

    event = await eventually(offline_event, timeout=5, what="the meter's device_offline audited")
    assert event["error"] == ("meter: eastron_sdm630.total_power = nan: not a finite number; "
                              "no reading without active power")
    # still up and answering, and a tighter envelope is met without a meter (no load credit)
    mark = await rig.send("ldc", "envelope", "e-tight", **envelope(LIMIT - 20))
    await rig.response("e-tight", "accepted", start=mark)
    t = await rig.telemetry(lambda t: t["effective"]["binding"] == "envelope:e-tight", start=mark)
    assert t["site"]["p_kw"] is None and t["site"]["hz"] is None  # no number rather than NaN
    assert all(d["p_kw"] is None or math.isfinite(d["p_kw"]) for d in t["devices"])
    await rig.wait_meter(lambda p: p <= LIMIT - 20 + TOL)
    status = await rig.wait_status(lambda s: s["devices"]["online"] == s["devices"]["total"] - 1,
                                   start=mark)
    assert status["state"] == "online"
    rig.sim.meter.set_fault("none")
    await rig.telemetry(lambda t: t["site"]["p_kw"] is not None, start=len(rig.peer.messages), timeout=45)
    # with the meter back, the loop takes its load credit again and the PCC comes up to the limit
    await rig.wait_meter(lambda p: LIMIT - 20 - 3 * TOL <= p <= LIMIT - 20 + TOL)
    assert await sampler.stop() <= LIMIT + TOL
