"""PROTOCOL rules on inbound messages at the core (TDC-02 … TDC-06, TDC-16, OUT_OF_RANGE)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.core.model import Invalid
from gateway.core.outbound import Availability, ErrorMsg, Response
from tests.core.script import T0, Site, message


def decisions(out: list) -> list[tuple[str, str | None]]:
    return [(o.status, o.reason) for o in out if isinstance(o, Response)]


@pytest.mark.parametrize(("msg_type", "fields"), [
    ("dispatch", {"target_kw": 100.0}), ("service", {"target_kw": 10.0}),
    ("envelope", {"export_limit_kw": 1.0}), ("default_envelope", {"export_limit_kw": 1.0}),
    ("override", {"action": "hold"}), ("outage", {}),
    ("cancel", {"issuer": "ldc", "ref": "nothing"}),
])
def test_tdc_01_every_instruction_is_received_then_gets_exactly_one_decision(msg_type: str,
                                                                            fields: dict) -> None:
    out = Site().send(msg_type, "x1", **fields)
    statuses = [o.status for o in out if isinstance(o, Response) and o.ref == "x1"]
    assert statuses[0] == "received"
    assert len(statuses) == 2 and statuses[1] in ("accepted", "constrained", "rejected")


def test_tdc_02_invalid_message_with_id_is_rejected_and_changes_nothing() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=100.0)
    before = site.engine.snapshot()
    out = site.receive(Invalid("ldc", "envelope", "e2", "SCHEMA_INVALID", "export_limit_kw: unknown field"))
    assert [(o.role, o.ref, o.ref_type, o.status, o.reason) for o in out] == [
        ("ldc", "e2", "envelope", "received", None), ("ldc", "e2", "envelope", "rejected", "SCHEMA_INVALID")]
    assert out[1].detail == "export_limit_kw: unknown field"
    assert site.engine.snapshot() == before


def test_tdc_02_invalid_message_without_id_gets_an_error() -> None:
    site = Site()
    before = site.engine.snapshot()
    out = site.receive(Invalid("ieso", "dispatch", None, "SCHEMA_INVALID", "not UTF-8 JSON", b"{oops"))
    assert out == [ErrorMsg("ieso", "dispatch", "SCHEMA_INVALID", "not UTF-8 JSON", b"{oops", T0)]
    assert site.engine.snapshot() == before


def test_tdc_02_invalid_messages_are_no_sign_of_life() -> None:
    site = Site()
    site.advance(80)
    site.receive(Invalid("ldc", "heartbeat", "h1", "SCHEMA_INVALID", "v: required field is missing"))
    site.advance(10)
    assert site.engine.status(site.now).comms["ldc"] == "lost"


def test_tdc_03_wrong_resource_id_is_unknown_resource() -> None:
    site = Site()
    out = site.send("dispatch", "d1", target_kw=100.0, resource_id="SOMEONE-ELSE")
    assert decisions(out) == [("received", None), ("rejected", "UNKNOWN_RESOURCE")]
    assert site.cycle().serving == []


def test_tdc_04_unauthorized_invalid_is_answered_on_the_topic_role() -> None:
    site = Site()
    out = site.receive(Invalid("ieso", "envelope", "e1", "UNAUTHORIZED", "not a message type of ieso"))
    assert [(o.role, o.status, o.reason) for o in out] == [("ieso", "received", None),
                                                            ("ieso", "rejected", "UNAUTHORIZED")]
    assert site.cycle().decision.export_limit_kw == 300.0


@pytest.mark.parametrize("msg_type", ["dispatch", "envelope", "outage", "service"])
def test_tdc_05_instruction_whose_end_has_passed_is_expired(msg_type: str) -> None:
    site = Site()
    fields = {"target_kw": 10.0} if msg_type in ("dispatch", "service") else {"export_limit_kw": 10.0}
    if msg_type == "outage":
        fields = {}
    out = site.send(msg_type, "x1", start=-600, end=0, **fields)  # end == now: [start, end) is over
    assert decisions(out) == [("received", None), ("rejected", "EXPIRED")]
    assert site.engine.status(site.now).active == ()


def test_tdc_05_issued_at_beyond_the_allowed_clock_skew_is_rejected() -> None:
    site = Site()
    out = site.send("dispatch", "d1", target_kw=10.0, issued_at=T0 + timedelta(seconds=301))
    assert decisions(out) == [("received", None), ("rejected", "CLOCK_SKEW")]
    out = site.send("dispatch", "d2", target_kw=10.0, issued_at=T0 + timedelta(seconds=300))
    assert decisions(out) == [("received", None), ("accepted", None)]


@pytest.mark.parametrize(("msg_type", "fields"), [
    ("dispatch", {"target_kw": 10.0, "start": 100, "end": 100}),
    ("dispatch", {"target_kw": 10.0, "start": 200, "end": 100}),
    ("dispatch", {"target_kw": 4000.5}),  # beyond 10 × the larger cap (400 kW)
    ("dispatch", {"target_kw": -4001.0}),
    ("dispatch", {"target_kw": 10.0, "ramp_kw_per_min": -5.0}),
    ("dispatch", {"target_kw": 10.0, "ramp_kw_per_min": 0.0}),
    ("envelope", {"export_limit_kw": 10.0, "ramp_s": -1.0}),
    ("envelope", {"export_limit_kw": 1e6}),
    ("override", {"action": "hold", "start": 10, "end": 5}),
    ("outage", {"export_limit_kw": 5000.0}),
])
def test_out_of_range_values_are_rejected(msg_type: str, fields: dict) -> None:
    site = Site()
    out = site.send(msg_type, "x1", **fields)
    assert decisions(out) == [("received", None), ("rejected", "OUT_OF_RANGE")]
    assert site.engine.status(site.now).active == ()


def test_tdc_06_repeat_with_identical_content_is_answered_again_and_applied_once() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=100.0)
    msg = message("dispatch", "d1", site.now, target_kw=200.0)
    first = site.receive(msg)
    site.settle()
    site.advance(5)
    again = site.receive(msg)
    assert decisions(again) == decisions(first)[:2] == [("received", None),
                                                         ("constrained", "DISTRIBUTION_CONSTRAINT")]
    assert again[1].accepted_kw == first[1].accepted_kw == 100.0
    site.settle()
    assert site.statuses("d1").count("started") == 1
    assert site.engine.status(site.now).active == ("e1", "d1")


def test_tdc_06_same_id_with_different_content_is_duplicate_id() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=100.0)
    out = site.send("dispatch", "d1", target_kw=150.0)
    assert decisions(out) == [("received", None), ("rejected", "DUPLICATE_ID")]
    assert site.settle().serving[0].kw == pytest.approx(100.0)


def test_tdc_06_seen_ids_are_per_role_and_a_rejected_id_stays_free() -> None:
    site = Site()
    site.send("cancel", "x1", issuer="ldc", ref="nothing")  # rejected: UNKNOWN_REF, so x1 stays free for ldc
    assert decisions(site.send("dispatch", "x1", target_kw=100.0))[1] == ("accepted", None)
    assert decisions(site.send("envelope", "x1", export_limit_kw=100.0))[1] == ("accepted", None)


def test_tdc_06_heartbeats_are_not_answered() -> None:
    site = Site()
    assert site.send("heartbeat", "h1", issuer="ieso") == []
    assert site.send("heartbeat", "h1", issuer="ieso") == []


def test_tdc_16_cancel_from_the_issuing_role_ends_the_instruction() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=150.0)
    site.settle()
    out = site.send("cancel", "c1", issuer="ieso", ref="d1")
    assert [(o.ref, o.ref_type, o.status) for o in out] == [
        ("c1", "cancel", "received"), ("c1", "cancel", "accepted"), ("d1", "dispatch", "cancelled")]
    assert all(o.role == "ieso" for o in out)
    assert site.cycle().serving == []


def test_tdc_16_cancel_from_another_role_is_unauthorized_and_unknown_ref_is_rejected() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=150.0)
    assert decisions(site.send("cancel", "c1", issuer="ldc", ref="d1"))[1] == ("rejected", "UNAUTHORIZED")
    out = site.send("cancel", "c2", issuer="ieso", ref="nothing")
    assert decisions(out)[1] == ("rejected", "UNKNOWN_REF")
    assert site.settle().serving[0].ref == "d1"
    site.send("cancel", "c3", issuer="ieso", ref="d1")
    # already ended: nothing left to cancel
    assert decisions(site.send("cancel", "c4", issuer="ieso", ref="d1"))[1] == ("rejected", "UNKNOWN_REF")
    assert decisions(site.send("cancel", "c5", issuer="ieso", ref="c3"))[1] == ("rejected", "UNKNOWN_REF")


def test_tdc_16_cancelling_an_envelope_lifts_it_and_updates_availability() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=100.0)
    assert site.settle().decision.export_limit_kw == 100.0
    out = site.send("cancel", "c1", issuer="ldc", ref="e1")
    assert [o.status for o in out if isinstance(o, Response)] == ["received", "accepted", "cancelled"]
    assert [o.windows for o in out if isinstance(o, Availability)] == [()]
    assert site.cycle().decision.export_limit_kw == 300.0


def test_tdc_16_cancelling_the_default_envelope_brings_back_the_configured_one() -> None:
    site = Site(keep_alive=False)
    site.send("default_envelope", "de1", export_limit_kw=10.0)
    site.advance(100)  # the LDC link is lost: the default envelope applies
    assert site.cycle().decision.export_limit_kw == 10.0
    site.send("cancel", "c1", issuer="ldc", ref="de1")
    site.advance(100)
    assert site.cycle().decision.export_limit_kw == 50.0  # the site configuration's default
