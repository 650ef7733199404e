"""Which target the site serves and what can be delivered of it (PROTOCOL §5.4, TDC-08/09/11/15).

The PCC target is the served instruction's target clamped in two stages: first into the PCC limits
(export/import: connection agreement, envelopes, outages, overrides, default envelope), then into what
the devices can do and the generation/load limits, translated to the PCC with the load estimate. The
second stage is physics and device-level limits: where both cannot hold, it wins.

What a dispatch or service is told (accepted / constrained, accepted_kw) is the worst case over the rest
of its window, evaluated at every instant the limits known now change: an envelope that tightens in
the middle of a dispatch makes it `constrained` at once, with the constraint's own start and end. Device
capability is only known for the present, so it counts only while the instruction is in force, and a
shortfall within `target_tolerance_kw` is not reported. Under a disconnect or cease_to_energize the DER
delivers nothing to the instruction: accepted_kw is 0.

Cost: the instants assessed are the edges inside the part of its window where the instruction is in
force, and those parts are disjoint among dispatches (an overlapping newer one supersedes an older one
from its start), and among services; each instant is a look-up in the store's limit profile. So
assessing every live dispatch and service is O(n log n) in live instructions, not O(n³).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime

from gateway.core.allocation import DeviceRange, device_window
from gateway.core.instructions import Assessment, Record, Store, in_force, superseded_from
from gateway.core.limits import Bound, InForce, profile
from gateway.core.model import Dispatch, Service, SiteParams
from gateway.core.timeline import timeline

EPS_KW = 1e-6


def clamp(value: Bound, lo: Bound, hi: Bound) -> Bound:
    if value.kw > hi.kw:
        return hi
    if value.kw < lo.kw:
        return lo
    return value


def pcc_target(requested: Bound, eff: InForce, dev: DeviceRange | None, load_kw: float) -> Bound:
    target = clamp(requested, Bound(-eff.import_.kw, eff.import_.source), eff.export)
    lo, hi = device_window(eff, dev)
    return clamp(target, Bound(lo.kw - load_kw, lo.source), Bound(hi.kw - load_kw, hi.source))


def reason_for(source: str, dev: DeviceRange | None) -> str:
    if source.startswith("override:"):
        return "OVERRIDE_ACTIVE"
    if source.startswith(("dispatch:", "service:")):
        return "CONFLICTING_INSTRUCTION"
    if source == "device_capacity":
        return "DEVICE_OFFLINE" if dev is not None and dev.count == 0 else "DEVICE_CAPACITY"
    return "DISTRIBUTION_CONSTRAINT"


def served_at(store: Store, t: datetime, priority: str) -> tuple[Record | None, Record | None]:
    """(the served dispatch or service, the one it beats) at time t; never two served (TDC-15)."""
    s = timeline(store).at(t)
    first, second = (s.dispatch, s.service) if priority == "ieso" else (s.service, s.dispatch)
    return (first, second) if first is not None else (second, None)


@dataclass(frozen=True)
class Context:
    """What an assessment needs besides the store: the present and the last cycle's view of the site."""

    params: SiteParams
    now: datetime
    ldc_lost: bool
    dev: DeviceRange | None  # None: no cycle has read the devices yet
    load_kw: float  # last load estimate, 0 when unknown


def deliverable(store: Store, rec: Record, t: datetime, ctx: Context) -> Bound:
    """The PCC kW the site can deliver of `rec` at time t, and the source that decides it."""
    msg = rec.msg
    assert isinstance(msg, Dispatch | Service)
    eff = profile(store, ctx.params, ctx.ldc_lost).at(t)
    if eff.zeroed_by:
        return Bound(0.0, eff.zeroed_by)
    served, _ = served_at(store, t, ctx.params.dual_participation_priority)
    if served is not None and served is not rec:
        return Bound(0.0, served.ref)
    dev = ctx.dev if t <= ctx.now else None
    return pcc_target(Bound(msg.target_kw, rec.ref), eff, dev, ctx.load_kw)


def assess(store: Store, rec: Record, ctx: Context) -> Assessment:
    msg = rec.msg
    assert isinstance(msg, Dispatch | Service)
    t0 = max(msg.start, ctx.now)
    edges = timeline(store).edges
    superseded = superseded_from(store)
    worst: tuple[float, Bound, datetime, datetime] | None = None
    # the instants: t0, then every edge inside (t0, end), up to the first one where rec is not in force
    t, i = t0, bisect_right(edges, t0)
    while in_force(rec, t, superseded):
        following = edges[i] if i < len(edges) and edges[i] < msg.end else None
        got = deliverable(store, rec, t, ctx)
        shortfall = abs(msg.target_kw - got.kw)
        if worst is None or shortfall > worst[0] + EPS_KW:
            worst = (shortfall, got, t, msg.end if following is None else following)
        if following is None:
            break
        t, i = following, i + 1
    if worst is None:
        return Assessment("accepted", msg.target_kw, None, rec.ref, t0, msg.end)
    shortfall, got, start, end = worst
    threshold = ctx.params.target_tolerance_kw if got.source == "device_capacity" else EPS_KW
    if shortfall <= threshold:
        return Assessment("accepted", msg.target_kw, None, rec.ref, start, end)
    return Assessment("constrained", got.kw, reason_for(got.source, ctx.dev), got.source, start, end)
