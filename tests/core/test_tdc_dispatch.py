"""PROTOCOL rules on targets and limits at the core (TDC-07 … TDC-15), as cycle scripts.

The paper site: PV 225 + 135 kW available, a 200 kW battery, 120 kW of site load, connection agreement
export ≤ 300 kW and import ≤ 400 kW. In default mode the PCC exports 360 − 120 = 240 kW.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from gateway.core.model import Serving
from gateway.core.outbound import Availability, Constraint, Response, Window
from tests.core.script import PARAMS, T0, Site

TOL = PARAMS.target_tolerance_kw


def test_tdc_07_dispatch_inside_all_limits_reaches_target_and_is_accepted() -> None:
    site = Site()
    out = site.send("dispatch", "d1", target_kw=150.0)
    assert [(o.status, o.accepted_kw) for o in out] == [("received", None), ("accepted", 150.0)]
    c = site.settle()
    assert site.pcc_kw == pytest.approx(150.0, abs=TOL)
    assert (c.decision.target_kw, c.decision.binding, c.mode) == (150.0, "dispatch:d1", "normal")
    assert c.serving == [Serving("d1", 150.0)]
    assert site.statuses("d1") == ["received", "accepted", "started"]

    site.advance(300)
    c = site.cycle()
    assert site.statuses("d1")[-1] == "completed"
    assert (c.serving, c.decision.binding) == ([], "default_mode")
    assert site.pcc_kw == pytest.approx(240.0)


def test_tdc_08_dispatch_above_export_limit_is_constrained_to_the_limit() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=100.0)
    out = site.send("dispatch", "d1", target_kw=200.0)
    assert site.told(out, "d1") == ("constrained", "DISTRIBUTION_CONSTRAINT", 100.0)
    assert out[2] == Constraint("d1", 200.0, 100.0, "envelope:e1", "DISTRIBUTION_CONSTRAINT", T0,
                                T0 + timedelta(seconds=300), T0)
    for _ in range(5):
        c = site.cycle()
        assert site.pcc_kw <= 100.0 + 1e-9
    assert (c.decision.export_limit_kw, c.decision.export_binding) == (100.0, "envelope:e1")
    assert (c.decision.target_kw, c.decision.binding, c.mode) == (100.0, "envelope:e1", "constrained")
    assert len(site.responses("d1", "constrained")) == 1  # not repeated every cycle


def test_tdc_09_envelope_tightened_mid_dispatch_brings_export_under_it_with_a_fresh_constrained() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=200.0)
    site.settle()
    assert site.pcc_kw == pytest.approx(200.0)
    site.send("envelope", "e1", export_limit_kw=80.0, end=60)
    c = site.cycle()
    assert site.pcc_kw <= 80.0  # within one control cycle (ideal devices)
    fresh = [o for o in c.outbound if isinstance(o, Response) and o.ref == "d1"]
    assert [(o.status, o.reason, o.accepted_kw) for o in fresh] == [("constrained", "DISTRIBUTION_CONSTRAINT",
                                                                     80.0)]
    assert [o.binding for o in c.outbound if isinstance(o, Constraint)] == ["envelope:e1"]
    site.settle(10)
    assert site.statuses("d1").count("constrained") == 1
    site.advance(60)
    c = site.cycle()  # the envelope has ended: all of the dispatch can be delivered again
    assert [(o.status, o.accepted_kw) for o in c.outbound if isinstance(o, Response) and o.ref == "d1"] == [
        ("accepted", 200.0)]
    site.cycle()
    assert site.pcc_kw == pytest.approx(200.0)


def test_tdc_09_future_tightening_is_told_when_it_is_known() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=200.0)
    site.settle()
    site.send("envelope", "e1", export_limit_kw=150.0, start=100, end=200)
    c = site.cycle()
    constraint = next(o for o in c.outbound if isinstance(o, Constraint))
    assert (constraint.deliverable_kw, constraint.start, constraint.end) == (
        150.0, site.now + timedelta(seconds=99), site.now + timedelta(seconds=199))
    assert site.pcc_kw == pytest.approx(200.0)  # not yet in force


def test_tdc_10_most_restrictive_envelope_applies_and_replaces_and_cancel_remove_one() -> None:
    site = Site()
    site.send("envelope", "e-a", export_limit_kw=150.0)
    site.send("envelope", "e-b", export_limit_kw=90.0, import_limit_kw=200.0)
    site.send("envelope", "e-x", import_limit_kw=100.0)
    d = site.settle().decision
    assert (d.export_limit_kw, d.export_binding, d.import_limit_kw, d.import_binding) == (
        90.0, "envelope:e-b", 100.0, "envelope:e-x")
    assert site.pcc_kw == pytest.approx(90.0)

    site.send("envelope", "e-c", export_limit_kw=120.0, replaces="e-b")
    c = site.cycle()
    assert [o.status for o in c.outbound if isinstance(o, Response) and o.ref == "e-b"] == ["superseded"]
    assert (c.decision.export_limit_kw, c.decision.export_binding) == (120.0, "envelope:e-c")

    site.send("cancel", "c1", issuer="ldc", ref="e-c")
    assert site.statuses("e-c")[-1] == "cancelled"
    c = site.cycle()
    assert (c.decision.export_limit_kw, c.decision.export_binding) == (150.0, "envelope:e-a")


def test_tdc_10_a_replacement_takes_over_only_when_it_starts() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=100.0)
    site.send("envelope", "e2", export_limit_kw=200.0, replaces="e1", start=60)
    assert site.settle().decision.export_limit_kw == 100.0
    site.advance(60)
    c = site.cycle()
    assert site.statuses("e1")[-1] == "superseded"
    assert (c.decision.export_limit_kw, c.decision.export_binding) == (200.0, "envelope:e2")


def test_tdc_10_generation_and_load_limits_bound_the_devices_sum() -> None:
    site = Site()
    site.send("envelope", "eg", generation_limit_kw=100.0)
    c = site.settle()
    assert sum(max(cmd.p_kw, 0.0) for cmd in c.commands) == pytest.approx(100.0)
    assert c.decision.binding == "envelope:eg"
    assert site.pcc_kw == pytest.approx(-20.0)

    site.send("envelope", "el", load_limit_kw=50.0)
    out = site.send("dispatch", "d1", target_kw=-250.0)
    assert site.told(out, "d1") == ("constrained", "DISTRIBUTION_CONSTRAINT", pytest.approx(-170.0))
    c = site.settle()
    assert -sum(min(cmd.p_kw, 0.0) for cmd in c.commands) == pytest.approx(50.0)
    assert site.pcc_kw == pytest.approx(-170.0)


@pytest.mark.parametrize("action", ["disconnect", "cease_to_energize"])
def test_tdc_11_disconnect_and_cease_to_energize_override_a_dispatch_at_once(action: str) -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=150.0)
    site.settle()
    out = site.send("override", "o1", action=action)
    assert [o.status for o in out if isinstance(o, Response)] == ["received", "accepted"]
    assert [o.windows for o in out if isinstance(o, Availability)] == [
        (Window(site.now, None, 0.0, 400.0, "override:o1"),)]
    c = site.cycle()
    assert len(c.commands) == 3
    assert all(cmd.p_kw == 0.0 and cmd.connect is (action != "disconnect") for cmd in c.commands)
    fresh = [o for o in c.outbound if isinstance(o, Response) and o.ref == "d1"]
    assert [(o.status, o.reason, o.accepted_kw) for o in fresh] == [("constrained", "OVERRIDE_ACTIVE", 0.0)]
    assert [o.binding for o in c.outbound if isinstance(o, Constraint)] == ["override:o1"]
    assert (c.mode, c.serving, c.decision.binding) == ("overridden", [], "override:o1")
    assert site.pcc_kw == pytest.approx(-120.0)  # only the site load

    site.send("cancel", "c1", issuer="ldc", ref="o1")
    c = site.settle()
    assert all(cmd.connect for cmd in c.commands)
    assert site.responses("d1")[-1].status == "accepted"
    assert site.pcc_kw == pytest.approx(150.0)
    assert c.mode == "normal"


def test_tdc_11_an_override_known_in_advance_constrains_a_dispatch_at_receipt() -> None:
    site = Site()
    site.send("override", "o1", action="cease_to_energize", start=60, end=120)
    out = site.send("dispatch", "d1", target_kw=150.0)
    assert site.told(out, "d1") == ("constrained", "OVERRIDE_ACTIVE", 0.0)
    assert (out[2].start, out[2].end) == (T0 + timedelta(seconds=60), T0 + timedelta(seconds=120))


def test_tdc_12_hold_caps_export_at_its_starting_value_and_allows_decreases() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=180.0)
    site.settle()
    site.send("override", "h1", action="hold")
    c = site.cycle()
    assert (c.decision.export_limit_kw, c.decision.export_binding) == (180.0, "override:h1")
    assert c.mode == "overridden"
    out = site.send("dispatch", "d2", target_kw=250.0)
    assert site.told(out, "d2") == ("constrained", "OVERRIDE_ACTIVE", 180.0)
    site.settle()
    assert site.pcc_kw == pytest.approx(180.0)
    site.send("dispatch", "d3", target_kw=100.0)
    site.settle()
    assert site.pcc_kw == pytest.approx(100.0)  # a decrease is allowed
    site.send("dispatch", "d4", target_kw=170.0)
    site.settle()
    assert site.pcc_kw == pytest.approx(170.0)  # and going back up to the starting value too


def test_tdc_12_hold_while_importing_forbids_any_export() -> None:
    site = Site(load_kw=600.0)
    site.settle()
    assert site.pcc_kw == pytest.approx(-240.0)  # default mode: PV at available power, battery idle
    site.send("override", "h1", action="hold")
    site.cycle()
    site.load_kw = 100.0
    c = site.settle()
    assert (c.decision.export_limit_kw, c.decision.export_binding) == (0.0, "override:h1")
    assert site.pcc_kw == pytest.approx(0.0)


def test_tdc_13_outage_is_announced_on_availability_at_receipt_before_it_starts() -> None:
    site = Site()
    site.settle()
    out = site.send("outage", "out1", start=600, end=1200)
    start, end = site.now + timedelta(seconds=600), site.now + timedelta(seconds=1200)
    assert [o.windows for o in out if isinstance(o, Availability)] == [
        (Window(start, end, 0.0, 0.0, "outage:out1"),)]
    site.settle()
    assert len(site.of_type(Availability)) == 2  # the first cycle's, then the outage's: not repeated

    site.advance(600)
    c = site.cycle()
    assert site.statuses("out1")[-1] == "started"
    assert (c.decision.export_limit_kw, c.decision.import_limit_kw, c.decision.export_binding) == (
        0.0, 0.0, "outage:out1")
    assert site.pcc_kw == pytest.approx(0.0)  # isolated: the devices carry the load
    out = site.send("dispatch", "d1", target_kw=100.0, end=60)
    assert site.told(out, "d1") == ("constrained", "DISTRIBUTION_CONSTRAINT", 0.0)

    site.advance(600)
    c = site.cycle()
    assert site.statuses("out1")[-1] == "completed"
    assert [o.windows for o in c.outbound if isinstance(o, Availability)] == [()]


def test_tdc_13_outage_with_limits_and_envelopes_apply_together() -> None:
    site = Site()
    site.send("outage", "out1", export_limit_kw=60.0, import_limit_kw=30.0, kind="forced")
    site.send("envelope", "e1", export_limit_kw=80.0, import_limit_kw=10.0)
    d = site.settle().decision
    assert (d.export_limit_kw, d.export_binding, d.import_limit_kw, d.import_binding) == (
        60.0, "outage:out1", 10.0, "envelope:e1")
    assert {w.cause for w in site.of_type(Availability)[-1].windows} == {"outage:out1", "envelope:e1"}


def test_tdc_14_newer_overlapping_dispatch_supersedes_the_older() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=100.0)
    site.settle()
    site.send("dispatch", "d2", target_kw=160.0)
    c = site.cycle()
    assert site.statuses("d1")[-1] == "superseded"
    assert c.serving == [Serving("d2", 160.0)]
    site.cycle()
    assert site.pcc_kw == pytest.approx(160.0)


def test_tdc_14_a_future_dispatch_supersedes_when_it_takes_effect_and_an_adjacent_one_does_not() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=100.0, end=300)
    site.send("dispatch", "d2", target_kw=150.0, start=100, end=400)
    site.send("dispatch", "d3", target_kw=50.0, start=400, end=700)
    site.settle()
    assert site.statuses("d1")[-1] == "started"
    site.advance(100)
    c = site.cycle()
    assert site.statuses("d1")[-1] == "superseded"
    assert c.serving == [Serving("d2", 150.0)]
    site.advance(300)
    c = site.cycle()
    assert site.statuses("d2")[-2:] == ["started", "completed"]
    assert c.serving == [Serving("d3", 50.0)]


def test_tdc_14_an_older_dispatch_arriving_late_is_superseded_at_once() -> None:
    site = Site()
    site.send("dispatch", "d2", target_kw=150.0)
    site.settle()
    site.send("dispatch", "d1", target_kw=100.0, issued_at=T0 - timedelta(seconds=60))
    c = site.cycle()
    assert site.statuses("d1") == ["received", "accepted", "superseded"]
    assert c.serving == [Serving("d2", 150.0)]


@pytest.mark.parametrize(("priority", "served", "loser"), [
    ("ieso", ("ieso", "d1", "dispatch", 150.0), ("ldc", "s1", "service", 40.0)),
    ("ldc", ("ldc", "s1", "service", 40.0), ("ieso", "d1", "dispatch", 150.0)),
])
def test_tdc_15_dispatch_and_service_overlap_only_the_priority_one_is_served(priority: str, served: tuple,
                                                                             loser: tuple) -> None:
    site = Site(replace(PARAMS, dual_participation_priority=priority))
    site.send("dispatch", "d1", target_kw=150.0)
    site.send("service", "s1", target_kw=40.0)
    c = site.settle()
    told = site.responses(loser[1])[-1]
    assert (told.status, told.reason, told.accepted_kw) == ("constrained", "CONFLICTING_INSTRUCTION", 0.0)
    assert [o.binding for o in site.of_type(Constraint)] == [f"{served[2]}:{served[1]}"]
    assert c.mode == "normal"
    for _ in range(3):
        assert site.cycle().serving == [Serving(served[1], served[3])]  # never two
    assert site.pcc_kw == pytest.approx(served[3])

    site.send("cancel", "c1", issuer=served[0], ref=served[1])
    c = site.cycle()
    assert site.responses(loser[1])[-1].status == "accepted"
    assert c.serving == [Serving(loser[1], loser[3])]


def test_tdc_15_a_conflict_known_at_receipt_is_told_at_receipt() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=150.0)
    out = site.send("service", "s1", target_kw=40.0)
    assert site.told(out, "s1") == ("constrained", "CONFLICTING_INSTRUCTION", 0.0)
    assert out[2] == Constraint("s1", 40.0, 0.0, "dispatch:d1", "CONFLICTING_INSTRUCTION", T0,
                                T0 + timedelta(seconds=300), T0)


def test_device_capacity_short_of_the_target_is_constrained() -> None:
    site = Site()
    site.settle()
    out = site.send("dispatch", "d1", target_kw=-380.0)  # the battery can absorb 200 kW: PCC ≥ −320
    assert site.told(out, "d1") == ("constrained", "DEVICE_CAPACITY", pytest.approx(-320.0))
    site.settle()
    assert site.pcc_kw == pytest.approx(-320.0)
    assert site.last.decision.binding == "device_capacity"


def test_every_device_offline_is_device_offline() -> None:
    site = Site()
    for dev_id in ("pv1", "pv2", "bess1"):
        site.set_device(dev_id, online=False)
    c = site.cycle()
    assert c.commands == []
    out = site.send("dispatch", "d1", target_kw=100.0)
    assert (out[1].status, out[1].reason) == ("constrained", "DEVICE_OFFLINE")


def test_default_mode_is_clamped_into_the_limits_and_the_battery_absorbs_what_pv_would_shed() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=100.0)
    c = site.settle()
    assert site.pcc_kw == pytest.approx(100.0)
    assert {cmd.id: cmd.p_kw for cmd in c.commands} == pytest.approx({"pv1": 225.0, "pv2": 135.0,
                                                                      "bess1": -140.0})
    assert (c.decision.binding, c.mode) == ("envelope:e1", "constrained")


def test_dispatch_ramp_moves_the_pcc_target_at_the_given_rate() -> None:
    site = Site()
    site.settle()  # default mode: 240 kW
    site.send("dispatch", "d1", target_kw=120.0, ramp_kw_per_min=60.0)
    targets = [site.cycle().decision.target_kw for _ in range(11)]
    assert targets == pytest.approx([240.0 - i for i in range(11)])
    site.settle(150)
    assert site.last.decision.target_kw == pytest.approx(120.0)
    assert site.pcc_kw == pytest.approx(120.0)


def test_a_limit_is_never_delayed_by_a_ramp() -> None:
    site = Site()
    site.settle()
    site.send("dispatch", "d1", target_kw=300.0, ramp_kw_per_min=1.0)
    assert site.cycle().decision.target_kw == pytest.approx(240.0)
    site.send("envelope", "e1", export_limit_kw=100.0)
    assert site.cycle().decision.target_kw == pytest.approx(100.0)
    assert site.pcc_kw == pytest.approx(100.0)


def test_envelope_ramp_s_moves_the_limit_from_the_previous_one() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=100.0, ramp_s=100.0)
    site.cycle(50)
    d = site.cycle(0)
    assert (d.decision.export_limit_kw, d.decision.export_binding) == (pytest.approx(200.0), "envelope:e1")
    assert site.cycle(50).decision.export_limit_kw == pytest.approx(100.0)


def test_envelope_ramp_s_starts_from_the_envelope_that_ends_at_its_start() -> None:
    """What was in force just before the ramp ends at its start and leaves the store: the ramp still
    starts from it, not from the connection agreement (300 kW, a jump up the LDC never asked for)."""
    site = Site()
    site.send("envelope", "e1", export_limit_kw=200.0, end=60)
    site.send("envelope", "e2", export_limit_kw=100.0, start=60, end=600, ramp_s=100.0)
    site.advance(60)
    seen = [site.cycle(10).decision for _ in range(5)]
    assert [(d.export_limit_kw, d.export_binding) for d in seen] == [
        (pytest.approx(kw), "envelope:e2") for kw in (190.0, 180.0, 170.0, 160.0, 150.0)]
    site.send("envelope", "e3", import_limit_kw=50.0, end=600)  # the store changes: the ramp does not
    assert site.cycle(10).decision.export_limit_kw == pytest.approx(140.0)


def test_envelope_ramp_s_is_kept_when_what_it_ramps_from_is_cancelled_or_replaced_at_its_start() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=200.0, end=600)
    site.cycle(10)
    site.send("envelope", "e2", export_limit_kw=100.0, end=590, ramp_s=100.0)
    site.cycle(50)
    assert site.cycle(0).decision.export_limit_kw == pytest.approx(150.0)
    site.send("cancel", "c1", ref="e1", issuer="ldc")
    assert site.statuses("e1")[-1] == "cancelled"
    assert site.cycle(0).decision.export_limit_kw == pytest.approx(150.0)
    # a replacement that starts with it (a new ramp time) ramps from the same 200 kW, not from 300
    site.send("envelope", "e3", export_limit_kw=100.0, start=-50, end=550, ramp_s=200.0, replaces="e2")
    assert site.cycle(0).decision.export_limit_kw == pytest.approx(175.0)


def test_envelope_ramp_s_added_to_a_limit_in_force_by_a_replacement_moves_nothing() -> None:
    """A replacement that starts with the envelope it replaces takes its place: from that one's limits
    (it did not ramp), not from what preceded both (here nothing: the connection agreement's 300 kW)."""
    site = Site()
    site.send("envelope", "e1", export_limit_kw=200.0, end=600)
    site.cycle(10)
    site.send("envelope", "e2", export_limit_kw=200.0, start=-10, end=590, ramp_s=100.0, replaces="e1")
    assert site.cycle(0).decision.export_limit_kw == pytest.approx(200.0)
    site.send("envelope", "e3", export_limit_kw=100.0, start=-10, end=590, ramp_s=100.0, replaces="e2")
    assert site.cycle(0).decision.export_limit_kw == pytest.approx(190.0)


def test_closed_loop_without_a_meter_takes_no_load_credit() -> None:
    site = Site(replace(PARAMS, limit_margin_kw=2.0))
    site.send("envelope", "e1", export_limit_kw=100.0)
    site.meter_online = False
    site.send("dispatch", "d1", target_kw=250.0)
    c = site.settle()
    assert c.decision.load_kw is None
    assert site.device_total() == pytest.approx(98.0)  # ≤ export limit − margin, whatever the load
    site.meter_online = True
    site.settle()
    assert site.pcc_kw == pytest.approx(98.0)


def test_limit_margin_aims_inside_a_pcc_limit_only_near_it() -> None:
    site = Site(replace(PARAMS, limit_margin_kw=2.0))
    site.send("envelope", "e1", export_limit_kw=100.0)
    site.send("dispatch", "d1", target_kw=150.0)
    site.settle()
    assert site.pcc_kw == pytest.approx(98.0)
    site.send("dispatch", "d2", target_kw=50.0)
    site.settle()
    assert site.pcc_kw == pytest.approx(50.0)


def test_started_and_completed_follow_the_window() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=100.0, start=30, end=60)
    site.settle()
    assert site.statuses("e1") == ["received", "accepted"]
    site.advance(30)
    site.cycle()
    assert site.statuses("e1")[-1] == "started"
    site.advance(30)
    site.cycle()
    assert site.statuses("e1")[-1] == "completed"
    assert site.engine.state.store.records["ldc"] == {}


def test_an_instruction_whose_window_passed_between_cycles_completes_with_a_detail() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=100.0, start=10, end=20)
    site.advance(30)
    site.cycle(0)
    last = site.responses("d1")[-1]
    assert (last.status, last.detail) == ("completed", "ended without taking effect")
    assert last.at > T0
