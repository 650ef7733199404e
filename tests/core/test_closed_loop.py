"""The closed loop on the metered error (feedback.py), devices that do not follow (following.py), limits the
site cannot meet (unmet.py) and the core's boundary for measurements (inputs.py), as cycle scripts.

Each scenario is one the load estimate alone gets wrong: it failed on the engine before the loop (the PCC
sat above the limit with no end).
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import pairwise

import pytest

from gateway.core import model as m
from gateway.core.feedback import Loop, Trim, update
from gateway.core.following import Track, deviation_kw, track
from gateway.core.outbound import Constraint
from tests.core.script import PARAMS, Site, battery, pv

TWO_PVS = [pv("pv1", 225.0), pv("pv2", 135.0)]


def test_tdc_08_a_device_that_does_not_follow_is_found_and_its_share_moves_to_the_others() -> None:
    """pv1 answers but stays at 170 kW whatever it is told; under a 100 kW export limit pv2 can cover it.
    Before the loop: 132.5 kW at the meter, forever (the issue saw 124.5 kW on the example site)."""
    site = Site(devices=list(TWO_PVS))
    site.send("envelope", "e1", export_limit_kw=100.0)
    site.cycle()
    site.stuck.add("pv1")
    site.set_device("pv1", p_kw=170.0)
    # within pv1's response time it is still given a share, and the loop takes the excess off pv2
    pcc = [site.pcc_kw for _ in range(8) if not site.cycle().not_following]
    assert len(pcc) == 8 and pcc[0] > 120.0
    assert all(b <= a + 1e-6 for a, b in pairwise(pcc)) and pcc[-1] <= 100.0 + 1.0
    changes = [ch for _ in range(3) for ch in site.cycle().follow_changes]  # 10 s after it began to deviate
    assert [(ch.id, ch.following) for ch in changes] == [("pv1", False)]
    c = site.cycle()
    assert c.not_following == {"pv1"}
    pv1 = next(x for x in c.commands if x.id == "pv1")
    assert pv1.p_kw < 170.0  # it is told its last command again, not a new share
    site.settle(6)
    assert 100.0 - 3 * PARAMS.target_tolerance_kw <= site.pcc_kw <= 100.0
    alarms = site.engine.status(site.now).alarms
    assert any("pv1" in a and "does not follow" in a for a in alarms)
    # the command is re-sent every response time while it does not follow
    resends = [x.resend for _ in range(10) for x in site.cycle().commands if x.id == "pv1"]
    assert sum(resends) == 1
    # it follows again once it does what it is told: it is given its share back
    site.stuck.discard("pv1")
    site.settle(3)
    c = site.settle(4)
    assert not c.not_following
    assert 100.0 - 3 * PARAMS.target_tolerance_kw <= site.pcc_kw <= 100.0
    assert site.engine.status(site.now).alarms == ()


def test_tdc_08_a_device_that_follows_again_at_last_never_takes_the_pcc_over_the_limit() -> None:
    """pv1 stops at 10 kW while told 219 kW and pv2 takes its share under a 150 kW export limit. Told that
    219 kW again, pv1 following at last would have put the PCC at 354 kW for a cycle; it is told no more
    than the room below the limit, and it gets its share back once the limit leaves room to see it follow."""
    site = Site(load_kw=0.0)
    site.send("envelope", "e1", export_limit_kw=150.0, end=3600)
    site.settle(10)
    assert site.devices["pv1"].p_kw > 200.0
    site.set_device("pv1", p_kw=10.0)
    site.stuck.add("pv1")
    for _ in range(40):
        c = site.cycle()
    assert c.not_following == {"pv1"}
    site.stuck.discard("pv1")
    pcc = [site.pcc_kw for _ in range(10) if site.cycle()]
    assert max(pcc) <= 150.0 + 1e-6
    site.send("envelope", "e2", export_limit_kw=300.0, replaces="e1", end=3600)
    site.settle(10)
    assert not site.last.not_following and site.devices["pv1"].p_kw > 200.0
    assert site.engine.status(site.now).alarms == ()


def test_tdc_08_readings_a_few_per_cent_high_still_bring_the_meter_under_the_limit() -> None:
    """Both inverters measure 5 % high (within what inverter meters are sold as): the load estimate is
    25 kW too high and, before the loop, the meter sat at 118 kW under a 100 kW limit."""
    site = Site(devices=list(TWO_PVS))
    site.reading_scale = {"pv1": 1.05, "pv2": 1.05}
    site.send("envelope", "e1", export_limit_kw=100.0)
    c = site.settle(12)
    assert site.pcc_kw <= 100.0 + 0.5
    assert site.pcc_kw >= 100.0 - 3 * PARAMS.target_tolerance_kw
    assert c.decision.trim.export_kw > 0
    assert not c.not_following  # a PV below its limit by its reading is following


def test_tdc_07_a_target_inside_the_limits_is_tracked_with_readings_a_few_per_cent_low() -> None:
    site = Site(devices=[*TWO_PVS, battery("bess1", 200.0, 200.0)])
    site.reading_scale = {"bess1": 0.95}
    site.send("dispatch", "d1", target_kw=150.0)
    site.settle(15)
    assert site.pcc_kw == pytest.approx(150.0, abs=PARAMS.target_tolerance_kw)


def test_tdc_22_a_stuck_device_the_others_cannot_cover_is_told_upstream_as_a_constraint() -> None:
    """pv1 stuck at 225 kW with only pv2 (already at 0) to take from: the 50 kW limit cannot be met; the LDC
    gets a constraint and a fresh constrained for its envelope; an accepted once it is met again."""
    site = Site(devices=list(TWO_PVS), load_kw=120.0)
    site.send("envelope", "e1", export_limit_kw=50.0)
    site.cycle()
    site.stuck.add("pv1")
    site.set_device("pv1", p_kw=225.0)
    site.settle(25)
    assert site.pcc_kw == pytest.approx(105.0)  # 225 − 120: pv2 is at 0
    constraints = site.of_type(Constraint)
    assert len(constraints) == 1
    con = constraints[0]
    assert (con.ref, con.binding, con.requested_kw, con.reason) == ("e1", "envelope:e1", 50.0,
                                                                     "DEVICE_CAPACITY")
    assert con.deliverable_kw == pytest.approx(105.0, abs=1.0)
    told = site.responses("e1", "constrained")
    assert len(told) == 1 and "pv1 not following its command" in (told[0].detail or "")
    assert any("cannot be met" in a for a in site.engine.status(site.now).alarms)
    site.stuck.discard("pv1")
    site.settle(8)
    assert site.pcc_kw <= 50.0
    assert site.statuses("e1")[-1] == "accepted"


def test_tdc_22_no_constraint_while_the_loop_can_still_bring_the_site_within_the_limit() -> None:
    site = Site(devices=list(TWO_PVS))
    site.send("envelope", "e1", export_limit_kw=100.0)
    site.cycle()
    site.stuck.add("pv1")
    site.set_device("pv1", p_kw=150.0)
    site.settle(30)
    assert site.of_type(Constraint) == []


def test_a_non_finite_reading_is_refused_and_the_device_counts_as_not_answering() -> None:
    site = Site()
    site.send("envelope", "e1", export_limit_kw=100.0)
    site.settle()
    site.set_device("pv1", p_kw=math.nan)
    c = site.cycle()
    assert c.refused == ("pv1",)
    assert "pv1" not in {x.id for x in c.commands}
    assert all(math.isfinite(x.p_kw) for x in c.commands)
    assert math.isfinite(c.decision.device_total_kw)


def test_tdc_12_a_nan_meter_reading_when_a_hold_starts_leaves_the_hold_at_the_last_good_value() -> None:
    """Before: the hold took NaN as its value, and NaN compares false with every export: no hold at all."""
    site = Site()
    site.send("dispatch", "d1", target_kw=80.0)
    site.settle()
    site.send("override", "h1", action="hold", start=1)
    nan_meter = m.MeterReading(math.nan, 0.0, 1.0, 60.0, True, False)
    site.advance(1)
    c = site.engine.cycle(site.now, nan_meter, list(site.devices.values()))
    hold = site.engine.state.store.records["ldc"]["h1"]
    assert hold.hold_kw == pytest.approx(80.0)
    assert c.decision.export_limit_kw == pytest.approx(80.0)
    site.send("dispatch", "d2", target_kw=200.0)
    site.settle()
    assert site.pcc_kw <= 80.0 + 1e-6


def test_the_export_trim_only_ever_takes_export_away() -> None:
    """Integral action on a limit: grows while the meter is beyond it, unwinds only while it is within it
    less the margin, never below zero, never by more than the devices can still give."""
    x = Loop(pcc_kw=110.0, total_kw=200.0, export_kw=100.0, import_kw=50.0, margin_kw=1.0, target_kw=100.0,
             tracking=True, tolerance_kw=1.0, converging_kw=0.0, fresh=True, at_rest=True,
             room_down_kw=4.0, room_up_kw=0.0, target_room_down_kw=0.0, target_room_up_kw=0.0)
    steady = Trim(total_kw=200.0)
    assert update(steady, x).export_kw == 4.0  # the devices have 4 kW left to give
    assert update(steady, replace(x, room_down_kw=50.0)).export_kw == 10.0
    unsteady = Trim(export_kw=3.0, total_kw=150.0)  # the total moved: the meter shows an older total
    assert update(unsteady, x).export_kw == 3.0
    converging = replace(x, converging_kw=8.0)
    assert update(steady, converging).export_kw == 0.0
    within = replace(x, pcc_kw=99.5)  # inside the margin: held
    assert update(Trim(export_kw=3.0, total_kw=200.0), within).export_kw == 3.0
    below = replace(x, pcc_kw=90.0)
    assert update(Trim(export_kw=3.0, total_kw=200.0), below).export_kw == 0.0
    # the devices' outputs still moving (a ramp the devices report as their available power), or one
    # waiting to enter service: the limit trim acts all the same
    assert update(steady, replace(x, at_rest=False)).export_kw == 4.0
    # not on new readings (a cycle an instruction triggers): the meter shows nothing new
    assert update(steady, replace(x, fresh=False)).export_kw == 0.0


def test_tdc_08_the_target_trim_waits_for_the_site_to_be_at_rest() -> None:
    """After a reconnect the PVs ramp up for many cycles, their output reported as their available
    power (so they never deviate): a target trim that integrated the shortfall meanwhile put the demo's
    site 100 kW over its target once they arrived."""
    x = Loop(pcc_kw=50.0, total_kw=350.0, export_kw=300.0, import_kw=400.0, margin_kw=1.0, target_kw=200.0,
             tracking=True, tolerance_kw=3.0, converging_kw=0.0, fresh=True, at_rest=False,
             room_down_kw=350.0, room_up_kw=200.0, target_room_down_kw=350.0,
             target_room_up_kw=200.0)
    steady = Trim(total_kw=350.0)
    assert update(steady, x).target_kw == 0.0  # still ramping: the meter does not show the site at rest
    assert update(steady, replace(x, at_rest=True)).target_kw == 75.0  # at rest: GAIN of the error


def test_a_deviation_is_what_the_command_does_not_explain() -> None:
    p = replace(pv("pv1", 225.0), p_kw=80.0, available_kw=80.0)
    assert deviation_kw(p, 100.0) == 0.0  # a PV under its limit: the sun
    assert deviation_kw(p, 60.0) == 20.0
    # under its limit and under the power it says it has: it does not give what it could
    assert deviation_kw(replace(p, available_kw=225.0), 100.0) == -20.0
    b = replace(battery("b1", 100.0, 50.0), p_kw=-30.0)
    assert deviation_kw(b, -80.0) == 20.0  # asked to charge 80, can charge 50, charges 30
    assert deviation_kw(b, 10.0) == -40.0


def test_a_device_converging_to_its_command_is_not_counted_against_it() -> None:
    tracks: dict[str, Track] = {}
    d = replace(pv("pv1", 225.0), p_kw=200.0)
    f = track(tracks, [d], {"pv1": 100.0}, PARAMS, 0.0)
    assert f.converging_kw == 100.0 and not f.drifting  # it just began to deviate
    f = track(tracks, [replace(d, p_kw=150.0)], {"pv1": 100.0}, PARAMS, 5.0)
    assert f.converging_kw == 50.0  # and it is coming down
    f = track(tracks, [replace(d, p_kw=150.0)], {"pv1": 100.0}, PARAMS, 6.0)
    assert f.converging_kw == 0.0 and f.drifting == {"pv1"}  # no longer: the loop may act on it
    f = track(tracks, [replace(d, p_kw=150.0)], {"pv1": 100.0}, PARAMS, 14.9)
    assert not f.not_following  # its response time counts from its last move towards its command
    f = track(tracks, [replace(d, p_kw=150.0)], {"pv1": 100.0}, PARAMS, 15.0)
    assert f.not_following == {"pv1"} and f.resend == {"pv1"}


def test_tdc_16_instructions_back_to_back_after_a_disconnect_do_not_wind_the_loop_up() -> None:
    """The demo's step 9: the disconnect and the hold cancelled one after the other. Each instruction
    triggers a cycle on the last readings (the site still at 0); to the second one the total looked
    steady, and its trim took the whole shortfall: the export went to its 300 kW limit, 100 kW over the
    200 kW target, once the devices arrived."""
    site = Site(load_kw=150.0)
    site.send("envelope", "e1", export_limit_kw=300.0, import_limit_kw=400.0)
    site.send("dispatch", "d1", target_kw=200.0)
    site.settle()
    site.send("override", "hold", action="hold", reason="switching", issuer="ldc")
    site.send("override", "trip", action="disconnect", reason="protection", issuer="ldc")
    site.settle(10)
    assert site.pcc_kw == pytest.approx(-150.0)
    for msg_id, ref in (("release-trip", "trip"), ("release-hold", "hold")):
        site.send("cancel", msg_id, ref=ref, issuer="ldc")
        readings = list(site.devices.values())
        site.engine.cycle(site.now, site.meter(), readings, new_readings=False)  # as the app does
    after = [site.cycle() and site.pcc_kw for _ in range(10)]
    assert max(after) <= 200.0 + PARAMS.target_tolerance_kw, after
    assert abs(after[-1] - 200.0) <= PARAMS.target_tolerance_kw
