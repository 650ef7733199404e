"""PROTOCOL rules TDC-01 … TDC-06: every inbound message is answered, and bad input changes nothing.

Driven only through MQTT on a real mosquitto, against the simulated site.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from tests.support.rig import Rig

DECISIONS = {"accepted", "constrained", "rejected"}
pytestmark = pytest.mark.asyncio


def t_now() -> datetime:
    return datetime.now(UTC)


async def assert_nothing_changed(rig: Rig) -> None:
    """No instruction is active and the site still runs its default mode, so the gateway is unchanged."""
    mark = len(rig.peer.messages)
    t = await rig.telemetry(start=mark)
    assert t["serving"] == []
    assert t["effective"]["binding"] == "default_mode"
    status = rig.gateway.engine.status(t_now())
    assert status.active == ()


async def test_tdc_01_every_instruction_gets_received_then_exactly_one_decision(rig: Rig) -> None:
    mark = await rig.send("ieso", "dispatch", "d-01", product="energy", kind="algorithmic",
                          target_kw=120.0, start=0, end=120)
    received = await rig.response("d-01", "received", role="ieso", start=mark)
    assert received["ref_type"] == "dispatch"
    await rig.response("d-01", "accepted", role="ieso", start=mark)
    # a later message is answered too, so every response to d-01 has arrived before it
    mark2 = await rig.send("ieso", "heartbeat", "hb-01")
    await rig.send("ldc", "envelope", "e-01", export_limit_kw=290.0, reason="thermal", start=0, end=120)
    await rig.response("e-01", "accepted", start=mark2)
    statuses = [r["status"] for r in rig.responses("d-01", start=mark)]
    assert statuses[0] == "received"
    assert statuses[1] in DECISIONS, statuses  # nothing between (the cycle it triggers says `started`)
    assert "started" in statuses[2:], statuses
    assert sum(s in DECISIONS for s in statuses) == 1, statuses


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b'["a", "list"]', b'{"v": 1, "type": "dispatch"}'],  # the last has no id to answer to
)
async def test_tdc_02_input_without_usable_id_gets_an_error_message(rig: Rig, payload: bytes) -> None:
    mark = await rig.publish("ieso", "dispatch", payload)
    err = await rig._json("gateway/error", lambda e: True, timeout=10, start=mark)
    assert err["topic"].endswith("/ieso/dispatch")
    assert err["reason"] == "SCHEMA_INVALID"
    assert payload[:4].decode() in err["payload"]
    await assert_nothing_changed(rig)


async def test_tdc_02_wrong_types_unknown_missing_fields_are_rejected_and_change_nothing(rig: Rig) -> None:
    good = rig.message("ieso", "dispatch", "x", product="energy", kind="algorithmic", target_kw=100.0,
                       start=0, end=120)
    cases = {
        "wrong-type": {**good, "target_kw": "lots"},
        "unknown-field": {**good, "colour": "blue"},
        "missing-field": {k: v for k, v in good.items() if k != "target_kw"},
        "naive-time": {**good, "start": good["start"].replace("Z", "")},
    }
    for case_id, body in cases.items():
        body = {**body, "id": f"bad-{case_id}"}
        mark = await rig.publish("ieso", "dispatch", body)
        rej = await rig.response(f"bad-{case_id}", "rejected", role="ieso", start=mark)
        assert rej["reason"] == "SCHEMA_INVALID", (case_id, rej)
        assert rej.get("detail"), case_id
    await assert_nothing_changed(rig)


async def test_tdc_02_oversize_payload_is_rejected(rig: Rig) -> None:
    body = rig.message("ieso", "dispatch", "big", product="energy", kind="algorithmic", target_kw=100.0,
                       start=0, end=120)
    body["padding"] = "x" * 70_000
    mark = await rig.publish("ieso", "dispatch", body)

    def about_big(t: str, p: bytes) -> bool:
        if t.endswith("gateway/error"):
            return True
        return t.endswith("gateway/response/ieso") and json.loads(p).get("ref") == "big" \
            and json.loads(p)["status"] == "rejected"

    _topic, payload = await rig.peer.wait_for(about_big, timeout=10, start=mark)
    assert json.loads(payload)["reason"] == "SCHEMA_INVALID"
    await assert_nothing_changed(rig)


async def test_tdc_03_wrong_site_is_ignored_and_wrong_resource_is_unknown_resource(rig: Rig) -> None:
    other = rig.message("ieso", "dispatch", "elsewhere", product="energy", kind="algorithmic",
                        target_kw=100.0, start=0, end=120)
    mark = len(rig.peer.messages)
    await rig.peer.publish("tdc/v1/some-other-site/ieso/dispatch", json.dumps(other).encode())
    await rig.send("ieso", "dispatch", "d-03", product="energy", kind="algorithmic", target_kw=100.0,
                   start=0, end=120, resource_id="NOT-OURS")
    rej = await rig.response("d-03", "rejected", role="ieso", start=mark)
    assert rej["reason"] == "UNKNOWN_RESOURCE"
    # responses come in order: the other site's message, sent first, was never answered
    assert rig.responses("elsewhere", start=mark) == []
    await assert_nothing_changed(rig)


async def test_tdc_04_instruction_type_or_issuer_not_of_the_topic_role_is_unauthorized(rig: Rig) -> None:
    env = rig.message("ldc", "envelope", "e-04", export_limit_kw=10.0, reason="thermal", start=0, end=120)
    mark = await rig.publish("ieso", "envelope", env)  # an envelope on the market side's topic
    rej = await rig.response("e-04", "rejected", start=mark)
    assert rej["reason"] == "UNAUTHORIZED"

    disp = rig.message("ieso", "dispatch", "d-04", product="energy", kind="algorithmic", target_kw=100.0,
                       start=0, end=120)
    disp["issuer"] = "ldc"  # claims to be the LDC on the market side's topic
    mark = await rig.publish("ieso", "dispatch", disp)
    rej = await rig.response("d-04", "rejected", start=mark)
    assert rej["reason"] == "UNAUTHORIZED"
    await assert_nothing_changed(rig)


async def test_tdc_05_expired_and_clock_skewed_instructions_are_rejected(rig: Rig) -> None:
    mark = await rig.send("ieso", "dispatch", "d-05a", product="energy", kind="algorithmic", target_kw=100.0,
                          start=-120, end=-60)
    assert (await rig.response("d-05a", "rejected", start=mark))["reason"] == "EXPIRED"

    skewed = rig.message("ieso", "dispatch", "d-05b", product="energy", kind="algorithmic", target_kw=100.0,
                         start=0, end=120)
    skewed["issued_at"] = rig.message("ieso", "heartbeat", "x", start=3600)["start"]  # an hour ahead
    mark = await rig.publish("ieso", "dispatch", skewed)
    assert (await rig.response("d-05b", "rejected", start=mark))["reason"] == "CLOCK_SKEW"
    await assert_nothing_changed(rig)


async def test_tdc_06_repeated_id_is_answered_again_and_applied_once(rig: Rig) -> None:
    msg = rig.message("ieso", "dispatch", "d-06", product="energy", kind="algorithmic", target_kw=110.0,
                      start=0, end=120)
    mark = await rig.publish("ieso", "dispatch", msg)
    await rig.response("d-06", "accepted", start=mark)
    await rig.response("d-06", "started", start=mark)
    mark2 = await rig.publish("ieso", "dispatch", msg)  # the same message again (a QoS 1 redelivery)
    await rig.response("d-06", "accepted", start=mark2)
    # applied once: it did not start again
    mark3 = await rig.send("ieso", "heartbeat", "hb-06")
    await rig.send("ldc", "envelope", "e-06", export_limit_kw=295.0, reason="thermal", start=0, end=120)
    await rig.response("e-06", "accepted", start=mark3)
    assert [r["status"] for r in rig.responses("d-06", start=mark2)].count("started") == 0

    changed = {**msg, "target_kw": 90.0}
    mark4 = await rig.publish("ieso", "dispatch", changed)
    rej = await rig.response("d-06", "rejected", start=mark4)
    assert rej["reason"] == "DUPLICATE_ID"
    # and the original still runs
    t = await rig.telemetry(start=len(rig.peer.messages))
    assert t["serving"] == [{"ref": "d-06", "kw": pytest.approx(110.0)}]


async def test_tdc_05_and_the_live_cap_over_mqtt_a_window_too_far_ahead_or_one_too_many_is_refused(
        make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig = await make_rig(max_live_instructions={"ieso": 2, "ldc": 5}, max_horizon_s={"ieso": 3600})
    common = {"product": "energy", "kind": "algorithmic", "target_kw": 50.0}
    mark = await rig.send("ieso", "dispatch", "far-1", start=3700, end=4000, **common)
    far = await rig.response("far-1", "rejected", role="ieso", start=mark)
    assert far["reason"] == "OUT_OF_RANGE" and "max_horizon_s.ieso" in far["detail"]
    for i in (1, 2):
        mark = await rig.send("ieso", "dispatch", f"ahead-{i}", start=600 * i, end=600 * i + 300, **common)
        await rig.response(f"ahead-{i}", "accepted", role="ieso", start=mark)
    before = json.dumps(rig.gateway.engine.snapshot()["state"]["store"], sort_keys=True)
    mark = await rig.send("ieso", "dispatch", "ahead-3", start=1800, end=2100, **common)
    over = await rig.response("ahead-3", "rejected", role="ieso", start=mark)
    assert over["reason"] == "TOO_MANY_INSTRUCTIONS" and "max_live_instructions.ieso = 2" in over["detail"]
    assert json.dumps(rig.gateway.engine.snapshot()["state"]["store"], sort_keys=True) == before
    mark = await rig.send("ldc", "envelope", "e-cap", export_limit_kw=200.0, reason="thermal",
                          start=0, end=60)
    await rig.response("e-cap", "accepted", role="ldc", start=mark)  # the LDC's cap is its own
