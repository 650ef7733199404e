"""The chart's history: the last hour, a point per cycle, bounded however often cycles run."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from gateway.core.engine import Cycle, Decision
from gateway.core.model import MeterReading
from gateway.web.history import History

T0 = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def cycle(at: datetime, export_limit_kw: float = 100.0) -> Cycle:
    decision = Decision(target_kw=90.0, binding="envelope:e1", export_limit_kw=export_limit_kw,
                        export_binding="envelope:e1", import_limit_kw=400.0,
                        import_binding="connection_agreement", requested_kw=150.0, load_kw=120.0,
                        export_credit_kw=120.0, device_total_kw=210.0)
    return Cycle(at, decision, "constrained", [], [], [])


def meter(p_kw: float, online: bool = True, stale: bool = False) -> MeterReading:
    return MeterReading(p_kw=p_kw, q_kvar=0.0, v_pu=1.0, hz=60.0, online=online, stale=stale)


def test_history_keeps_the_last_hour() -> None:
    h = History(control_interval_s=1.0)
    for s in range(0, 2 * 3600, 10):
        h.on_cycle(cycle(T0 + timedelta(seconds=s)), meter(float(s)), [])
    points = h.since(0)
    last = (T0 + timedelta(seconds=2 * 3600 - 10)).timestamp()
    assert points["t"][-1] == last and points["t"][0] >= last - 3600
    assert points["pcc_kw"][-1] == 2 * 3600 - 10
    assert all(column == [] for column in h.since(last).values())


def test_cycles_faster_than_the_interval_cannot_grow_it_past_its_bound() -> None:
    h = History(control_interval_s=1.0)
    for n in range(20_000):  # instructions arriving many times a second wake a cycle each
        h.on_cycle(cycle(T0 + timedelta(milliseconds=10 * n)), meter(50.0), [])
    assert len(h) == 2 * 3600


def test_no_usable_meter_and_no_limit_are_gaps_not_numbers() -> None:
    h = History(control_interval_s=1.0)
    h.on_cycle(cycle(T0, export_limit_kw=math.inf), meter(10.0, stale=True), [])
    h.on_cycle(cycle(T0 + timedelta(seconds=1)), meter(10.0, online=False), [])
    h.on_cycle(cycle(T0 + timedelta(seconds=2)), None, [])
    points = h.since(0)
    assert points["pcc_kw"] == [None, None, None]
    assert points["export_limit_kw"] == [None, 100.0, 100.0]
