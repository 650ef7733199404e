"""LDC SCADA over DNP3 (PROTOCOL §9): an independent master (dnp3py) drives the gateway's outstation
(opendnp3) on the example site, with real simulators and a real broker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.north.scada_map import load_point_list
from simulators.dnp3_stack import Control
from simulators.scada_master import ScadaMaster
from tests.support.rig import Rig

pytestmark = pytest.mark.asyncio

TOL = 3.0  # kW, as the gateway tests
CAP = 300.0  # examples/site.toml export_cap_kw
CONTROLLABLE = ("pv1", "pv2", "bess1", "pv3")


async def _until(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    async def wait() -> None:
        while not pred():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(wait(), timeout)


async def _point(scada: ScadaMaster, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    """Poll until `pred(values)` holds; the values."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        values = await scada.poll()
        if pred(values):
            return values
        if loop.time() > deadline:
            raise TimeoutError(f"SCADA points not as expected within {timeout} s")
        await asyncio.sleep(0.2)


def _scada_ref(rig: Rig, prefix: str, status: str, start: int) -> dict:
    """The first LDC response with `status` to an instruction whose id starts with `prefix`."""
    for topic, payload, _ in rig.peer.messages[start:]:
        body = json.loads(payload)
        ldc = topic.endswith("gateway/response/ldc")
        if ldc and body["ref"].startswith(prefix) and body["status"] == status:
            return body
    raise AssertionError(f"no {status} response to {prefix}*")


async def test_tdc_09_scada_limit_through_bo17_ao88_is_obeyed_at_the_meter(rig: Rig,
                                                                           scada: ScadaMaster) -> None:
    mark = await rig.send("ieso", "dispatch", "d-s1", product="energy", kind="algorithmic", target_kw=200.0,
                          start=0, end=600)
    await rig.wait_meter(lambda p: abs(p - 200.0) <= TOL)
    await scada.set_limit(20.0)  # AO88 = 200 (20.0 % of the 300 kW cap), BO17 ON, select-before-operate
    await rig.wait_meter(lambda p: p <= 60.0 + TOL)
    c = await rig.response("d-s1", "constrained", role="ieso", start=mark)
    assert c["reason"] == "DISTRIBUTION_CONSTRAINT" and c["accepted_kw"] == pytest.approx(60.0, abs=TOL)
    # an LDC envelope in every respect: decided and answered on MQTT, in force, audited
    accepted = _scada_ref(rig, "scada-limit-", "accepted", mark)
    env_id = accepted["ref"]
    t = await rig.telemetry(lambda t: t["effective"]["binding"] == f"envelope:{env_id}", start=mark)
    assert t["effective"]["export_limit_kw"] == pytest.approx(60.0)
    await rig.wait_status(lambda s: env_id in s["active"])
    assert rig.gateway is not None
    inbound = [r for _, _, _, r in rig.gateway.store.audit.records("inbound") if r.get("id") == env_id]
    assert inbound and inbound[0]["source"] == "scada"
    assert json.loads(inbound[0]["payload"])["type"] == "envelope"
    # read back: AI149 and BI69, the export limit in force and its source
    v = await _point(scada, lambda v: v.binary_inputs.get(69) is True)
    assert v.analog_inputs[149] == 200 and v.analog_inputs[1010] == 600
    assert v.analog_inputs[1011] == 10  # source: scada
    # BO17 OFF cancels it: the dispatch is served again
    mark = len(rig.peer.messages)
    await scada.clear_limit()
    await rig.response(env_id, "cancelled", role="ldc", start=mark)
    await rig.wait_meter(lambda p: abs(p - 200.0) <= TOL)
    await _point(scada, lambda v: v.binary_inputs.get(69) is False)


async def test_tdc_11_scada_trip_commands_every_device_within_1_s(rig: Rig) -> None:
    async with ScadaMaster.for_site(rig.site, select_before_operate=False) as scada:  # direct operate
        mark = len(rig.peer.messages)
        sent = time.time()
        await scada.trip()  # BO5 OFF: the connect switch opens
        for dev_id in CONTROLLABLE:
            dev = rig.sim.devices[dev_id]
            await _until(lambda d=dev: any(w >= sent for w in d.writes_at))
            first = min(w for w in dev.writes_at if w >= sent)
            assert first - sent <= 1.0, f"{dev_id} commanded {first - sent:.2f} s after the trip"
            await _until(lambda d=dev: not d.connected)
        load = rig.site.simulator.load_kw
        await rig.wait_meter(lambda p: abs(p + load) <= TOL)
        trip_id = _scada_ref(rig, "scada-trip-", "accepted", mark)["ref"]
        t = await rig.telemetry(lambda t: t["effective"]["mode"] == "overridden", start=mark)
        assert t["effective"]["binding"] == f"override:{trip_id}"
        await _point(scada, lambda v: v.binary_inputs.get(23) is False)  # switch open, read back
        await scada.close_switch()
        await rig.response(trip_id, "cancelled", role="ldc", start=mark)
        await _until(lambda: all(rig.sim.devices[d].connected for d in CONTROLLABLE), timeout=20)


async def test_scada_stop_bo2_is_an_ldc_cease_to_energize_override(rig: Rig, scada: ScadaMaster) -> None:
    mark = len(rig.peer.messages)
    await scada.stop()
    await rig.wait_status(lambda s: any(a.startswith("scada-stop-") for a in s["active"]), start=mark)
    stop_id = _scada_ref(rig, "scada-stop-", "accepted", mark)["ref"]
    for dev_id in CONTROLLABLE:
        await _until(lambda d=rig.sim.devices[dev_id]: abs(d.p_kw) < 1.0)
    await _point(scada, lambda v: v.binary_inputs.get(15) is True and v.analog_inputs.get(1016) == 2)
    await scada.release_stop()
    await rig.response(stop_id, "cancelled", role="ldc", start=mark)


async def test_scada_analog_inputs_match_the_mqtt_telemetry_of_the_same_moment(rig: Rig,
                                                                               scada: ScadaMaster) -> None:
    fields = {537: ("site", "p_kw"), 541: ("site", "q_kvar"), 536: ("site", "hz"), 1009: ("site", "v_pu"),
              1018: ("site", "available_up_kw"), 1019: ("site", "available_down_kw"),
              1010: ("effective", "export_limit_kw"), 1012: ("effective", "import_limit_kw"),
              1014: ("effective", "target_kw")}
    points = load_point_list()
    scale = {p.index: p.scale for p in points.analog_inputs}

    def expected(t: dict) -> dict[int, float]:
        return {i: round(t[a][b] * scale[i]) for i, (a, b) in fields.items()}

    # The site is steady (constant load and sun): two telemetry messages in a row that agree bracket a
    # SCADA poll taken between them, so all three describe the same moment.
    for _ in range(10):
        before = await rig.telemetry(start=len(rig.peer.messages))
        values = await scada.poll()
        after = await rig.telemetry(start=len(rig.peer.messages))
        if expected(before) == expected(after):
            break
    else:
        pytest.fail("the site never held still for two telemetry periods")
    assert {i: values.analog_inputs[i] for i in fields} == expected(after)
    assert values.analog_inputs[1016] == points.enums["mode"][after["effective"]["mode"]]
    assert values.analog_inputs[1017] == values.analog_inputs[28] == 5  # status.devices online / total


async def test_scada_select_without_operate_does_nothing(rig: Rig, scada: ScadaMaster) -> None:
    before = await scada.poll()
    assert before.analog_inputs[149] == 1000 and before.binary_inputs[69] is False
    mark = len(rig.peer.messages)
    assert await scada.client.select([Control(88, value=100)]) == ["SUCCESS"]
    assert await scada.client.select([Control(17, on=True)]) == ["SUCCESS"]
    assert await scada.client.select([Control(5, on=False)]) == ["SUCCESS"]
    # an operate that does not match the pending select is refused, and changes nothing either
    assert await scada.client.operate([Control(88, value=50)]) == ["NO_SELECT"]
    await rig.telemetry(start=len(rig.peer.messages))
    await rig.telemetry(start=len(rig.peer.messages))  # two control cycles later
    after = await scada.poll()
    assert after.analog_inputs[149] == 1000 and after.binary_inputs[69] is False and after.binary_inputs[23]
    assert not [m for m in rig.peer.messages[mark:] if m[0].endswith("gateway/response/ldc")]
    assert all(rig.sim.devices[d].connected for d in CONTROLLABLE)


async def test_scada_unsupported_points_and_values_are_refused(scada: ScadaMaster) -> None:
    c = scada.client
    assert await c.direct_operate([Control(3, on=True)]) == ["NOT_SUPPORTED"]
    assert await c.direct_operate([Control(88, value=1001)]) == ["OUT_OF_RANGE"]
    assert await c.direct_operate([Control(87, value=10)]) == ["NOT_SUPPORTED"]


async def test_scada_changes_are_reported_unsolicited(scada: ScadaMaster) -> None:
    await scada.poll()
    await scada.client.enable_unsolicited()
    await scada.set_limit(50.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while scada.client.values.analog_inputs.get(149) != 500:  # a class 1 event, not polled for
        assert loop.time() < deadline, "no unsolicited report of AI149"
        await scada.client.listen_unsolicited(timeout_s=1.0)
    assert scada.client.values.binary_inputs.get(69) is True


async def test_tdc_17_scada_requests_are_ldc_sign_of_life(make_rig: Callable[..., Any]) -> None:
    rig: Rig = await make_rig(comms_timeout_s=3)
    await rig.wait_status(lambda s: s["comms"]["ldc"] == "lost", timeout=10)
    async with ScadaMaster.for_site(rig.site) as scada:
        mark = len(rig.peer.messages)
        done = asyncio.Event()
        polls = asyncio.create_task(_event_polls(scada, done))
        await rig.wait_status(lambda s: s["comms"]["ldc"] == "ok", start=mark)
        done.set()
        await polls  # one request at a time on the link: let the last poll finish
        v = await _point(scada, lambda v: v.binary_inputs.get(329) is True)
        assert v.binary_inputs[330] is False  # the market side stays lost: SCADA speaks for the LDC
    await rig.wait_status(lambda s: s["comms"]["ldc"] == "lost", start=len(rig.peer.messages))


async def _event_polls(scada: ScadaMaster, done: asyncio.Event) -> None:
    while not done.is_set():
        await scada.client.event_poll()
        await asyncio.sleep(0.5)


async def test_tdc_19_scada_limit_is_enforced_again_after_a_gateway_restart(rig: Rig) -> None:
    async with ScadaMaster.for_site(rig.site) as scada:
        mark = len(rig.peer.messages)
        await scada.set_limit(20.0)
        status = await rig.wait_status(lambda s: any(a.startswith("scada-limit-") for a in s["active"]),
                                       start=mark)
        [env_id] = [a for a in status["active"] if a.startswith("scada-limit-")]
        await rig.wait_meter(lambda p: p <= 60.0 + TOL)
    await rig.stop_gateway()
    mark = len(rig.peer.messages)
    await rig.start_gateway()  # same site file, same store
    status = await rig.wait_status(lambda s: s["state"] == "online", start=mark)
    assert env_id in status["active"]
    await rig.wait_meter(lambda p: p <= 60.0 + TOL)
    async with ScadaMaster.for_site(rig.site) as scada:
        v = await _point(scada, lambda v: v.binary_inputs.get(69) is True)
        assert v.analog_inputs[149] == 200  # AO88 read back as the restored limit says
