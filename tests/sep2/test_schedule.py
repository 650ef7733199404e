"""The 2030.5 schedule as plain functions of time: which control is in force per quantity (supersede by
primacy then creationTime, randomised start, the default) and which Responses are due, named after the
CSIP-AUS client procedures they follow (reference/ieee2030_5.md §3.3)."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.north.sep2 import schedule as S
from gateway.north.sep2.model import (
    ACTIVE,
    CANCELLED,
    CANCELLED_RANDOM,
    COMPLETED,
    NOT_APPLICABLE,
    QUANTITIES,
    RECEIVED,
    RESP_CANCELLED,
    RESP_SUPERSEDED,
    SCHEDULED,
    STARTED,
    SUPERSEDED,
    Control,
    DefaultControl,
)

T = 1_800_000_000
LFDI = "3e4f45ab31edfe5b67e343e5e4562e31984e23e5"
REPLY = "/edev/1/rsps/site_control/rsp"


def ctl(n: int, start: int, duration: int, *, primacy: int = 1, creation: int = T - 1000, rs: int = 0,
        status: int = SCHEDULED, rr: int = 3, reply: str | None = REPLY, program: str = "p1",
        **values: float | bool) -> Control:
    return Control(f"{n:032x}", program, primacy, creation, start, duration, values or {"export": 1500.0},
                   status=status, randomize_start=rs, reply_to=reply, response_required=rr)


def dflt(n: int, primacy: int = 1, program: str = "p1", **values: float | bool) -> DefaultControl:
    return DefaultControl(f"d{n:031x}", program, primacy, values)


def run(timeline: dict[int, list[Control]], start: int, end: int, step: int = 10,
        responses: S.Responses | None = None) -> dict[str, list[int]]:
    """Poll every `step` s from start to end; the control list changes at the times `timeline` names.
    Returns the statuses queued per mRID, in order."""
    responses = responses or S.Responses()
    controls: list[Control] = []
    sent: dict[str, list[int]] = {}
    for t in range(start, end + 1, step):
        controls = timeline.get(t, controls)
        p = S.plan(controls, [], LFDI)
        for due in responses.due(controls, p, t):
            assert due.reply_to == REPLY
            sent.setdefault(due.mrid, []).append(due.status)
    return sent


def test_all_18_response_sequences_received_started_completed_cancelled_superseded() -> None:
    d1, d2, d3 = ctl(1, T + 60, 120), ctl(2, T + 300, 120), ctl(3, T + 600, 120)
    d4 = ctl(4, T + 900, 120, creation=T - 1000)
    d5 = ctl(5, T + 900, 120, creation=T - 500)  # newer, same primacy and window: DERC4 never runs
    listed = [d1, d2, d3, d4, d5]
    timeline = {
        T: listed,
        T + 330: [d1, replace(d2, status=CANCELLED), d3, d4, d5],  # cancelled while active
        T + 400: [d1, replace(d2, status=CANCELLED), replace(d3, status=CANCELLED_RANDOM), d4, d5],
    }
    sent = run(timeline, T, T + 1200)
    assert sent[d1.mrid] == [RECEIVED, STARTED, COMPLETED]
    assert sent[d2.mrid] == [RECEIVED, STARTED, RESP_CANCELLED]
    assert sent[d3.mrid] == [RECEIVED, RESP_CANCELLED]
    assert sent[d4.mrid] == [RECEIVED, RESP_SUPERSEDED]
    assert sent[d5.mrid] == [RECEIVED, STARTED, COMPLETED]


def test_all_18_every_control_is_received_first_in_one_batch() -> None:
    controls = [ctl(1, T - 30, 120), ctl(2, T + 300, 120, status=CANCELLED)]
    dues = S.Responses().due(controls, S.plan(controls, [], LFDI), T)
    assert [(d.mrid[-1], d.status) for d in dues] == [("1", RECEIVED), ("2", RECEIVED), ("1", STARTED),
                                                      ("2", RESP_CANCELLED)]


def test_all_21_many_controls_back_to_back() -> None:
    controls = [ctl(i, T + 60 * i, 60, creation=T - 1000 + i, export=1000.0 * (i + 1),
                    **{"import": 2000.0 * (i + 1)}) for i in range(24)]
    p = S.plan(controls, [], LFDI)
    for q in ("export", "import"):
        slices = p.slices[q]
        assert [s.mrid for s in slices] == [c.mrid for c in controls]
        assert all(a.end == b.start for a, b in pairwise(slices))
    for i, c in enumerate(controls):
        assert S.at(p, "export", T + 60 * i + 30) == S.Setting(1000.0 * (i + 1), c.mrid, False)
        assert S.at(p, "import", T + 60 * i) == S.Setting(2000.0 * (i + 1), c.mrid, False)
    assert S.at(p, "export", T + 60 * 24) is None
    sent = run({T: controls}, T - 10, T + 60 * 25)
    assert all(sent[c.mrid] == [RECEIVED, STARTED, COMPLETED] for c in controls)


def test_all_22_randomised_start_within_range_and_stable() -> None:
    for r in (60, -60):
        offsets = {S.offset(ctl(1, T, 120, rs=r), f"{n:040x}") for n in range(200)}
        assert offsets <= set(range(min(r, 0), max(r, 0) + 1))
        assert len(offsets) > 30  # a fleet spreads out
    c = ctl(7, T, 120, rs=60)
    assert S.offset(c, LFDI) == S.offset(c, LFDI) == S.offset(replace(c, status=ACTIVE), LFDI)
    assert S.offset(ctl(8, T, 120), LFDI) == 0


def test_all_22_successive_events_run_without_gap_or_overlap() -> None:
    controls = [ctl(i, T + 120 * i, 120, rs=60, export=1000.0 + i) for i in range(5)]
    p = S.plan(controls, [], LFDI)
    slices = p.slices["export"]
    assert [s.mrid for s in slices] == [c.mrid for c in controls]
    first = T + S.offset(controls[0], LFDI)
    assert slices[0].start == first and T <= first <= T + 60
    assert all(a.end == b.start for a, b in pairwise(slices))
    assert all(s.end - s.start == 120 for s in slices)
    # the active event is never re-randomised: a re-poll, a restart, a control added later move nothing
    later = [*controls, ctl(9, T + 5000, 120, rs=60)]
    assert S.plan(list(reversed(later)), [], LFDI).windows[controls[2].mrid] == p.windows[controls[2].mrid]


def test_all_22_randomisation_never_makes_events_overlap() -> None:
    # not successive (30 s apart), and the first is pushed later while the second is pulled earlier
    a, b = ctl(1, T, 100), ctl(2, T + 130, 100)
    lfdi = next(f"{n:040x}" for n in range(1000)
                if S.offset(replace(a, randomize_start=60), f"{n:040x}") > 40
                and S.offset(replace(b, randomize_start=-60), f"{n:040x}") < -40)
    a, b = replace(a, randomize_start=60), replace(b, randomize_start=-60, creation=a.creation + 1)
    p = S.plan([a, b], [], lfdi)
    first, second = p.slices["export"]
    assert first.end == T + S.offset(a, lfdi) + 100
    # not earlier, as its own randomisation would have it (it is newer: it would cut the first short)
    assert second.start == first.end


def _primacy_validation(q: str) -> None:
    low = ctl(1, T, 600, primacy=2, creation=T - 100, program="p1", **{q: 5000.0})  # newer, lower priority
    high = ctl(2, T + 120, 120, primacy=1, creation=T - 900, program="p2", **{q: 1000.0})
    inside = ctl(3, T + 150, 60, primacy=2, creation=T - 50, program="p1", **{q: 3000.0})
    defaults = [dflt(1, primacy=2, program="p1", **{q: 2000.0}), dflt(2, primacy=1, program="p2", **{q: 0.0})]
    p = S.plan([low, high, inside], defaults, LFDI)
    assert S.at(p, q, T + 60).mrid == low.mrid
    assert S.at(p, q, T + 180) == S.Setting(1000.0, high.mrid, False)  # primacy beats creationTime
    assert S.at(p, q, T + 300).mrid == low.mrid  # the lower priority resumes
    assert S.at(p, q, T + 700) == S.Setting(0.0, defaults[1].mrid, True)  # the lowest primacy's default
    assert p.superseded == {inside.mrid}
    sent = run({T: [low, high, inside]}, T - 10, T + 700)
    assert sent[inside.mrid] == [RECEIVED, RESP_SUPERSEDED]
    assert sent[low.mrid] == sent[high.mrid] == [RECEIVED, STARTED, COMPLETED]


def test_gen_10_primacy_validation_for_generators() -> None:
    _primacy_validation("export")
    _primacy_validation("generation")


def test_loa_10_primacy_validation_for_loads() -> None:
    _primacy_validation("import")
    _primacy_validation("load")


def test_supersede_by_creation_time_is_per_quantity() -> None:
    old = ctl(1, T, 600, creation=T - 1000, export=1500.0, **{"import": 5000.0})
    new = ctl(2, T, 600, creation=T - 500, export=800.0)  # newer, export only
    p = S.plan([old, new], [], LFDI)
    assert S.at(p, "export", T + 10).mrid == new.mrid
    assert S.at(p, "import", T + 10) == S.Setting(5000.0, old.mrid, False)  # the older keeps its import
    assert p.superseded == frozenset()
    newest = ctl(3, T - 60, 900, creation=T - 100, export=700.0, **{"import": 4000.0})
    p = S.plan([old, new, newest], [], LFDI)
    assert p.superseded == {old.mrid, new.mrid}
    # equal primacy and creation: the mRID decides, whatever the order they are listed in
    twins = [ctl(5, T, 60, creation=T), ctl(4, T, 60, creation=T)]
    assert S.at(S.plan(twins, [], LFDI), "export", T).mrid == S.at(S.plan(twins[::-1], [], LFDI), "export",
                                                                   T).mrid == f"{4:032x}"


def test_marked_superseded_ranks_last() -> None:
    marked = ctl(1, T, 600, primacy=1, status=SUPERSEDED, export=100.0)
    other = ctl(2, T, 600, primacy=5, export=900.0)
    assert S.at(S.plan([marked, other], [], LFDI), "export", T + 1).mrid == other.mrid
    assert S.at(S.plan([marked], [], LFDI), "export", T + 1).mrid == marked.mrid  # alone, it still applies


def test_all_23_default_once_the_schedule_ends() -> None:
    controls = [ctl(i, T + 60 * i, 60, export=1000.0 + i, **{"import": 2000.0 + i}) for i in range(5)]
    default = DefaultControl("d" * 32, "p1", 1, {"export": 0.0, "import": 0.0}, set_grad_w=27)
    p = S.plan(controls, [default], LFDI)
    assert S.at(p, "export", T + 250) == S.Setting(1004.0, controls[4].mrid, False)
    assert S.at(p, "export", T + 300) == S.Setting(0.0, default.mrid, True)
    assert S.at(p, "import", T + 10**6) == S.Setting(0.0, default.mrid, True)
    assert S.at(p, "export", T - 1) == S.Setting(0.0, default.mrid, True)
    assert S.at(p, "generation", T + 300) is None


def test_gen_09_cancelled_export_control() -> None:
    c = ctl(1, T - 60, 600, export=1000.0)
    default = dflt(1, export=4000.0)
    sent = run({T - 60: [c], T + 60: [replace(c, status=CANCELLED)]}, T - 60, T + 120)
    assert sent[c.mrid] == [RECEIVED, STARTED, RESP_CANCELLED]
    p = S.plan([replace(c, status=CANCELLED)], [default], LFDI)
    assert S.at(p, "export", T + 70) == S.Setting(4000.0, default.mrid, True)
    assert p.superseded == frozenset()  # a cancelled control is not superseded as well


def test_response_required_bits_and_reply_to_are_honoured() -> None:
    only_received = ctl(1, T, 60, rr=1)
    only_specific = ctl(2, T + 100, 60, rr=2)
    none = ctl(3, T + 200, 60, rr=0)
    nowhere = ctl(4, T + 300, 60, reply=None)
    sent = run({T - 10: [only_received, only_specific, none, nowhere]}, T - 10, T + 400)
    assert sent == {only_received.mrid: [RECEIVED], only_specific.mrid: [STARTED, COMPLETED]}


def test_all_18_superseded_while_active() -> None:
    running = ctl(1, T - 60, 600, creation=T - 1000)
    newer = ctl(2, T + 60, 900, creation=T)  # arrives later and has the rest of the first one's window
    sent = run({T - 60: [running], T: [running, newer]}, T - 60, T + 1000)
    assert sent[running.mrid] == [RECEIVED, STARTED, RESP_SUPERSEDED]
    assert sent[newer.mrid] == [RECEIVED, STARTED, COMPLETED]
    # it ran to its end; a newer control that claims its whole window after the fact does not undo that
    responses = S.Responses()
    responses.due([running], S.plan([running], [], LFDI), T)
    hindsight = [running, ctl(4, T - 100, 900, creation=T + 600)]
    dues = responses.due(hindsight, S.plan(hindsight, [], LFDI), T + 600)
    assert [d.status for d in dues if d.mrid == running.mrid] == [COMPLETED]
    interrupted = ctl(3, T + 200, 100, creation=T + 1)  # only a break: the first one resumes after it
    sent = run({T - 60: [running], T: [running, interrupted]}, T - 60, T + 1000)
    assert sent[running.mrid] == [RECEIVED, STARTED, COMPLETED]


def test_removal_is_not_cancellation() -> None:
    scheduled = ctl(1, T + 300, 60)
    running = ctl(2, T - 10, 100)
    sent = run({T - 10: [scheduled, running], T + 20: []}, T - 10, T + 400)
    assert sent[scheduled.mrid] == [RECEIVED]  # gone from the list: nothing, no cancelled
    assert sent[running.mrid] == [RECEIVED, STARTED, COMPLETED]  # completed at its end all the same


def test_not_applicable_for_a_control_the_site_cannot_carry_out() -> None:
    fixed = Control("f" * 32, "p1", 1, T - 1000, T, 60, {}, reply_to=REPLY, response_required=3,
                    unsupported=("opModFixedW",))
    mixed = replace(fixed, mrid="e" * 32, values={"export": 100.0})
    dues = S.Responses().due([fixed, mixed], S.plan([fixed, mixed], [], LFDI), T + 1)
    assert [(d.mrid[0], d.status) for d in dues] == [("f", RECEIVED), ("e", RECEIVED), ("f", NOT_APPLICABLE),
                                                     ("e", STARTED)]
    assert "opModFixedW" in dues[2].reason


def test_cannot_be_met_is_answered_once_with_its_reason() -> None:
    c = ctl(1, T, 600)
    responses = S.Responses()
    responses.due([c], S.plan([c], [], LFDI), T)
    first = responses.cannot_be_met(c.mrid, "export limit 1.5 kW: DEVICE_CAPACITY")
    assert first == [S.Due(c.mrid, REPLY, NOT_APPLICABLE, "export limit 1.5 kW: DEVICE_CAPACITY")]
    assert responses.cannot_be_met(c.mrid, "again") == []
    assert responses.cannot_be_met("0" * 32, "never seen") == []
    assert responses.due([c], S.plan([c], [], LFDI), T + 600) == [S.Due(c.mrid, REPLY, COMPLETED)]
    done = ctl(2, T - 10, 20)
    responses.due([done], S.plan([done], [], LFDI), T)
    assert [d.status for d in responses.due([done], S.plan([done], [], LFDI), T + 10)] == [COMPLETED]
    assert responses.cannot_be_met(done.mrid, "after its end") == []  # its Responses have ended


def test_responses_survive_a_restart() -> None:
    c = ctl(1, T - 10, 100)
    p = S.plan([c], [], LFDI)
    before = S.Responses()
    assert [d.status for d in before.due([c], p, T)] == [RECEIVED, STARTED]
    after = S.Responses()
    after.restore(json.loads(json.dumps(before.snapshot())))
    assert after.due([c], p, T + 10) == []  # nothing answered twice as new
    assert [d.status for d in after.due([c], p, T + 90)] == [COMPLETED]


def test_long_ended_controls_are_forgotten() -> None:
    c = ctl(1, T - 10, 100)
    responses = S.Responses()
    responses.due([c], S.plan([c], [], LFDI), T)
    responses.due([c], S.plan([c], [], LFDI), T + 100)
    assert responses.sent(c.mrid) == [RECEIVED, STARTED, COMPLETED]
    last_listed = T + 100 + S.FORGET_AFTER_S + 10
    responses.due([c], S.plan([c], [], LFDI), last_listed)  # ended a day ago but still listed: kept
    assert responses.sent(c.mrid) == [RECEIVED, STARTED, COMPLETED]
    responses.due([], S.plan([], [], LFDI), last_listed + S.FORGET_AFTER_S - 1)  # unlisted, not yet a day
    assert responses.sent(c.mrid) == [RECEIVED, STARTED, COMPLETED]
    responses.due([], S.plan([], [], LFDI), last_listed + S.FORGET_AFTER_S + 1)
    assert responses.sent(c.mrid) == []


# ---- property: the plan is the brute-force winner at every instant ---------------------------------------

_controls = st.lists(st.builds(
    lambda n, start, duration, primacy, creation, status, qs, rs: Control(
        f"{n:032x}", "p", primacy, creation, T + start, duration, {q: float(n * 100 + i) for i, q in
                                                                   enumerate(qs)},
        status=status, randomize_start=rs),
    st.integers(0, 50), st.integers(-300, 600), st.integers(1, 400), st.integers(0, 3), st.integers(0, 5),
    st.sampled_from([SCHEDULED, ACTIVE, CANCELLED, SUPERSEDED]),
    st.lists(st.sampled_from(QUANTITIES[:4]), min_size=1, max_size=3, unique=True), st.just(0)),
    max_size=8, unique_by=lambda c: c.mrid)


@settings(max_examples=150, deadline=None)
@given(_controls, st.integers(-400, 1100))
def test_plan_is_the_brute_force_winner(controls: list[Control], dt: int) -> None:
    p = S.plan(controls, [], LFDI)
    t = T + dt
    for q in QUANTITIES[:4]:
        slices = p.slices[q]
        assert all(a.end <= b.start for a, b in pairwise(slices))
        covering = [c for c in controls if q in c.values and c.status != CANCELLED and c.start <= t < c.end]
        got = S.at(p, q, t)
        if not covering:
            assert got is None
            continue
        best = min(covering, key=lambda c: (c.status == SUPERSEDED, c.primacy, -c.creation, c.mrid))
        assert got == S.Setting(best.values[q], best.mrid, False)


@settings(max_examples=150, deadline=None)
@given(_controls, st.integers(-60, 60))
def test_randomised_slices_stay_sorted_and_inside_each_window(controls: list[Control], rs: int) -> None:
    controls = [replace(c, randomize_start=rs) for c in controls]
    p = S.plan(controls, [], LFDI)
    for slices in p.slices.values():
        assert all(s.start < s.end for s in slices)
        assert all(a.end <= b.start for a, b in pairwise(slices))
        for s in slices:
            start, end = p.windows[s.mrid]
            assert start <= s.start and s.end <= end
