"""The live instructions laid out on the time axis once, so that any instant is looked up, not recomputed.

What is in force changes only at an *edge*: an instruction's start, its end, an envelope's ramp end (a
superseded record stops at its superseder's start, itself an edge). Between two edges everything is
constant but ramping envelopes, whose limits move with time. One sweep over the sorted edges, keeping
per quantity a heap of the limits in force (the least kw first, the earliest receipt among equals, as
`limits.merge` breaks ties), gives for every elementary interval the tightest constant limit per
quantity, the envelopes ramping in it, the first zeroing override, whether a disconnect, an envelope or
an outage is in force, and the newest dispatch and service in force. Built in O(n log n) for n live
records, once per version of the store (`Store.derived`); a look-up is a bisection, plus the envelopes
ramping at that instant (`limits.LimitProfile`).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.core.instructions import Record, Store, superseded_from
from gateway.core.model import Dispatch, Envelope, Limits, Outage, Override, Service

QUANTITIES = ("export_limit_kw", "import_limit_kw", "generation_limit_kw", "load_limit_kw")
ZEROED = Limits(export_limit_kw=0.0, generation_limit_kw=0.0, load_limit_kw=0.0)

Candidate = tuple[float, int, str]  # (kw, seq, source): ordered as merge prefers them


@dataclass(frozen=True)
class Slice:
    """What is in force over one elementary interval [edge, next edge)."""

    constant: tuple[Candidate | None, ...]  # per quantity, the tightest limit that does not ramp here
    ramping: tuple[Record, ...]  # envelopes in their ramp here, in receipt order
    enveloped: bool  # an envelope or an outage is in force (the default envelope then does not apply)
    zeroed_by: str | None  # the first disconnect / cease_to_energize in force, by receipt
    disconnect: bool
    dispatch: Record | None  # the newest dispatch in force
    service: Record | None


def edges_of(rec: Record) -> list[datetime]:
    """Instants at which this record can change the limits or the served instruction."""
    msg = rec.msg
    if msg.type == "default_envelope":
        return []
    out = [msg.start] + ([msg.end] if msg.end is not None else [])
    if isinstance(msg, Envelope) and msg.ramp_s:
        out.append(ramp_end(msg))
    return out


def ramp_end(env: Envelope) -> datetime:
    """Where the envelope's ramp ends: start + ramp_s, but not past the envelope's end, after which it
    does not matter; the cap also keeps a hostile ramp_s (1e300 s) from overflowing datetime arithmetic."""
    return env.start + timedelta(seconds=min(env.ramp_s or 0.0, (env.end - env.start).total_seconds()))


class Timeline:
    def __init__(self, store: Store) -> None:
        records = list(store.live())
        superseded = superseded_from(store)
        self.edges: list[datetime] = sorted({t for r in records for t in edges_of(r)})
        self.default: Limits | None = None  # the LDC's default envelope, the last one received
        # per edge index: what starts and stops there, as (phase, record); phases are "limit" (a constant
        # limit), "ramp", "target" (a dispatch or service), "zero", "disconnect", "envelope" (in force)
        starts: dict[int, list[tuple[str, Record]]] = {}
        stops: dict[int, list[tuple[str, Record]]] = {}
        at = {t: i for i, t in enumerate(self.edges)}

        def phase(name: str, rec: Record, begin: datetime, end: datetime | None) -> None:
            if end is not None and begin >= end:
                return
            starts.setdefault(at[begin], []).append((name, rec))
            if end is not None:
                stops.setdefault(at[end], []).append((name, rec))

        for rec in records:
            msg = rec.msg
            if msg.type == "default_envelope":
                self.default = msg.limits
                continue
            stop = msg.end
            if rec.seq in superseded:
                stop = superseded[rec.seq] if stop is None else min(stop, superseded[rec.seq])
            if isinstance(msg, Dispatch | Service):
                phase("target", rec, msg.start, stop)
            elif isinstance(msg, Envelope | Outage):
                phase("envelope", rec, msg.start, stop)
                if isinstance(msg, Envelope) and msg.ramp_s:
                    ramped = ramp_end(msg)
                    phase("ramp", rec, msg.start, ramped if stop is None else min(ramped, stop))
                    phase("limit", rec, max(msg.start, ramped), stop)
                else:
                    phase("limit", rec, msg.start, stop)
            elif isinstance(msg, Override):
                if msg.action != "hold":
                    phase("zero", rec, msg.start, stop)
                    if msg.action == "disconnect":
                        phase("disconnect", rec, msg.start, stop)
                if msg.action != "hold" or rec.hold_kw is not None:
                    phase("limit", rec, msg.start, stop)
        self._sweep(starts, stops)

    def _sweep(self, starts: dict[int, list[tuple[str, Record]]],
               stops: dict[int, list[tuple[str, Record]]]) -> None:
        heaps: list[list[Candidate]] = [[] for _ in QUANTITIES]
        limiting: set[int] = set()  # seqs whose constant limit is in force (heap entries of others are stale)
        zeroing: list[tuple[int, str]] = []
        zero_in_force: set[int] = set()
        active: dict[str, dict[int, Record]] = {name: {} for name in ("ramp", "target", "disconnect",
                                                                        "envelope")}
        empty = Slice((None,) * len(QUANTITIES), (), False, None, False, None, None)
        self.slices: list[Slice] = [empty]  # slices[i]: from edges[i - 1] (or the beginning) to edges[i]
        for i in range(len(self.edges)):
            for name, rec in stops.get(i, ()):
                if name == "limit":
                    limiting.discard(rec.seq)
                elif name == "zero":
                    zero_in_force.discard(rec.seq)
                else:
                    del active[name][rec.seq]
            for name, rec in starts.get(i, ()):
                if name == "limit":
                    limiting.add(rec.seq)
                    for heap, kw in zip(heaps, _limits(rec), strict=True):
                        if kw is not None:
                            heapq.heappush(heap, (kw, rec.seq, rec.ref))
                elif name == "zero":
                    zero_in_force.add(rec.seq)
                    heapq.heappush(zeroing, (rec.seq, rec.ref))
                else:
                    active[name][rec.seq] = rec
            for heap in heaps:
                while heap and heap[0][1] not in limiting:
                    heapq.heappop(heap)
            while zeroing and zeroing[0][0] not in zero_in_force:
                heapq.heappop(zeroing)
            targets = active["target"].values()  # at most one of each type: overlapping ones supersede
            self.slices.append(Slice(
                constant=tuple(heap[0] if heap else None for heap in heaps),
                ramping=tuple(sorted(active["ramp"].values(), key=lambda r: r.seq)),
                enveloped=bool(active["envelope"]),
                zeroed_by=zeroing[0][1] if zeroing else None,
                disconnect=bool(active["disconnect"]),
                dispatch=_newest(r for r in targets if r.msg.type == "dispatch"),
                service=_newest(r for r in targets if r.msg.type == "service")))

    def at(self, t: datetime) -> Slice:
        return self.slices[bisect_right(self.edges, t)]


def timeline(store: Store) -> Timeline:
    return store.derived("timeline", lambda: Timeline(store))


def _limits(rec: Record) -> tuple[float | None, ...]:
    """The constant limits a record sets while in force, per quantity."""
    msg = rec.msg
    if isinstance(msg, Envelope):
        lim = msg.limits
    elif isinstance(msg, Outage):
        lim = Limits(export_limit_kw=msg.export_limit_kw, import_limit_kw=msg.import_limit_kw)
    elif isinstance(msg, Override) and msg.action == "hold":
        lim = Limits(export_limit_kw=rec.hold_kw)
    else:
        lim = ZEROED
    return tuple(getattr(lim, q) for q in QUANTITIES)


def _newest(records: Iterable[Record]) -> Record | None:
    return max(records, key=lambda r: r.key, default=None)
