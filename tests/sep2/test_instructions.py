"""The 2030.5 plan → the core's LDC messages, through the real core (`gateway.core.engine.Engine`, pure, time
passed in): the limit the core applies and its binding are the plan's at every instant, a change never
leaves the site less restricted than both the old and the new schedule, and the core holds exactly what
the plan asks."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import model as m
from gateway.core.engine import Engine
from gateway.core.limits import limits_at
from gateway.core.outbound import Response
from gateway.north.sep2 import instructions as I
from gateway.north.sep2 import schedule as S
from gateway.north.sep2.model import ACTIVE, CANCELLED, SCHEDULED, Control, DefaultControl
from gateway.protocol.codec import decode_inbound

T = 1_800_000_000 + 3600 * 5 + 7  # not on a step of the horizon
LFDI = "3e4f45ab31edfe5b67e343e5e4562e31984e23e5"
DAY = 86400
PARAMS = m.SiteParams(site_id="site-1", resource_id="DER-1", export_cap_kw=100.0, import_cap_kw=100.0,
                      default_envelope=m.Limits(export_limit_kw=50.0, import_limit_kw=100.0))
METER = m.MeterReading(0.0, 0.0, 1.0, 60.0, True, False)
DEVICES = [m.DeviceReading("pv1", "pv", True, False, 0.0, 0.0, 60.0, 40.0, 0.0, None, True)]
LIMITS = {"export": "export_limit_kw", "import": "import_limit_kw", "generation": "generation_limit_kw",
          "load": "load_limit_kw"}


def dt(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def ctl(n: int, start: int, duration: int, *, primacy: int = 1, creation: int = T - 1000,
        status: int = SCHEDULED, ramp_s: float | None = None, **values: float | bool) -> Control:
    return Control(f"{n:032x}", "p1", primacy, creation, start, duration, values or {"export": 1500.0},
                   status=status, ramp_s=ramp_s)


DEFAULT = DefaultControl("d" * 32, "p1", 1, {"export": 0.0, "import": 2000.0})


class Site:
    """The core, fed the way the client feeds it: each poll, desired → changes/after until settled."""

    def __init__(self, params: m.SiteParams = PARAMS) -> None:
        self.params = params
        self.engine = Engine(params, dt(T - 1000))  # before every poll: the core's clock never goes back
        self.held: dict[str, m.Inbound] = {}
        self.refused: list[Response] = []
        self.steps: list[tuple[int, float]] = []  # (time, export limit at that time) after each message

    def poll(self, controls: list[Control], now: int, defaults: tuple[DefaultControl, ...] = (DEFAULT,),
             **kw: int) -> S.Plan:
        p = S.plan(controls, list(defaults), LFDI)
        want = I.desired(p, self.params, now, DAY, **kw)
        self.engine.heard("ldc", dt(now))  # the client tells the core the LDC link is up on every poll
        self.engine.cycle(dt(now), METER, DEVICES)  # the gateway's cycles go on: ended ones are dropped
        for _ in range(3):
            msgs = I.changes(want, self.held, now)
            if not msgs:
                self._check_exact(now)
                return p
            refused = set()
            for msg in msgs:
                for out in self.engine.receive(msg, dt(now)):
                    if isinstance(out, Response) and out.ref == msg.id and out.status == "rejected":
                        self.refused.append(out)
                        refused.add(msg.id)
                self.steps.append((now, self.limit(now)))
            self.held = I.after(self.held, msgs, now, refused)
        raise AssertionError("changes did not settle in two rounds")

    def _check_exact(self, now: int) -> None:
        """The core holds exactly what the client thinks it holds (nothing left over, nothing missing):
        the client's own instructions, beside whatever else the LDC sent."""
        store = self.engine.state.store
        live = {rec.msg.id for rec in store.live() if rec.msg.id.startswith(I.PREFIX)
                and (getattr(rec.msg, "end", None) is None or rec.msg.end.timestamp() > now)}
        assert live == {msg.id for msg in self.held.values() if msg.type != "cancel"
                        and (getattr(msg, "end", None) is None or msg.end.timestamp() > now)}

    def limit(self, t: int, q: str = "export", ldc_lost: bool = False) -> float:
        return getattr(limits_at(self.engine.state.store, PARAMS, dt(t), ldc_lost),
                       {"import": "import_"}.get(q, q)).kw

    def binding(self, t: int, q: str = "export") -> str:
        return getattr(limits_at(self.engine.state.store, PARAMS, dt(t), False),
                       {"import": "import_"}.get(q, q)).source


def expected(p: S.Plan, q: str, t: int) -> tuple[float, str]:
    cap = PARAMS.export_cap_kw if q == "export" else PARAMS.import_cap_kw if q == "import" else math.inf
    s = S.at(p, q, t)
    if s is None or s.value / 1000 >= cap:
        return cap, "connection_agreement"
    prefix = f"envelope:sep2:dderc:{s.mrid}:{q}:" if s.default else f"envelope:sep2:{s.mrid}:{q}"
    return s.value / 1000, prefix


def test_core_limit_and_binding_are_the_plans() -> None:
    low = ctl(1, T + 10, 600, creation=T - 900, export=1500.0, **{"import": 5000.0})
    high = ctl(2, T + 100, 100, creation=T - 100, export=500.0, ramp_s=None)
    site = Site()
    for now in range(T - 30, T + 800, 10):
        p = site.poll([low, high], now)
        cycle = site.engine.cycle(dt(now), METER, DEVICES)
        for q in ("export", "import"):
            kw, source = expected(p, q, now)
            assert site.limit(now, q) == kw
            assert site.binding(now, q).startswith(source)
        kw, source = expected(p, "export", now)
        assert (cycle.decision.export_limit_kw, cycle.decision.export_binding[:len(source)]) == (kw, source)
        assert cycle.mode != "failsafe"
    assert site.refused == []


def test_ramp_and_units_reach_the_envelope() -> None:
    p = S.plan([ctl(1, T, 600, ramp_s=30.0, generation=12_345.0)], [], LFDI)
    (msg,) = I.desired(p, PARAMS, T + 1, DAY).values()
    assert msg.type == "envelope" and msg.ramp_s == 30.0 and msg.reason == "other"
    assert msg.limits == m.Limits(generation_limit_kw=12.345)
    assert (msg.start, msg.end) == (dt(T), dt(T + 600))


def ramps(p: S.Plan, now: int, **kw: float) -> dict[str, float | None]:
    return {key: msg.ramp_s for key, msg in I.desired(p, PARAMS, now, DAY, **kw).items()
            if msg.type == "envelope" and msg.limits.export_limit_kw is not None}


def test_set_grad_w_is_hundredths_of_a_percent_of_set_max_w_per_second() -> None:
    assert I.ramp_rate(27, 10_000.0) == pytest.approx(27.0)  # 0.27 %/s of 10 kW
    assert I.ramp_rate(100, 5_000.0) == pytest.approx(50.0)
    assert I.ramp_rate(0, 5_000.0) == 0.0


def test_all_13_set_grad_w_ramps_a_control_start_and_its_end_back_to_the_default() -> None:
    """|new − old| / rate, old the plan's value just before: the default (0 W) before the control's 3 kW,
    the control's after it; the default in force now has no 2030.5 value before it: no ramp."""
    d = DEFAULT.mrid
    p = S.plan([ctl(1, T + 100, 600, export=3000.0)], [DEFAULT], LFDI)
    assert ramps(p, T, ramp_w_per_s=100.0) == {f"sep2:dderc:{d}:export:0": None,
                                               f"sep2:{1:032x}:export": pytest.approx(30.0),
                                               f"sep2:dderc:{d}:export:{T + 700}": pytest.approx(30.0)}


def test_set_grad_w_ramps_a_control_after_a_control_and_nothing_from_no_value() -> None:
    first, second = ctl(1, T, 100, export=1000.0), ctl(2, T + 100, 100, export=4000.0)
    later = ctl(3, T + 500, 100, export=2000.0)  # after a gap with no default: nothing before it
    p = S.plan([first, second, later], [], LFDI)
    assert ramps(p, T, ramp_w_per_s=50.0) == {f"sep2:{1:032x}:export": None,
                                              f"sep2:{2:032x}:export": pytest.approx(60.0),
                                              f"sep2:{3:032x}:export": None}


def test_ramp_tms_takes_precedence_over_set_grad_w() -> None:
    p = S.plan([ctl(1, T + 100, 600, ramp_s=60.0, export=3000.0), ctl(2, T + 700, 60, ramp_s=0.0)],
               [DEFAULT], LFDI)
    got = ramps(p, T, ramp_w_per_s=100.0)
    assert (got[f"sep2:{1:032x}:export"], got[f"sep2:{2:032x}:export"]) == (60.0, None)  # 0: at once


def test_set_grad_w_0_is_no_ramp() -> None:
    p = S.plan([ctl(1, T + 100, 600, export=3000.0)], [DEFAULT], LFDI)
    assert set(ramps(p, T, ramp_w_per_s=0.0).values()) == set(ramps(p, T).values()) == {None}


def test_all_13_the_core_moves_the_limit_at_set_grad_w_both_ways() -> None:
    """Through the core: up from the default's 0 W to the control's 3 kW over 30 s at 100 W/s, and back
    down to 0 W as the control ends (a tightening ramps too: PROTOCOL envelope ramp_s), never from the
    connection agreement's 100 kW although the envelope before each ramp ends at its start."""
    site, rate = Site(), 100.0
    controls = [ctl(1, T + 100, 600, export=3000.0)]
    site.poll(controls, T, ramp_w_per_s=rate)
    assert site.limit(T + 50) == 0.0
    site.poll(controls, T + 100, ramp_w_per_s=rate)  # the cycle at the start: the default's one ends
    assert [site.limit(T + 100 + dt_) for dt_ in (0, 15, 30, 300)] == pytest.approx([0.0, 1.5, 3.0, 3.0])
    site.poll(controls, T + 700, ramp_w_per_s=rate)
    assert [site.limit(T + 700 + dt_) for dt_ in (0, 15, 30, 300)] == pytest.approx([3.0, 1.5, 0.0, 0.0])


def test_a_changed_set_grad_w_moves_no_limit_in_force() -> None:
    """ALL-28: a new setGradW changes the ramp_s of what is in force (a replacement with the same start):
    the core takes over where the old one is, it does not ramp again from the connection agreement."""
    site = Site()
    controls = [ctl(1, T + 100, 600, export=3000.0)]
    site.poll(controls, T)  # no ramp rate yet
    site.poll(controls, T + 100)
    site.poll(controls, T + 110, ramp_w_per_s=10.0)  # 300 s ramps from now on
    assert site.limit(T + 110) == pytest.approx(3.0)
    site.poll(controls, T + 700, ramp_w_per_s=10.0)
    assert site.limit(T + 850) == pytest.approx(1.5)


def test_connect_and_energize_false_are_overrides_over_the_slice() -> None:
    trip = ctl(1, T + 10, 60, connect=False)
    stop = ctl(2, T + 200, 60, energize=False)
    closed = ctl(3, T + 400, 60, connect=True)  # true sets nothing
    site = Site()
    site.poll([trip, stop, closed], T)
    at = lambda t: limits_at(site.engine.state.store, PARAMS, dt(t), False)  # noqa: E731
    assert at(T + 30).zeroed_by.startswith(f"override:sep2:{trip.mrid}:connect") and at(T + 30).disconnect
    assert at(T + 230).zeroed_by.startswith(f"override:sep2:{stop.mrid}:energize")
    assert not at(T + 230).disconnect
    assert at(T + 100).zeroed_by is None and at(T + 430).zeroed_by is None
    (override,) = [msg for msg in site.held.values() if msg.type == "override" and msg.action == "disconnect"]
    assert (override.start, override.end) == (dt(T + 10), dt(T + 70))


def test_a_default_disconnect_fills_the_gaps() -> None:
    closed = ctl(1, T + 100, 60, connect=True)
    open_default = DefaultControl("e" * 32, "p1", 1, {"connect": False})
    site = Site()
    site.poll([closed], T, defaults=(open_default,))
    at = lambda t: limits_at(site.engine.state.store, PARAMS, dt(t), False)  # noqa: E731
    assert at(T).disconnect and at(T + 200).disconnect and at(T + DAY - 10).disconnect
    assert not at(T + 120).disconnect


@pytest.mark.parametrize("change", ["cancel_active", "newer_arrives", "horizon_moves", "future_moves"])
def test_a_changed_schedule_replaces_without_a_gap(change: str) -> None:
    low = ctl(1, T - 100, 4000, creation=T - 900, export=1500.0)
    high = ctl(2, T - 50, 3000, creation=T - 100, export=500.0)
    later = ctl(3, T + 600, 300, creation=T - 800, export=800.0)
    before = [low, high, later]
    now = T
    after = {
        "cancel_active": [low, replace(high, status=CANCELLED), later],
        "newer_arrives": [*before, ctl(4, T - 10, 200, creation=T - 10, export=3000.0)],
        "horizon_moves": before,  # one step of the horizon later: the default's last envelope moves
        "future_moves": [low, high, later, ctl(5, T + 650, 100, creation=T - 5, export=100.0)],
    }[change]
    site = Site()
    old_plan = site.poll(before, now)
    old_ids = {msg.id for msg in site.held.values()}
    if change == "horizon_moves":
        now += DAY // I.STEPS_PER_HORIZON
    site.steps.clear()
    new_plan = site.poll(after, now)
    assert site.steps, "the change submitted nothing"
    assert {msg.id for msg in site.held.values()} != old_ids
    for t in (now, now + 620, now + 700, now + 4000, now + DAY - 100):
        looser = max(expected(old_plan, "export", t)[0], expected(new_plan, "export", t)[0])
        site.steps.clear()
        # replay the change on a fresh core, reading the limit at t after every message
        replay = Site()
        replay.poll(before, T)
        for _ in range(3):
            msgs = I.changes(I.desired(new_plan, PARAMS, now, DAY), replay.held, now)
            if not msgs:
                break
            for msg in msgs:
                replay.engine.receive(msg, dt(now))
                assert replay.limit(t) <= looser, (change, t, msg.id)
            replay.held = I.after(replay.held, msgs, now)
        assert replay.limit(t) == expected(new_plan, "export", t)[0]
    assert site.refused == []


@pytest.mark.parametrize("later", [0, 7])
def test_a_limit_withdrawn_and_wanted_again_is_applied(later: int) -> None:
    """The server cancels a control and creates an equal one (at once, or a few seconds and another
    change later): the default's envelope after it is cancelled and wanted again with the same content;
    it goes in under a fresh id (the core would take the same id for a repeat and not apply it)."""
    site = Site()
    c = ctl(1, T + 100, 100, export=700.0)
    site.poll([], T)
    site.poll([c], T)
    site.poll([replace(c, status=CANCELLED)], T)
    elsewhere = [ctl(3, T + 5000, 100, generation=1000.0)] if later else []  # no default of its own
    if later:  # another change in between, a second later
        site.poll([replace(c, status=CANCELLED), *elsewhere], T + 1)
    site.poll([replace(c, status=CANCELLED), *elsewhere, ctl(2, T + 100, 100, export=700.0)],
              T + later)  # poll checks that the core holds exactly the plan
    assert site.binding(T + 300).startswith(f"envelope:sep2:dderc:{DEFAULT.mrid}:export:{T + 200}")
    assert site.limit(T + 300) == 0.0 and site.limit(T + 150) == 0.7


def test_a_change_of_everything_fits_the_cores_cap() -> None:
    """Every message changes at once (a newer control cuts them all): the old set, the new set and the
    default_envelope are in the core together until the cancel round, within its cap."""
    params = replace(PARAMS, max_live_instructions=m.RoleLimits(ieso=100, ldc=8))
    site = Site(params)
    controls = [ctl(i, T + 10 + 20 * i, 10, creation=T - 1000, export=100.0 * (i + 1)) for i in range(6)]
    export_only = (DefaultControl("d" * 32, "p1", 1, {"export": 0.0}),)
    site.poll(controls, T, defaults=export_only)
    newer = ctl(9, T + 5, 30, creation=T, export=50.0)
    site.poll([*controls, newer], T, defaults=export_only)  # raises if any is refused
    assert site.refused == [] and site.limit(T + 12) == 0.05


def test_a_changed_envelope_takes_over_in_the_first_round() -> None:
    site = Site()
    site.poll([], T, defaults=(DefaultControl("d" * 32, "p1", 1, {"export": 0.0}),))
    raised = DefaultControl("d" * 32, "p1", 1, {"export": 3000.0})  # the server raises its default
    msgs = I.changes(I.desired(S.plan([], [raised], LFDI), PARAMS, T, DAY), site.held, T)
    assert msgs and all(msg.type != "cancel" for msg in msgs)
    for msg in msgs:
        site.engine.receive(msg, dt(T))
    assert site.limit(T) == 3.0  # replaced at once, not the old 0 kW beside the new until the cancels


def test_a_refused_change_withholds_the_cancels() -> None:
    """The core refuses the new limit (its cap on live LDC instructions is full): the old one stays in
    force, not the looser limits beside it, until the new one is in."""
    params = replace(PARAMS, max_live_instructions=m.RoleLimits(ieso=100, ldc=6))
    site = Site(params)
    low = ctl(1, T - 100, 4000, creation=T - 900, export=1500.0)
    high = ctl(2, T - 50, 3000, creation=T - 100, export=500.0)
    site.poll([low, high], T, defaults=())
    others = [f"mqtt-{i}" for i in range(6 - len(site.held))]  # the same LDC over MQTT fills the cap
    for other in others:
        body = {"v": 1, "type": "envelope", "id": other, "issuer": "ldc", "issued_at": I._iso(T),
                "start": I._iso(T), "end": I._iso(T + 9000), "reason": "thermal", "export_limit_kw": 90.0}
        site.engine.receive(decode_inbound("ldc", "envelope", json.dumps(body).encode()), dt(T))
    cancelled = [low, replace(high, status=CANCELLED)]
    with pytest.raises(AssertionError, match="did not settle"):
        site.poll(cancelled, T + 1, defaults=())
    assert {r.reason for r in site.refused} == {"TOO_MANY_INSTRUCTIONS"}
    assert site.limit(T + 1) == 0.5  # the cancelled control's, not 90 kW
    site.engine.receive(decode_inbound("ldc", "cancel", json.dumps(
        {"v": 1, "type": "cancel", "id": "mqtt-c", "issuer": "ldc", "issued_at": I._iso(T + 2),
         "ref": others[0]}).encode()), dt(T + 2))
    site.refused.clear()
    site.poll(cancelled, T + 2, defaults=())
    assert site.refused == [] and site.limit(T + 2) == 1.5


def test_all_23_default_envelope_once_the_link_is_lost() -> None:
    controls = [ctl(i, T + 60 * i, 60, export=1000.0 + i, **{"import": 3000.0}) for i in range(5)]
    site = Site()
    site.poll(controls, T)
    (default,) = [msg for msg in site.held.values() if msg.type == "default_envelope"]
    assert default.limits == m.Limits(export_limit_kw=0.0, import_limit_kw=2.0)
    # link lost: the received schedule runs to its end, then the default (not the site file's 50 kW)
    assert site.limit(T + 130, ldc_lost=True) == 1.002
    beyond = T + 2 * DAY
    assert site.limit(beyond, ldc_lost=True) == 0.0
    assert site.limit(beyond, "import", ldc_lost=True) == 2.0
    assert site.binding(T + 400).startswith(f"envelope:sep2:dderc:{DEFAULT.mrid}:export:")


def test_all_21_many_controls_within_the_cores_cap() -> None:
    controls = [ctl(i, T + 60 * i, 60, creation=T - 1000 + i, export=1000.0 * (i + 1),
                    **{"import": 500.0 * (i + 1)}) for i in range(24)]
    site = Site()
    for now in range(T - 5, T + 60 * 25, 15):
        p = site.poll(controls, now)
        assert len(site.engine.state.store.records["ldc"]) <= PARAMS.max_live_instructions.ldc
        for q in ("export", "import"):
            assert site.limit(now, q) == expected(p, q, now)[0]
    assert site.refused == []


def test_a_limit_above_what_the_core_takes_is_that_bound() -> None:
    p = S.plan([ctl(1, T, 60, export=1e12)], [], LFDI)
    (msg,) = I.desired(p, PARAMS, T, DAY).values()
    assert msg.limits.export_limit_kw == 1000.0  # 10 × the 100 kW cap: accepted, and no tighter than it
    site = Site()
    site.poll([ctl(1, T, 60, export=1e12)], T, defaults=())
    assert site.refused == [] and site.limit(T) == 100.0


def test_bad_input_gets_a_clear_answer() -> None:
    with pytest.raises(ValueError, match=r"export limit nan W is not a limit"):
        I.desired(S.plan([ctl(1, T, 60, export=math.nan)], [], LFDI), PARAMS, T, DAY)
    with pytest.raises(ValueError, match=r"import limit -5\.0 W"):
        I.desired(S.plan([ctl(1, T, 60, **{"import": -5.0})], [], LFDI), PARAMS, T, DAY)
    with pytest.raises(ValueError, match=r"max_horizon_s\.ldc"):
        I.desired(S.plan([], [], LFDI), PARAMS, T, 8 * DAY)
    long = Control("ab" * 60, "p1", 1, T, T, 60, {"export": 1.0})
    with pytest.raises(ValueError, match="mRIDs are 32 hex"):
        I.desired(S.plan([long], [], LFDI), PARAMS, T, DAY)


def test_control_of_names_the_control_in_ids_and_bindings() -> None:
    mrid = "30000000000000000000000100000000"
    assert I.control_of(f"envelope:sep2:{mrid}:export:2~0123456789") == mrid
    assert I.control_of(f"sep2:{mrid}:connect~0123456789") == mrid
    assert I.control_of("envelope:sep2:dderc:dddd:export:0~0123456789") is None
    assert I.control_of("envelope:e-1") is None and I.control_of("default_envelope") is None


def test_submitted_survives_a_restart() -> None:
    site = Site()
    controls = [ctl(1, T + 10, 600), ctl(2, T + 100, 100, creation=T, export=10.0)]
    site.poll(controls, T)
    restored = I.load(I.dump(site.held))
    assert {k: v.digest for k, v in restored.items()} == {k: v.digest for k, v in site.held.items()}
    assert I.changes(I.desired(S.plan(controls, [DEFAULT], LFDI), PARAMS, T + 5, DAY), restored, T + 5) == []


# ---- property: the core's export limit is the plan's, at any time, whatever the changes ------------------

_controls = st.lists(st.builds(
    lambda n, start, duration, primacy, creation, exp, rs: Control(
        f"{n:032x}", "p", primacy, creation, T + start, duration, {"export": exp}, randomize_start=rs),
    st.integers(0, 30), st.integers(-300, 900), st.integers(1, 600), st.integers(0, 2), st.integers(0, 5),
    st.sampled_from([0.0, 500.0, 1500.0, 20_000.0, 250_000.0]), st.sampled_from([0, 60, -30])),
    max_size=6, unique_by=lambda c: c.mrid)


# per poll: seconds since the last one, what changes (a control cancelled, marked active by the server, or
# no longer held by the client), and which control
_polls = st.lists(st.tuples(st.integers(0, 300), st.sampled_from(["none", "cancel", "start", "drop"]),
                            st.integers(0, 5)), min_size=1, max_size=5)


def _changed(controls: list[Control], change: str, which: int) -> list[Control]:
    """The controls after one poll's change (see _polls)."""
    if not controls or change == "none":
        return controls
    i = which % len(controls)
    if change == "drop":
        return controls[:i] + controls[i + 1:]
    status = CANCELLED if change == "cancel" else ACTIVE
    return [*controls[:i], replace(controls[i], status=status), *controls[i + 1:]]


@settings(max_examples=60, deadline=None)
@given(_controls, _polls, st.booleans())
def test_core_export_limit_is_the_plans_value(controls: list[Control], polls: list[tuple[int, str, int]],
                                              with_default: bool) -> None:
    site = Site()
    now = T - 200
    defaults = (DEFAULT,) if with_default else ()
    for step, change, which in polls:
        now += step
        controls = _changed(controls, change, which)
        p = site.poll(controls, now, defaults=defaults)
        for t in (now, now + 1, now + 45, now + 300, now + 1200):
            assert site.limit(t) == expected(p, "export", t)[0], t - T
        assert site.binding(now).startswith(expected(p, "export", now)[1])
    assert site.refused == []


RATE = 1000.0  # W/s: the longest ramp here (0 → the 100 kW cap) takes 100 s
LONGEST_RAMP_S = 100


@settings(max_examples=60, deadline=None)
@given(_controls, _polls, st.booleans())
def test_with_set_grad_w_the_core_export_limit_stays_within_what_the_plan_recently_had(
        controls: list[Control], polls: list[tuple[int, str, int]], with_default: bool) -> None:
    """The limit holds while it ramps: at any instant it lies between the least and the most the plans
    (each poll's) had over the longest ramp before it, never looser (never the connection agreement's
    where a plan had less), whatever the controls that come, go and are cancelled. Before the first poll
    the core held nothing from 2030.5: the connection agreement, which a first limit ramps from."""
    site, plans = Site(), []
    now = T - 200
    first = now + polls[0][0]  # the first poll
    defaults = (DEFAULT,) if with_default else ()
    for step, change, which in polls:
        now += step
        controls = _changed(controls, change, which)
        plans.append(site.poll(controls, now, defaults=defaults, ramp_w_per_s=RATE))
        for t in (now, now + 1, now + 45, now + 300, now + 1200):
            window = [expected(p, "export", s)[0] for p in plans
                      for s in range(t - LONGEST_RAMP_S, t + 1)]
            window += [PARAMS.export_cap_kw] if t - LONGEST_RAMP_S < first else []
            assert min(window) - 1e-9 <= site.limit(t) <= max(window) + 1e-9, t - T
    assert site.refused == []
