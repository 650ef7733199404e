"""PROTOCOL rules on inbound messages at the core (TDC-02 … TDC-06, TDC-16, OUT_OF_RANGE, the caps)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import tomli_w

from gateway.config import SiteFileError, load_site, site_params
from gateway.core.model import Invalid, RoleLimits
from gateway.core.outbound import Availability, ErrorMsg, Response
from simulators.example_site import example_site
from tests.core.script import PARAMS, T0, Site, message


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


# ---- bounded: how far ahead a window may start, how many instructions may be live ----------------------
CAPPED = replace(PARAMS, max_live_instructions=RoleLimits(ieso=3, ldc=2),
                 max_horizon_s=RoleLimits(ieso=3600.0, ldc=86400.0))


@pytest.mark.parametrize(("msg_type", "fields", "horizon"), [
    ("dispatch", {"target_kw": 10.0}, 3600), ("service", {"target_kw": 10.0}, 86400),
    ("envelope", {"export_limit_kw": 10.0}, 86400), ("outage", {}, 86400),
    ("override", {"action": "hold"}, 86400),
])
def test_tdc_05_a_window_starting_beyond_the_role_horizon_is_out_of_range_and_changes_nothing(
        msg_type: str, fields: dict, horizon: int) -> None:
    site = Site(CAPPED)
    before = site.engine.snapshot()
    out = site.send(msg_type, "x1", start=horizon + 1, end=horizon + 600, **fields)
    assert decisions(out) == [("received", None), ("rejected", "OUT_OF_RANGE")]
    role = out[0].role
    assert out[1].detail == (f"start is {horizon + 1} s ahead, beyond the {horizon} s this site accepts from "
                             f"{role} ([site] max_horizon_s.{role})")
    assert site.engine.snapshot() == before
    out = site.send(msg_type, "x2", start=horizon, end=horizon + 600, **fields)  # at the horizon: fine
    assert decisions(out)[1][0] in ("accepted", "constrained")


def test_tdc_05_the_default_horizons_are_two_days_for_ieso_and_a_week_for_the_ldc() -> None:
    site = Site()
    day = 86400
    assert decisions(site.send("dispatch", "d1", target_kw=1.0, start=2 * day, end=2 * day + 300))[1] == (
        "accepted", None)
    assert decisions(site.send("dispatch", "d2", target_kw=1.0, start=2 * day + 1, end=3 * day))[1] == (
        "rejected", "OUT_OF_RANGE")
    assert decisions(site.send("outage", "o1", start=7 * day, end=7 * day + 60))[1] == ("accepted", None)
    assert decisions(site.send("outage", "o2", start=7 * day + 1, end=8 * day))[1] == (
        "rejected", "OUT_OF_RANGE")


def test_tdc_01_an_instruction_over_the_role_cap_is_too_many_instructions_and_changes_nothing() -> None:
    site = Site(CAPPED)
    for i in range(3):
        assert decisions(site.send("dispatch", f"d{i}", target_kw=10.0, start=300 * (i + 1),
                                   end=300 * (i + 2)))[1] == ("accepted", None)
    site.cycle()
    before = site.engine.snapshot()
    out = site.send("dispatch", "d3", target_kw=10.0, start=1200, end=1500)
    assert decisions(out) == [("received", None), ("rejected", "TOO_MANY_INSTRUCTIONS")]
    assert out[1].detail == ("3 instructions from ieso are live, the most this site accepts "
                             "([site] max_live_instructions.ieso = 3); cancel one or wait for one to end")
    assert site.engine.snapshot() == before
    # the other role has its own cap; a repeat of a live one is answered again (TDC-06); a cancel frees room
    assert decisions(site.send("envelope", "e1", export_limit_kw=100.0))[1] == ("accepted", None)
    again = site.receive(message("dispatch", "d0", T0, target_kw=10.0, start=300, end=600))
    assert decisions(again)[1] == ("accepted", None)
    assert decisions(site.send("cancel", "c1", issuer="ieso", ref="d1"))[1] == ("accepted", None)
    out = site.send("dispatch", "d3", target_kw=10.0, start=1200, end=1500)
    assert decisions(out)[1] == ("accepted", None)


def test_tdc_01_at_the_cap_a_default_envelope_still_replaces_the_live_one() -> None:
    site = Site(CAPPED)
    site.send("default_envelope", "de1", export_limit_kw=40.0)
    site.send("envelope", "e1", export_limit_kw=100.0)
    out = site.send("envelope", "e2", export_limit_kw=90.0)
    assert decisions(out)[1] == ("rejected", "TOO_MANY_INSTRUCTIONS")
    out = site.send("default_envelope", "de2", export_limit_kw=30.0)
    assert decisions(out) == [("received", None), ("accepted", None), ("superseded", None)]
    assert site.engine.state.store.count("ldc") == 2


def test_tdc_11_at_the_cap_a_trip_is_still_accepted_up_to_twice_the_cap() -> None:
    site = Site(CAPPED)
    site.send("envelope", "e1", export_limit_kw=100.0)
    site.send("envelope", "e2", export_limit_kw=90.0)
    assert decisions(site.send("override", "h1", action="hold"))[1] == ("rejected", "TOO_MANY_INSTRUCTIONS")
    assert decisions(site.send("override", "t1", action="cease_to_energize"))[1] == ("accepted", None)
    assert decisions(site.send("override", "t2", action="disconnect"))[1] == ("accepted", None)
    assert site.cycle().decision.export_limit_kw == 0.0
    before = site.engine.snapshot()
    out = site.send("override", "t3", action="disconnect")
    assert decisions(out)[1] == ("rejected", "TOO_MANY_INSTRUCTIONS")
    assert out[1].detail == ("4 instructions from ldc are live, the most this site accepts (twice [site] "
                             "max_live_instructions.ldc = 2 for a disconnect); cancel one or wait for one "
                             "to end")
    assert site.engine.snapshot() == before


def test_caps_come_from_the_site_file_and_a_bad_one_names_the_field(tmp_path: Path) -> None:
    data = example_site().model_dump(mode="json", exclude_none=True)
    data["site"]["max_live_instructions"] = {"ieso": 12}
    data["site"]["max_horizon_s"] = {"ldc": 3600}
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(data))
    params = site_params(load_site(path))
    assert params.max_live_instructions == RoleLimits(ieso=12, ldc=50)
    assert params.max_horizon_s == RoleLimits(ieso=172800, ldc=3600)
    data["site"]["max_live_instructions"] = {"ieso": 0}
    path.write_text(tomli_w.dumps(data))
    with pytest.raises(SiteFileError, match=r"site\.max_live_instructions\.ieso"):
        load_site(path)
