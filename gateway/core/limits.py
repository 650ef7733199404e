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
  it does not ramp. Those limits are fixed on the record once its ramp has begun (`Record.ramp_from`,
  by the engine): what was in force just before can end at that very instant (a 2030.5 control taking
  over from the default control) or be cancelled, and, dropped from the store, it would no longer be
  found; the ramp would then start from the connection agreement, a jump the LDC never asked for. An
  envelope that replaces one that started at the same instant takes its place: it ramps from where that
  one ramps from, or from that one's limits if it did not ramp (`replaced_together`).

The limits at any instant come from a `LimitProfile` over the store's `Timeline`, built once per change
of the store (and of the LDC link's state): a look-up, not a pass over every live instruction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.core.instructions import Record, Store
from gateway.core.model import Limits, SiteParams
from gateway.core.timeline import QUANTITIES, Slice, ramp_end, timeline

__all__ = [
    "BEFORE",
    "UNLIMITED",
    "Bound",
    "InForce",
    "LimitProfile",
    "limits_at",
    "merge",
    "profile",
    "ramp_end",
]

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
    return profile(store, params, ldc_lost).at(t)


def profile(store: Store, params: SiteParams, ldc_lost: bool) -> LimitProfile:
    """The store's limit profile, built once per version of the store."""
    return store.derived(("limits", params, ldc_lost), lambda: LimitProfile(store, params, ldc_lost))


class LimitProfile:
    """`merge` of the sources in force at any instant, as the timeline has them.

    Per quantity the tightest source wins, the earliest received among equals (`merge` goes through the
    sources in receipt order and keeps the earlier on a tie): the timeline's tightest constant limit,
    set against the ramping envelopes' limits of the moment by (kw, receipt). Then the connection
    agreement, which a source replaces only when strictly tighter, and the default envelope last.
    """

    def __init__(self, store: Store, params: SiteParams, ldc_lost: bool) -> None:
        self.timeline = timeline(store)
        self.params = params
        self.ldc_lost = ldc_lost
        self.default = self.timeline.default or params.default_envelope
        self._records = store.records  # not the store: it keeps this profile (Store.derived)
        self._before: dict[int, tuple[float, ...]] = {}  # per ramping envelope: see ramp_from

    def at(self, t: datetime, ramp: bool = True) -> InForce:
        s = self.timeline.at(t)
        best = list(s.constant)
        for rec in s.ramping:
            for i, kw in enumerate(self._ramped(rec, t) if ramp else _own(rec)):
                if kw is not None and (best[i] is None or (kw, rec.seq) < best[i][:2]):
                    best[i] = (kw, rec.seq, rec.ref)
        return self._in_force(s, best)

    def _in_force(self, s: Slice, best: list[tuple[float, int, str] | None]) -> InForce:
        p = self.params
        caps = (Bound(p.export_cap_kw, "connection_agreement"),
                Bound(p.import_cap_kw, "connection_agreement"), UNLIMITED, UNLIMITED)
        default = self.ldc_lost and not s.enveloped  # TDC-17: only once no received envelope is in force
        out = []
        for q, cap, source in zip(QUANTITIES, caps, best, strict=True):
            bound = _tighter(cap, source[0], source[2]) if source is not None else cap
            out.append(_tighter(bound, getattr(self.default, q), "default_envelope") if default else bound)
        export, import_, generation, load = out
        return InForce(export, import_, generation, load, zeroed_by=s.zeroed_by, disconnect=s.disconnect)

    def ramp_from(self, rec: Record) -> tuple[float | None, ...]:
        """The limits the envelope `rec` ramps from, per quantity (None: no limit): fixed on the record,
        else those of the envelope it replaces when both start together, else the limits in force just
        before its start (without any ramping), as the store has them now."""
        if rec.ramp_from is not None:
            return rec.ramp_from
        env = rec.msg
        taken_over = replaced_together(self._records, rec)
        if taken_over is not None:
            return taken_over
        prev = self.at(env.start - BEFORE, ramp=False)
        return tuple(None if math.isinf(b.kw) else b.kw
                     for b in (prev.export, prev.import_, prev.generation, prev.load))

    def _ramped(self, rec: Record, t: datetime) -> tuple[float | None, ...]:
        env = rec.msg
        prev = self._before.get(rec.seq)
        if prev is None:
            prev = self._before[rec.seq] = tuple(math.inf if kw is None else kw for kw in self.ramp_from(rec))
        frac = (t - env.start).total_seconds() / env.ramp_s  # 0 at start → 1 at start + ramp_s

        def ramp(own: float | None, previous: float) -> float | None:
            if own is None or math.isinf(previous):
                return own
            return previous + (own - previous) * frac

        return tuple(ramp(own, previous) for own, previous in zip(_own(rec), prev, strict=True))


def replaced_together(records: dict[str, dict[str, Record]], rec: Record) -> tuple[float | None, ...] | None:
    """What an envelope ramps from when it replaces one that started at the same instant: where that one
    ramps from, or its own limits when it did not ramp (it takes that one's place: it never ramps again
    from what preceded them both, which may have ended since and would be gone from the store). None
    when it replaces no such envelope."""
    env = rec.msg
    old = records[env.issuer].get(env.replaces) if env.replaces else None
    if old is None or not old.started or getattr(old.msg, "start", None) != env.start:
        return None
    return old.ramp_from if old.ramp_from is not None else _own(old)


def _own(rec: Record) -> tuple[float | None, ...]:
    return tuple(getattr(rec.msg.limits, q) for q in QUANTITIES)
