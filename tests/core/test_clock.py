"""A wall clock that steps (clock.py): timeouts and ramps count monotonic seconds, instruction windows a
wall time that never goes backwards, and a restart on a box whose clock came up in the past keeps the
restored envelopes started. Each of these failed on the engine timed on the wall clock alone."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from gateway.core.clock import Clock
from gateway.core.engine import Engine
from gateway.core.model import Heartbeat
from tests.core.script import PARAMS, T0, Site, message

DAY = timedelta(days=1)


def test_a_wall_clock_stepped_back_is_held_on_the_monotonic_clock_until_it_catches_up() -> None:
    clock = Clock(wall=T0)
    assert clock.read(T0, 100.0) == T0
    assert clock.read(T0 + timedelta(seconds=1), 101.0) == T0 + timedelta(seconds=1)
    # the wall clock steps back an hour: the core's time goes on from where it was
    assert clock.read(T0 - timedelta(hours=1), 102.0) == T0 + timedelta(seconds=2)
    assert clock.take_jump() == pytest.approx(-3602.0)
    assert clock.read(T0 - timedelta(hours=1) + timedelta(seconds=1), 103.0) == T0 + timedelta(seconds=3)
    assert clock.take_jump() is None  # reported once
    assert clock.behind_s == pytest.approx(3602.0)
    # a forward step is taken (windows are wall time) and reported
    later = T0 + timedelta(hours=2)
    assert clock.read(later, 104.0) == later
    assert clock.behind_s == 0.0


def test_tdc_17_a_clock_stepped_back_does_not_hold_off_link_loss() -> None:
    site = Site(keep_alive=False)
    mono = 1000.0
    site.engine.receive(Heartbeat(id="hb", issuer="ldc", issued_at=T0), T0, mono)
    site.engine.receive(Heartbeat(id="hb", issuer="ieso", issued_at=T0), T0, mono)
    # 100 s pass on the monotonic clock while the wall clock is stepped back by an hour
    back = T0 - timedelta(hours=1) + timedelta(seconds=100)
    status = site.engine.status(back, mono + PARAMS.comms_timeout_s + 10)
    assert status.comms == {"ieso": "lost", "ldc": "lost"}
    assert status.mode == "failsafe"


def test_a_clock_stepped_back_does_not_move_a_ramp_the_wrong_way() -> None:
    site = Site()
    site.send("dispatch", "d1", target_kw=200.0, ramp_kw_per_min=60.0)
    engine, mono = site.engine, 0.0
    first = engine.cycle(site.now, site.meter(), list(site.devices.values()), mono=mono).decision.target_kw
    targets = []
    for step in range(1, 4):  # the wall clock goes back 10 s each cycle, the monotonic clock on by 1 s
        c = engine.cycle(site.now - timedelta(seconds=10 * step), site.meter(), list(site.devices.values()),
                         mono=mono + step)
        targets.append(c.decision.target_kw)
    assert targets == pytest.approx([first + 1.0, first + 2.0, first + 3.0])


def test_tdc_19_restored_on_a_box_whose_clock_came_up_in_the_past_the_envelopes_stay_in_force() -> None:
    """A flat RTC battery: the box boots at the epoch, a day before. The restored envelope must not look
    'not yet started' (its limit would not be enforced) nor the link look fresh."""
    site = Site()
    envelope = message("envelope", "e1", site.now, export_limit_kw=60.0, start=0, end=3600)
    site.receive(envelope)
    site.settle()
    snapshot = json.loads(json.dumps(site.engine.snapshot()))
    restarted = Engine(PARAMS, site.now - DAY)
    restarted.restore(snapshot)
    c = restarted.cycle(site.now - DAY, site.meter(), list(site.devices.values()), mono=5.0)
    assert (c.decision.export_limit_kw, c.decision.export_binding) == (60.0, "envelope:e1")
    assert c.at == site.now  # held at the last time the gateway knew
    assert any("behind" in a for a in restarted.status(site.now - DAY, 6.0).alarms)
    assert not [o for o in c.outbound if getattr(o, "status", None) in ("completed", "started")]
    # and a repeat is answered as before, not taken as new (nor EXPIRED by the wall clock)
    again = restarted.receive(envelope, site.now - DAY, 6.0)
    assert [getattr(o, "status", None) for o in again] == ["received", "accepted"]
