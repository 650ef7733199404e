"""Limit merging (PROTOCOL §5.1–5.3): every source that limits the site at an instant, most restrictive wins.

Each merged value keeps the source that set it, so `binding` in telemetry, responses and constraints needs
no further bookkeeping. Sources, as `binding` spells them: `connection_agreement`, `envelope:<id>`,
`outage:<id>`, `override:<id>`, `default_envelope`.

- Envelopes and outages in force apply together (an outage is an envelope over its window whose
  export/import default to 0: the site is isolated).
- The default envelope applies only while the LDC link is lost and no received envelope or outage is in
  force (TDC-17; CSIP-AUS ALL-23: follow the schedule, then the default control). An outage counts as a
  received envelope here: the LDC has said explicitly what applies over that window.
- `disconnect` and `cease_to_energize` force every device to 0 kW, expressed as generation and load
  limits of 0 (the devices can neither produce nor absorb) plus an export limit of 0 at the PCC.
- `hold` caps PCC export at max(PCC power when the hold started, 0): export cannot increase, decreases
  are allowed, and a site that was importing may not start exporting.
- Envelope `ramp_s`: the envelope's limits move linearly, over ramp_s from its start, from the limits in
  force just before it started (without any ramping) to its own values; a quantity with no limit before
  it does not ramp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from gateway.core.instructions import Store, in_force, superseded_from
from gateway.core.model import Envelope, Limits, Outage, Override, SiteParams

BEFORE = timedelta(microseconds=1)


@dataclass(frozen=True)
class Bound:
    kw: float
    source: str


@dataclass(frozen=True)
class InForce:
    """The limits in force at one instant. Generation/load with nothing limiting them are infinite."""

    export: Bound
    import_: Bound
    generation: Bound
    load: Bound
    zeroed_by: str | None = None  # source of a disconnect / cease_to_energize in force
    disconnect: bool = False  # a disconnect is in force: devices are also opened


UNLIMITED = Bound(math.inf, "")


def _tighter(current: Bound, kw: float | None, source: str) -> Bound:
    return Bound(kw, source) if kw is not None and kw < current.kw else current  # a tie keeps the earlier


def merge(params: SiteParams, sources: list[tuple[Limits, str]]) -> InForce:
    export = Bound(params.export_cap_kw, "connection_agreement")
    import_ = Bound(params.import_cap_kw, "connection_agreement")
    generation = load = UNLIMITED
    for lim, src in sources:
        export = _tighter(export, lim.export_limit_kw, src)
        import_ = _tighter(import_, lim.import_limit_kw, src)
        generation = _tighter(generation, lim.generation_limit_kw, src)
        load = _tighter(load, lim.load_limit_kw, src)
    return InForce(export, import_, generation, load)


def limits_at(store: Store, params: SiteParams, t: datetime, ldc_lost: bool) -> InForce:
    sources, zeroed_by, disconnect = _sources(store, params, t, ldc_lost, ramp=True)
    return replace(merge(params, sources), zeroed_by=zeroed_by, disconnect=disconnect)


def _sources(store: Store, params: SiteParams, t: datetime, ldc_lost: bool,
             ramp: bool) -> tuple[list[tuple[Limits, str]], str | None, bool]:
    sources: list[tuple[Limits, str]] = []
    zeroed_by: str | None = None
    disconnect = False
    envelope_in_force = False
    default = params.default_envelope
    superseded = superseded_from(store)
    for rec in store.live():
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
                lim = _ramped(store, params, msg, t, ldc_lost)
            sources.append((lim, rec.ref))
        elif isinstance(msg, Outage):
            envelope_in_force = True
            sources.append((Limits(export_limit_kw=msg.export_limit_kw, import_limit_kw=msg.import_limit_kw),
                            rec.ref))
        elif isinstance(msg, Override):
            if msg.action == "hold":
                if rec.hold_kw is not None:  # a hold not yet started by a cycle has no value yet
                    sources.append((Limits(export_limit_kw=rec.hold_kw), rec.ref))
            else:
                sources.append((Limits(export_limit_kw=0.0, generation_limit_kw=0.0, load_limit_kw=0.0),
                                rec.ref))
                zeroed_by = zeroed_by or rec.ref
                disconnect = disconnect or msg.action == "disconnect"
    if ldc_lost and not envelope_in_force:
        sources.append((default, "default_envelope"))
    return sources, zeroed_by, disconnect


def ramp_end(env: Envelope) -> datetime:
    """Where the envelope's ramp ends: start + ramp_s, but not past the envelope's end, after which it
    does not matter; the cap also keeps a hostile ramp_s (1e300 s) from overflowing datetime arithmetic."""
    return env.start + timedelta(seconds=min(env.ramp_s or 0.0, (env.end - env.start).total_seconds()))


def _ramped(store: Store, params: SiteParams, env: Envelope, t: datetime, ldc_lost: bool) -> Limits:
    before, _, _ = _sources(store, params, env.start - BEFORE, ldc_lost, ramp=False)
    prev = merge(params, before)
    frac = (t - env.start).total_seconds() / env.ramp_s  # 0 at start → 1 at start + ramp_s

    def ramp(own: float | None, previous: Bound) -> float | None:
        if own is None or math.isinf(previous.kw):
            return own
        return previous.kw + (own - previous.kw) * frac

    lim = env.limits
    return Limits(ramp(lim.export_limit_kw, prev.export), ramp(lim.import_limit_kw, prev.import_),
                  ramp(lim.generation_limit_kw, prev.generation), ramp(lim.load_limit_kw, prev.load))
