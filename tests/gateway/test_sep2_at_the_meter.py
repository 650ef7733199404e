"""The 2030.5 client's scheduling and reporting, end to end: the utility-server simulator over real mutual
TLS, the site's simulators over Modbus and DNP3, the effect read at the simulated PCC meter and in what the
server received. Each test follows a CSIP-AUS client procedure (cactus-test-definitions): supersede by
primacy (GEN-10) and by creationTime (ALL-21), randomizeStart (ALL-22), the power multiplier (ALL-24), the
server's postRate (ALL-10) with the readings it asks for (ALL-06), and a control's Responses (ALL-18).
The pure rules are tested in tests/sep2/test_schedule.py; these show them hold at the PCC.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from gateway.north.sep2.model import (
    COMPLETED,
    RECEIVED,
    RESP_CANCELLED,
    RESP_SUPERSEDED,
    STARTED,
    Control,
)
from gateway.north.sep2.schedule import offset
from simulators.sep2_certs import Pki
from simulators.sep2_server import Sep2Server
from tests.gateway import test_sep2_gateway as rig_of
from tests.support.rig import Rig

pytestmark = pytest.mark.asyncio
# the rig of test_sep2_gateway.py: the test PKI, the server polled every second, the site as its client
pki, server, site = rig_of.pki, rig_of.server, rig_of.site
statuses = rig_of.statuses


def binds(t: dict, mrid: str) -> bool:
    return f"sep2:{mrid}" in t["effective"]["binding"]


def held(rig: Rig, mrid: str) -> list:
    """The core's live LDC instructions that carry the control `mrid`."""
    assert rig.gateway is not None
    return [m for msg_id, m in rig.gateway.live("ldc").items() if msg_id.startswith(f"sep2:{mrid}:")]


def posted_at(server: Sep2Server, mrid: str, status: int) -> float:
    """The wall time (the server's clock: no skew is set here) the Response `status` to `mrid` came."""
    return next(r.wall for r in server.responses if r.subject == mrid and r.status == status)


@dataclass(frozen=True)
class Reading:
    role: str  # the MirrorUsagePoint's roleFlags: "03" the site, "49" the DER
    quantity: str  # the MirrorMeterReading's description: w, var, v, hz
    start: int
    duration: int
    value: float  # the posted value times 10 ** the powerOfTenMultiplier its ReadingType declares
    wall: float


def readings(server: Sep2Server) -> list[Reading]:
    """Every reading posted, read with the ReadingType the gateway declared for it in its MirrorUsagePoint."""
    declared = {}
    for posted in server.mirror_usage_points:
        for mmr in posted.body.mirrorMeterReadings:
            declared[mmr.mRID.upper()] = (posted.body.roleFlags, mmr.description,
                                          mmr.readingType.powerOfTenMultiplier or 0)
    out = []
    for posted in server.readings:
        role, quantity, pow10 = declared[posted.body.mRID.upper()]
        r = posted.body.reading
        out.append(Reading(role, quantity, r.timePeriod.start, r.timePeriod.duration,
                           r.value * 10.0**pow10, posted.wall))
    return out


def series(server: Sep2Server, role: str, quantity: str, since: float = 0) -> list[Reading]:
    """One quantity of one MirrorUsagePoint, in the order posted: the intervals from `since`."""
    return [r for r in readings(server) if (r.role, r.quantity) == (role, quantity) and r.start >= since]


async def test_gen_10_the_lower_primacy_wins_at_the_pcc_though_less_restrictive_and_the_other_is_superseded(
        site: Rig, server: Sep2Server) -> None:
    assert site.sim.meter_p_kw > 80
    second = server.add_program(primacy=2, fsa=2)
    # one call after the other with no await between: the client never sees one without the other. The
    # primacy-1 control is the older: primacy decides before creationTime
    now = server.now()
    kept = server.add_control(1, now - 1, 120, export_w=60_000, creation_time=now - 10)
    beaten = server.add_control(second, now - 1, 60, export_w=30_000)  # newer, inside kept's window
    await site.wait_meter(lambda p: p <= 60.5, timeout=20)
    # 2030.5 supersede within the one LDC interface, not the core's most restrictive across interfaces
    await server.wait_for(lambda: statuses(server, beaten) == [RECEIVED, RESP_SUPERSEDED], timeout=10)
    await server.wait_for(lambda: statuses(server, kept) == [RECEIVED, STARTED], timeout=10)
    t = await site.telemetry(start=len(site.peer.messages))
    assert binds(t, kept) and not binds(t, beaten) and t["effective"]["export_limit_kw"] == 60.0
    assert held(site, kept) and not held(site, beaten)  # the superseded control never reached the core
    assert site.sim.meter_p_kw > 50  # at the primacy-1 limit, not driven down to the other's 30 kW
    assert not server.errors


async def test_all_21_within_one_primacy_the_newer_control_wins_and_the_older_is_superseded(
        site: Rig, server: Sep2Server) -> None:
    assert site.sim.meter_p_kw > 80
    now = server.now()
    older = server.add_control(1, now - 1, 60, export_w=50_000, creation_time=now - 10)
    newer = server.add_control(1, now - 1, 60, export_w=70_000, creation_time=now)
    await site.wait_meter(lambda p: p <= 70.5, timeout=20)
    await server.wait_for(lambda: statuses(server, older) == [RECEIVED, RESP_SUPERSEDED], timeout=10)
    await server.wait_for(lambda: statuses(server, newer) == [RECEIVED, STARTED], timeout=10)
    t = await site.telemetry(start=len(site.peer.messages))
    assert binds(t, newer) and not binds(t, older) and t["effective"]["export_limit_kw"] == 70.0
    assert not held(site, older)
    assert site.sim.meter_p_kw > 60
    assert not server.errors


def randomised(pki: Pki, window: int, low: int, high: int) -> tuple[str, int]:
    """An mRID whose randomised start offset (schedule.offset, from the client's LFDI and the mRID) for
    randomizeStart = `window` lies in [low, high] s, and that offset."""
    while True:
        mrid = uuid.uuid4().hex.upper()
        drawn = offset(Control(mrid, "", 1, 0, 0, 1, {}, randomize_start=window), pki.client_lfdi)
        if low <= drawn <= high:
            return mrid, drawn


async def test_all_22_a_randomised_start_takes_effect_at_the_meter_at_its_drawn_offset_not_the_nominal_start(
        site: Rig, server: Sep2Server, pki: Pki) -> None:
    assert site.sim.meter_p_kw > 80
    mrid, drawn = randomised(pki, 10, 5, 8)  # well clear of the nominal start, within the 10 s window
    start = server.now() + 1
    effective = start + drawn
    server.add_control(1, start, 30, export_w=40_000, randomize_start=10, mrid=mrid)
    await server.wait_for(lambda: RECEIVED in statuses(server, mrid), timeout=10)
    await site.telemetry(lambda t: bool(held(site, mrid)), timeout=10)
    envelope = held(site, mrid)[0]
    assert envelope.start.timestamp() == effective  # the core holds the limit from the drawn start
    p = await site.wait_meter(lambda p: p <= 40.5, timeout=30)
    assert time.time() >= effective, f"the PCC was at {p:.1f} kW before the randomised start"
    await server.wait_for(lambda: STARTED in statuses(server, mrid), timeout=10)
    assert posted_at(server, mrid, STARTED) >= effective
    assert not server.errors


async def test_all_24_the_servers_power_multiplier_is_honoured_at_the_pcc_and_readings_use_their_declared_one(
        site: Rig, server: Sep2Server) -> None:
    assert site.sim.meter_p_kw > 150
    server.multiplier = 4  # ActivePower value 12 × 10^4 W: 125 kW truncated to 120 kW, as envoy encodes it
    mrid = server.add_control(1, server.now() - 1, 120, export_w=125_000)
    t = await site.telemetry(lambda t: binds(t, mrid), timeout=20)
    assert t["effective"]["export_limit_kw"] == 120.0
    await site.wait_meter(lambda p: p <= 120.5, timeout=20)
    settled = time.time()
    assert site.sim.meter_p_kw > 100
    # a reading of an interval wholly at the limit: its value × 10^(its ReadingType's multiplier) is the W
    site_w = await server.wait_for(lambda: series(server, "03", "w", since=settled), timeout=15)
    assert site_w[0].value == pytest.approx(-site.sim.meter_p_kw * 1000, abs=3000)  # export is negative
    der_w = await server.wait_for(lambda: series(server, "49", "w", since=settled), timeout=15)
    assert der_w[0].value == pytest.approx(site.sim.der_p_kw * 1000, abs=3000)
    assert not server.errors


async def test_all_10_all_06_readings_are_posted_on_utc_ticks_of_the_servers_post_rate_and_follow_a_change(
        make_rig: Callable[..., Awaitable[Rig]], pki: Pki, server: Sep2Server) -> None:
    server.set_poll_rate("mupl", 1)  # the MirrorUsagePointList read each second: a change is seen at once
    # the ticks are the server's: its clock 31 s ahead of the box's, no multiple of the postRates 2 and 3 s
    server.clock_offset_s = 31.0  # within max_clock_skew_s
    site = await make_rig(sections=rig_of.sep2_sections(pki, server))
    # ALL-06: a tick's readings: the site's W, var, V and Hz, the DER's W and var, at the rate of 2 s
    tick = (await server.wait_for(lambda: series(server, "03", "w"), timeout=10))[0].start
    await server.wait_for(lambda: len([r for r in readings(server) if r.start == tick]) == 6, timeout=10)
    one = {(r.role, r.quantity): r.value for r in readings(server) if r.start == tick}
    assert one.keys() == {("03", "w"), ("03", "var"), ("03", "v"), ("03", "hz"), ("49", "w"), ("49", "var")}
    assert one["03", "w"] == pytest.approx(-site.sim.meter_p_kw * 1000, abs=2000)  # steady: no control
    assert one["03", "var"] == pytest.approx(-site.sim.meter.q_kvar * 1000, abs=2000)
    assert one["03", "v"] == pytest.approx(site.site.sep2.nominal_v, rel=0.05)
    assert one["03", "hz"] == pytest.approx(60.0, abs=0.1)
    assert one["49", "w"] == pytest.approx(site.sim.der_p_kw * 1000, abs=2000)
    assert one["49", "var"] == pytest.approx(sum(d.q_kvar for d in site.sim.devices.values()
                                                 if d is not site.sim.meter) * 1000, abs=2000)
    # ALL-10: the server changes its postRate; the readings follow from the next tick of 3 s
    changed = time.time()  # real time, as Reading.wall
    server.set_post_rate(3)
    # two ticks of 3 s, each the site's four readings then the DER's two
    await server.wait_for(lambda: len([r for r in readings(server) if r.duration == 3]) >= 12, timeout=20)
    for role, quantity in one:
        posted = series(server, role, quantity)
        for before, after in itertools.pairwise(posted):
            assert after.start == before.start + before.duration  # no gap, no overlap
        # each posted once it had ended, on the server's clock
        assert all(r.wall + server.clock_offset_s >= r.start + r.duration for r in posted)
        # the ticks are UTC multiples of 2 s until the change is seen, of 3 s from then on (the interval
        # that spans the change runs from the last tick of 2 s to the first of 3 s: it may be shorter)
        assert all(r.duration == 2 for r in posted if r.wall < changed)
        ends = [r.start + r.duration for r in posted]
        assert any(all(e % 2 == 0 for e in ends[:k]) and all(e % 3 == 0 for e in ends[k:])
                   for k in range(len(ends))), ends
        assert posted[-1].duration == 3
    assert not server.errors


async def test_all_18_a_controls_responses_come_in_order_received_started_completed_or_cancelled(
        site: Rig, server: Sep2Server) -> None:
    server.set_default(1, export_w=150_000)
    now = server.now()
    done = server.add_control(1, now - 1, 6, export_w=50_000)
    active = server.add_control(1, now + 5, 60, export_w=40_000)  # follows `done`
    scheduled = server.add_control(1, now + 300, 10, export_w=30_000)
    await site.wait_meter(lambda p: p <= 50.5, timeout=20)
    await server.wait_for(lambda: statuses(server, done) == [RECEIVED, STARTED, COMPLETED], timeout=20)
    assert posted_at(server, done, COMPLETED) >= now + 5
    await site.wait_meter(lambda p: p <= 40.5, timeout=20)
    await server.wait_for(lambda: statuses(server, active) == [RECEIVED, STARTED], timeout=10)
    assert posted_at(server, active, STARTED) >= now + 5
    assert statuses(server, scheduled) == [RECEIVED]
    server.cancel(active)  # while in force
    server.cancel(scheduled)  # before it began
    await server.wait_for(lambda: statuses(server, active) == [RECEIVED, STARTED, RESP_CANCELLED], timeout=10)
    await server.wait_for(lambda: statuses(server, scheduled) == [RECEIVED, RESP_CANCELLED], timeout=10)
    await site.wait_meter(lambda p: p > 100, timeout=20)  # back to the default's 150 kW
    t = await site.telemetry(lambda t: "sep2:dderc" in t["effective"]["binding"], timeout=10)
    assert t["effective"]["export_limit_kw"] == 150.0
    assert not held(site, active) and not held(site, scheduled)
    assert not server.errors
