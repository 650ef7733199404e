"""The decision core's instruction-store computations as they were before the rework for cost (93c7720):
straightforward, and O(n³) in live instructions per control cycle. Kept as the reference that the
property tests hold the fast implementation to (`tests/core/test_properties.py`): same superseded times,
same limits and served instruction at every instant, same assessments, same availability windows.
"""

from __future__ import annotations

import math
from datetime import datetime

from gateway.core.allocation import DeviceRange
from gateway.core.arbitration import EPS_KW, Context, pcc_target, reason_for
from gateway.core.instructions import Assessment, Record, Store, in_force
from gateway.core.limits import BEFORE, Bound, InForce, merge, ramp_end, replaced_together
from gateway.core.model import Dispatch, Envelope, Limits, Outage, Override, Service, SiteParams
from gateway.core.outbound import Window


def live(store: Store) -> list[Record]:
    """Every live record, oldest receipt first."""
    return sorted((r for by_id in store.records.values() for r in by_id.values()), key=lambda r: r.seq)


def superseded_from(store: Store) -> dict[int, datetime]:
    out: dict[int, datetime] = {}

    def supersede(rec: Record, at: datetime) -> None:
        out[rec.seq] = min(out.get(rec.seq, at), at)

    targets: list[Record] = []
    for rec in live(store):
        msg = rec.msg
        if isinstance(msg, Envelope) and msg.replaces is not None:
            replaced = store.records["ldc"].get(msg.replaces)
            if replaced is not None and replaced.msg.type == "envelope":
                supersede(replaced, msg.start)
        elif isinstance(msg, Dispatch | Service):
            targets.append(rec)
    for older in targets:
        for newer in targets:
            o, n = older.msg, newer.msg
            if o.type == n.type and newer.key > older.key and n.start < o.end and o.start < n.end:
                supersede(older, n.start)
    return out


def limits_at(store: Store, params: SiteParams, t: datetime, ldc_lost: bool) -> InForce:
    sources, zeroed_by, disconnect = _sources(store, params, t, ldc_lost, ramp=True)
    m = merge(params, sources)
    return InForce(m.export, m.import_, m.generation, m.load, zeroed_by=zeroed_by, disconnect=disconnect)


def _sources(store: Store, params: SiteParams, t: datetime, ldc_lost: bool,
             ramp: bool) -> tuple[list[tuple[Limits, str]], str | None, bool]:
    sources: list[tuple[Limits, str]] = []
    zeroed_by: str | None = None
    disconnect = False
    envelope_in_force = False
    default = params.default_envelope
    superseded = superseded_from(store)
    for rec in live(store):
        msg = rec.msg
        if msg.type == "default_envelope":
            default = msg.limits
            continue
        if not in_force(rec, t, superseded):
            continue
        if isinstance(msg, Envelope):
            envelope_in_force = True
            lim = msg.limits
            if ramp and msg.ramp_s and t < ramp_end(msg):
                lim = _ramped(store, params, rec, t, ldc_lost)
            sources.append((lim, rec.ref))
        elif isinstance(msg, Outage):
            envelope_in_force = True
            sources.append((Limits(export_limit_kw=msg.export_limit_kw, import_limit_kw=msg.import_limit_kw),
                            rec.ref))
        elif isinstance(msg, Override):
            if msg.action == "hold":
                if rec.hold_kw is not None:
                    sources.append((Limits(export_limit_kw=rec.hold_kw), rec.ref))
            else:
                sources.append((Limits(export_limit_kw=0.0, generation_limit_kw=0.0, load_limit_kw=0.0),
                                rec.ref))
                zeroed_by = zeroed_by or rec.ref
                disconnect = disconnect or msg.action == "disconnect"
    if ldc_lost and not envelope_in_force:
        sources.append((default, "default_envelope"))
    return sources, zeroed_by, disconnect


def _ramped(store: Store, params: SiteParams, rec: Record, t: datetime, ldc_lost: bool) -> Limits:
    env = rec.msg
    taken_over = replaced_together(store.records, rec)
    if rec.ramp_from is not None:
        pinned = rec.ramp_from
    elif taken_over is not None:
        pinned = taken_over
    else:
        before, _, _ = _sources(store, params, env.start - BEFORE, ldc_lost, ramp=False)
        prev = merge(params, before)
        pinned = tuple(None if math.isinf(b.kw) else b.kw
                       for b in (prev.export, prev.import_, prev.generation, prev.load))
    frac = (t - env.start).total_seconds() / env.ramp_s

    def ramp(own: float | None, previous: float | None) -> float | None:
        if own is None or previous is None:
            return own
        return previous + (own - previous) * frac

    lim = env.limits
    return Limits(*(ramp(own, previous) for own, previous in zip(
        (lim.export_limit_kw, lim.import_limit_kw, lim.generation_limit_kw, lim.load_limit_kw), pinned,
        strict=True)))


def served_at(store: Store, t: datetime, priority: str) -> tuple[Record | None, Record | None]:
    newest: dict[str, Record] = {}
    superseded = superseded_from(store)
    for rec in live(store):
        msg = rec.msg
        if isinstance(msg, Dispatch | Service) and in_force(rec, t, superseded):
            best = newest.get(rec.msg.type)
            if best is None or rec.key > best.key:
                newest[rec.msg.type] = rec
    first, second = ("dispatch", "service") if priority == "ieso" else ("service", "dispatch")
    if first in newest:
        return newest[first], newest.get(second)
    return newest.get(second), None


def deliverable(store: Store, rec: Record, t: datetime, ctx: Context) -> Bound:
    msg = rec.msg
    assert isinstance(msg, Dispatch | Service)
    eff = limits_at(store, ctx.params, t, ctx.ldc_lost)
    if eff.zeroed_by:
        return Bound(0.0, eff.zeroed_by)
    served, _ = served_at(store, t, ctx.params.dual_participation_priority)
    if served is not None and served is not rec:
        return Bound(0.0, served.ref)
    dev: DeviceRange | None = ctx.dev if t <= ctx.now else None
    return pcc_target(Bound(msg.target_kw, rec.ref), eff, dev, ctx.load_kw)


def assess(store: Store, rec: Record, ctx: Context) -> Assessment:
    msg = rec.msg
    assert isinstance(msg, Dispatch | Service)
    t0 = max(msg.start, ctx.now)
    edges = {t for r in live(store) for t in edges_of(r)}
    points = sorted({t0} | {t for t in edges if t0 < t < msg.end})
    worst: tuple[float, Bound, datetime, datetime] | None = None
    superseded = superseded_from(store)
    for i, t in enumerate(points):
        if not in_force(rec, t, superseded):
            break
        got = deliverable(store, rec, t, ctx)
        shortfall = abs(msg.target_kw - got.kw)
        if worst is None or shortfall > worst[0] + EPS_KW:
            worst = (shortfall, got, t, points[i + 1] if i + 1 < len(points) else msg.end)
    if worst is None:
        return Assessment("accepted", msg.target_kw, None, rec.ref, t0, msg.end)
    shortfall, got, start, end = worst
    threshold = ctx.params.target_tolerance_kw if got.source == "device_capacity" else EPS_KW
    if shortfall <= threshold:
        return Assessment("accepted", msg.target_kw, None, rec.ref, start, end)
    return Assessment("constrained", got.kw, reason_for(got.source, ctx.dev), got.source, start, end)


def edges_of(rec: Record) -> list[datetime]:
    msg = rec.msg
    if msg.type == "default_envelope":
        return []
    out = [msg.start] + ([msg.end] if msg.end is not None else [])
    if isinstance(msg, Envelope) and msg.ramp_s:
        out.append(ramp_end(msg))
    return out


def windows(store: Store, params: SiteParams) -> tuple[Window, ...]:
    ex_cap, im_cap = params.export_cap_kw, params.import_cap_kw

    def capped(kw: float | None, cap: float) -> float:
        return cap if kw is None else min(kw, cap)

    out: list[Window] = []
    superseded = superseded_from(store)
    for rec in live(store):
        msg = rec.msg
        if isinstance(msg, Envelope):
            end = min(msg.end, superseded.get(rec.seq, msg.end))
            out.append(Window(msg.start, end, capped(msg.limits.export_limit_kw, ex_cap),
                              capped(msg.limits.import_limit_kw, im_cap), rec.ref))
        elif isinstance(msg, Outage):
            out.append(Window(msg.start, msg.end, capped(msg.export_limit_kw, ex_cap),
                              capped(msg.import_limit_kw, im_cap), rec.ref))
        elif isinstance(msg, Override):
            export = capped(rec.hold_kw, ex_cap) if msg.action == "hold" else 0.0
            out.append(Window(msg.start, msg.end, export, im_cap, rec.ref))
    return tuple(sorted(out, key=lambda w: (w.start, w.cause)))
