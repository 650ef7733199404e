"""Fuzzing the inbound path with malformed and hostile payloads on every inbound topic (TDC-01, TDC-02).

The bulk runs in-process through what the gateway does with an MQTT message (`Gateway.submit`): the codec
(`decode_inbound`), the core (`Engine.receive`), the codec again for every answer (`encode_outbound`) and
the audit log (`Journal.instruction`), then a control cycle. Each case must be answered, an answer must be
publishable, rejected input must leave the engine exactly as it was, and nothing may raise. A sample then
goes over MQTT to a running gateway, which must answer every one and keep running.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings

from gateway.config import site_params
from gateway.core.engine import Engine
from gateway.core.outbound import ErrorMsg, Outbound, Response
from gateway.journal import Journal
from gateway.protocol.codec import decode_inbound, encode_outbound
from gateway.store import Store
from simulators.example_site import example_site
from tests.fuzz.hostile import (
    Answer,
    Case,
    answer_problem,
    exchange,
    expected_of,
    hostile_cases,
    sample,
    valid_message,
)
from tests.support.rig import Rig

SITE = example_site()
PARAMS = site_params(SITE)
NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
MAX_ANSWER_BYTES = 2048  # an answer never echoes a hostile payload at length (an error quotes 200 bytes)


def primed_snapshot() -> str:
    """An engine with an envelope, a dispatch, a hold and a default envelope in force (so that cancels,
    repeated ids and conflicts have something to hit), as a snapshot."""
    engine = Engine(PARAMS, NOW - timedelta(seconds=10))
    for role, msg_type, msg_id in [("ldc", "envelope", "env-1"), ("ieso", "dispatch", "d-1"),
                                   ("ldc", "override", "hold-1"), ("ldc", "default_envelope", "def-1")]:
        body = valid_message(role, msg_type, msg_id, NOW - timedelta(seconds=5), PARAMS.resource_id)
        engine.receive(decode_inbound(role, msg_type, json.dumps(body).encode()), NOW - timedelta(seconds=5))
    engine.cycle(NOW - timedelta(seconds=4), None, [])
    # both roles heard at NOW: a schema-valid message is a sign of life even when rejected (§6), and
    # that must not count as a change below
    for role in ("ieso", "ldc"):
        beat = valid_message(role, "heartbeat", "hb", NOW, PARAMS.resource_id)
        engine.receive(decode_inbound(role, "heartbeat", json.dumps(beat).encode()), NOW)
    assert set(engine.status(NOW).active) >= {"env-1", "d-1", "hold-1"}
    return json.dumps(engine.snapshot(), sort_keys=True)


PRIMED = primed_snapshot()
JOURNAL = Journal(Store(":memory:", 100))  # the audit log of every case, as the gateway writes it


def answers_of(outs: list[Outbound]) -> list[Answer]:
    return [Answer("error") if isinstance(o, ErrorMsg) else Answer("response", o.ref, o.status)
            for o in outs if isinstance(o, ErrorMsg | Response)]


def submit(case: Case) -> None:
    """One case down the gateway's inbound path, checked."""
    engine = Engine(PARAMS, NOW)
    engine.restore(json.loads(PRIMED))
    before = json.dumps(engine.snapshot(), sort_keys=True)
    msg = decode_inbound(case.role, case.msg_type, case.payload)
    outs = engine.receive(msg, NOW)
    encoded = [encode_outbound(out, PARAMS.site_id) for out in outs]
    JOURNAL.instruction(msg, "fuzz", encoded, engine, NOW)

    problem = answer_problem(expected_of(msg), answers_of(outs), alone=True)
    assert problem is None, problem
    for _, payload in encoded:
        assert len(payload) <= MAX_ANSWER_BYTES, payload[:300]
        json.loads(payload)
    refused = any(isinstance(o, ErrorMsg) or (isinstance(o, Response) and o.status == "rejected")
                  for o in outs)
    if refused or not outs:  # rejected, or a heartbeat: a sign of life at NOW, which it already had
        assert json.dumps(engine.snapshot(), sort_keys=True) == before, "rejected input changed the engine"
    # whatever was accepted, the control loop goes on: now and once every window has ended
    for later in (timedelta(seconds=1), timedelta(days=400)):
        cycle = engine.cycle(NOW + later, None, [])
        for out in cycle.outbound:
            encode_outbound(out, PARAMS.site_id)
    engine.status(NOW + timedelta(seconds=2))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(hostile_cases(NOW, PARAMS.resource_id))
def test_tdc_02_hostile_input_is_answered_and_rejected_input_changes_nothing(case: Case) -> None:
    submit(case)


def _payload(role: str, msg_type: str, **fields: object) -> bytes:
    body = valid_message(role, msg_type, "fz-regress", NOW, PARAMS.resource_id)
    return json.dumps({**body, **fields}).encode()


# Found by the fuzzer; kept as fixed cases so that they never come back.
@pytest.mark.parametrize("case", [
    # a lone surrogate (valid JSON, not encodable text) as the id: the answer could not be encoded
    Case("ieso", "dispatch", b'{"v": 1, "type": "dispatch", "id": "\\ud800"}', "odd id"),
    Case("ldc", "heartbeat", _payload("ldc", "heartbeat", id="a\udfff"), "odd id"),
    # times whose conversion to UTC leaves the calendar: OverflowError out of the codec
    Case("ldc", "envelope", _payload("ldc", "envelope", end="9999-12-31T23:59:59-23:59"), "near-valid"),
    Case("ldc", "cancel", _payload("ldc", "cancel", issued_at="0001-01-01T00:00:00+01:00"), "near-valid"),
    # an envelope ramp beyond the calendar: accepted, then every control cycle raised OverflowError
    Case("ldc", "envelope", _payload("ldc", "envelope", ramp_s=1e300), "near-valid"),
    Case("ldc", "envelope", _payload("ldc", "envelope", start="0001-01-01T00:00:00Z", ramp_s=6.4e10),
         "near-valid"),
    Case("ldc", "envelope", _payload("ldc", "envelope", end="9999-12-31T23:59:59Z", ramp_s=100),
         "near-valid"),
    # duplicate keys: two parsers may read two different messages (the audit log keeps the raw bytes)
    Case("ldc", "cancel", b'{"v":1,"type":"cancel","id":"fz-dup","issuer":"ldc","issuer":"ldc",'
         b'"issued_at":"2025-06-02T12:00:00Z","ref":"env-1","ref":"def-1"}', "duplicate key"),
    # a 4,000-digit version number: echoed whole in the answer's detail
    Case("ieso", "dispatch", b'{"v": ' + b"9" * 4000 + b', "id": "fz-v"}', "wrong v"),
], ids=lambda c: c.kind)
def test_regressions_found_by_fuzzing(case: Case) -> None:
    submit(case)


def test_duplicate_keys_are_rejected_as_schema_invalid() -> None:
    payload = _payload("ldc", "cancel", ref="env-1").replace(b'"ref"', b'"ref": "def-1", "ref"')
    engine = Engine(PARAMS, NOW)
    engine.restore(json.loads(PRIMED))
    outs = engine.receive(decode_inbound("ldc", "cancel", payload), NOW)
    assert [(o.status, o.reason) for o in outs if isinstance(o, Response)] == [
        ("received", None), ("rejected", "SCHEMA_INVALID")]
    assert "ref" in (outs[-1].detail or "")


@pytest.mark.asyncio
async def test_hostile_input_over_mqtt_is_answered_and_the_gateway_keeps_running(
        make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig = await make_rig()
    assert rig.gateway is not None
    cases = sample(hostile_cases(datetime.now(UTC), rig.site.site.resource_id), 60, seed=2025)
    windows = await exchange(rig.peer, rig.prefix, cases, tag="e2e")
    problems = [(case, answer_problem(expected_of(decode_inbound(case.role, case.msg_type, case.payload)),
                                      answers)) for case, answers in zip(cases, windows, strict=True)]
    assert [p for p in problems if p[1] is not None] == []
    # still running, still in control: a fresh instruction is decided and shows in telemetry
    mark = await rig.send("ldc", "envelope", "after-fuzz", export_limit_kw=35.0, reason="thermal", start=0,
                          end=600)
    await rig.response("after-fuzz", "accepted", start=mark)
    await rig.telemetry(lambda t: t["effective"]["export_limit_kw"] <= 35.0, start=mark)
    assert rig.gateway.mqtt.link.reconnects == 0
