"""Which 2030.5 DERControl is in force, per quantity, and which Responses are due. Pure: time passed in.

Times are Unix seconds on the gateway's clock: the client shifts the server's times by the /tm offset
before they get here, so that what the schedule decides and what the core enforces share one clock.

Per quantity (export, import, generation, load, connect, energize), as open-dynamic-export's per-type
scheduler does it (2030.5 §10.10 / CSIP-AUS): a control counts for a quantity only if it sets it.

1. Effective times (randomisation). A control's effective start is its start plus `offset`, drawn once
   from a hash of (LFDI, mRID): a re-poll or a restart never moves an event, and a fleet spreads out.
   Successive events (the later one's scheduled start is the earlier one's scheduled end) chain: the
   later one starts at the earlier one's effective end, so randomisation makes no gap and no overlap;
   any other later event starts no earlier than the effective end of the events that precede it. The
   effective end is the effective start plus the duration (2030.5's Effective End Time; ODE instead
   keeps the scheduled end when there is no duration randomisation, which 2030.5 controls here lack).
   Every control of the quantity takes part in the chaining, cancelled ones too, so that a cancel never
   shifts another event.
2. Supersede. The time axis is cut at every effective start and end of the controls in force (not
   cancelled); each piece goes to the lowest primacy, then the newest creationTime, then the lowest
   mRID (only so that the answer is deterministic); a control the server marks superseded ranks last.
   Adjacent pieces of one control are joined into a `Slice`. A control that wins no piece of any
   quantity it sets is superseded (`Plan.superseded`).
3. The default. Per quantity, the DefaultDERControl of the lowest-primacy program that has one for it
   applies wherever no slice does (CSIP-AUS ALL-23).

`Responses` keeps which (mRID, status) have been queued, so each Response goes out at most once, and
survives a restart through `snapshot()` / `restore()`.
"""

from __future__ import annotations

import hashlib
import heapq
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from gateway.north.sep2.model import (
    CANCELLED,
    CANCELLED_RANDOM,
    COMPLETED,
    MESSAGE_RECEIVED,
    NOT_APPLICABLE,
    QUANTITIES,
    RECEIVED,
    RESP_CANCELLED,
    RESP_SUPERSEDED,
    SPECIFIC_RESPONSE,
    STARTED,
    SUPERSEDED,
    Control,
    DefaultControl,
    Quantity,
)

CANCELLED_STATUSES = (CANCELLED, CANCELLED_RANDOM)
# A control's entry in `Responses` is forgotten this long after its end (or, never started, after it was
# last listed), once the server no longer lists it: a day covers any server that lists ended controls
# for a while, and keeps memory bounded however many controls come and go.
FORGET_AFTER_S = 86400
SNAPSHOT_FORMAT = 1


@dataclass(frozen=True)
class Slice:
    """One control in force for one quantity over [start, end); `part` numbers the slices of a control's
    quantity when another control cuts it into several (None: one slice)."""

    quantity: Quantity
    start: int
    end: int
    mrid: str
    value: float | bool
    ramp_s: float | None = None
    part: int | None = None


@dataclass(frozen=True)
class Setting:
    """What is in force for a quantity at an instant, and who sets it."""

    value: float | bool
    mrid: str  # the DERControl's, or the DefaultDERControl's when `default`
    default: bool


@dataclass(frozen=True)
class Plan:
    slices: dict[Quantity, list[Slice]]  # per quantity, sorted, non-overlapping (ended ones too)
    default: dict[Quantity, tuple[float | bool, str]]  # per quantity: value, DefaultDERControl mRID
    superseded: frozenset[str]  # mRIDs that win no quantity over their whole window
    windows: dict[str, tuple[int, int]]  # per control: effective start and end over its quantities


def offset(control: Control, lfdi: str) -> int:
    """The randomised start offset, uniform in [min(r, 0), max(r, 0)] for r = randomizeStart, s."""
    r = control.randomize_start
    if r == 0:
        return 0
    digest = hashlib.sha256(f"{lfdi.lower()}|{control.mrid.lower()}".encode()).digest()
    return min(r, 0) + int.from_bytes(digest[:8], "big") % (abs(r) + 1)


def plan(controls: Sequence[Control], defaults: Sequence[DefaultControl], lfdi: str) -> Plan:
    """The schedule of `controls` (every control the client holds: vanished ones until their end, since
    removal is not cancellation) and `defaults`. It does not depend on the time: ended slices stay in it,
    which keeps the messages that follow them the same from poll to poll (instructions.py)."""
    unique = _unique(controls)
    slices: dict[Quantity, list[Slice]] = {}
    windows: dict[str, tuple[int, int]] = {}
    winners: set[str] = set()
    for q in QUANTITIES:
        of_q = [c for c in unique if q in c.values and c.duration > 0]
        effective = _effective(of_q, lfdi)
        for mrid, (start, end) in effective.items():
            was = windows.get(mrid)
            windows[mrid] = (start, end) if was is None else (min(was[0], start), max(was[1], end))
        in_force = [c for c in of_q if c.status not in CANCELLED_STATUSES]
        slices[q] = _sweep(q, in_force, effective)
        winners.update(s.mrid for s in slices[q])
    candidates = {c.mrid for c in unique
                  if c.status not in CANCELLED_STATUSES and c.duration > 0 and c.values}
    return Plan(slices, _defaults(defaults), frozenset(candidates - winners), windows)


def at(p: Plan, q: Quantity, t: int) -> Setting | None:
    """The value in force for `q` at `t`, from a slice or the default; None: neither."""
    slices = p.slices.get(q, [])
    i = bisect_right([s.start for s in slices], t) - 1
    if i >= 0 and t < slices[i].end:
        return Setting(slices[i].value, slices[i].mrid, False)
    if q in p.default:
        value, mrid = p.default[q]
        return Setting(value, mrid, True)
    return None


def winning(p: Plan, t: int) -> set[str]:
    """The mRIDs that are in force for at least one quantity at `t`."""
    return {s.mrid for slices in p.slices.values() for s in slices if s.start <= t < s.end}


def _unique(controls: Iterable[Control]) -> list[Control]:
    """One control per mRID (the first listed): a control listed on two pages or by two programs counts
    once."""
    seen: dict[str, Control] = {}
    for c in controls:
        seen.setdefault(c.mrid, c)
    return list(seen.values())


def _effective(controls: list[Control], lfdi: str) -> dict[str, tuple[int, int]]:
    """Effective (start, end) per control of one quantity, randomised and chained (step 1 above).

    In order of scheduled start, the controls that precede a control are those whose scheduled end is at
    or before its scheduled start; a heap on scheduled end releases them as the start advances."""
    out: dict[str, tuple[int, int]] = {}
    pending: list[tuple[int, str]] = []  # (scheduled end, mRID) of controls not yet preceding
    latest = None  # the latest effective end among the controls that precede
    by_end: dict[int, int] = {}  # scheduled end → latest effective end of the controls ending there
    for c in sorted(controls, key=lambda c: (c.start, c.end, c.mrid)):
        while pending and pending[0][0] <= c.start:
            end, mrid = heapq.heappop(pending)
            eff_end = out[mrid][1]
            by_end[end] = max(by_end.get(end, eff_end), eff_end)
            latest = eff_end if latest is None else max(latest, eff_end)
        randomised = c.start + offset(c, lfdi)
        if c.start in by_end:  # successive: start where the earlier event effectively ends
            start = by_end[c.start]
        else:
            start = randomised if latest is None else max(latest, randomised)
        out[c.mrid] = (start, start + c.duration)
        heapq.heappush(pending, (c.end, c.mrid))
    return out


def _rank(c: Control) -> tuple[bool, int, int, str]:
    """Lower wins: not marked superseded, lowest primacy, newest creation, lowest mRID."""
    return (c.status == SUPERSEDED, c.primacy, -c.creation, c.mrid.lower())


def _sweep(q: Quantity, controls: list[Control], effective: dict[str, tuple[int, int]]) -> list[Slice]:
    """The winner of every piece between consecutive effective starts and ends, joined per control."""
    points = sorted({t for c in controls for t in effective[c.mrid]})
    starting: dict[int, list[Control]] = {}
    for c in controls:
        starting.setdefault(effective[c.mrid][0], []).append(c)
    heap: list[tuple[tuple[bool, int, int, str], int, Control]] = []  # (rank, effective end, control)
    pieces: list[tuple[int, int, Control]] = []
    for here, there in pairwise(points):
        for c in starting.get(here, ()):
            heapq.heappush(heap, (_rank(c), effective[c.mrid][1], c))
        while heap and heap[0][1] <= here:  # ended: dropped once it comes to the top
            heapq.heappop(heap)
        if not heap:
            continue
        winner = heap[0][2]
        if pieces and pieces[-1][2] is winner and pieces[-1][1] == here:
            pieces[-1] = (pieces[-1][0], there, winner)
        else:
            pieces.append((here, there, winner))
    count = Counter(c.mrid for _, _, c in pieces)
    seen: Counter[str] = Counter()
    out = []
    for start, end, c in pieces:
        part = seen[c.mrid] if count[c.mrid] > 1 else None
        seen[c.mrid] += 1
        out.append(Slice(q, start, end, c.mrid, c.values[q], c.ramp_s, part))
    return out


def _defaults(defaults: Sequence[DefaultControl]) -> dict[Quantity, tuple[float | bool, str]]:
    out: dict[Quantity, tuple[float | bool, str]] = {}
    for q in QUANTITIES:
        having = [d for d in defaults if q in d.values]
        if having:
            best = min(having, key=lambda d: (d.primacy, d.mrid.lower()))
            out[q] = (best.values[q], best.mrid)
    return out


# ---- Responses -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    """A Response to POST to `reply_to` for the control `mrid`; `reason` is for the log."""

    mrid: str
    reply_to: str
    status: int
    reason: str | None = None


TERMINAL = (COMPLETED, RESP_CANCELLED, RESP_SUPERSEDED)


class Responses:
    """Which Responses have been queued, per control that asks for them (responseRequired and replyTo).

    `due` gives, in order: RECEIVED for every control seen for the first time (MESSAGE_RECEIVED bit);
    then, with the SPECIFIC_RESPONSE bit: STARTED once it has begun and is in force for a quantity;
    COMPLETED once its effective end has passed, if it started; CANCELLED when the server cancels it
    (scheduled or active); SUPERSEDED when it will never be in force, or, once started, never again
    before its end; NOT_APPLICABLE when it sets only fields the gateway cannot carry out. One of
    COMPLETED, CANCELLED, SUPERSEDED ends a control's Responses. A control that disappears from the
    server's list is not cancelled (envoy drops ended controls): nothing is sent for it but, if it had
    started, COMPLETED at its end.
    """

    def __init__(self) -> None:
        # per mRID: reply_to, required (bits), sent (statuses, in order), end (effective, once started),
        # seen (when last listed), reason (of a NOT_APPLICABLE)
        self._entries: dict[str, dict] = {}

    def due(self, controls: Sequence[Control], p: Plan, now: int) -> list[Due]:
        received: list[Due] = []
        specific: list[Due] = []
        in_force = winning(p, now)
        ahead = {s.mrid for slices in p.slices.values() for s in slices if s.end > now}  # in force later
        listed = set()
        for c in _unique(controls):
            if not c.reply_to or not c.response_required:
                continue
            listed.add(c.mrid)
            e = self._entries.get(c.mrid)
            if e is None:
                e = self._entries[c.mrid] = {"reply_to": c.reply_to, "required": c.response_required,
                                             "sent": [], "end": None, "seen": now, "reason": None}
                if c.response_required & MESSAGE_RECEIVED:
                    received += self._queue(c.mrid, RECEIVED)
            e.update(reply_to=c.reply_to, required=c.response_required, seen=now)
            if not c.response_required & SPECIFIC_RESPONSE or any(s in TERMINAL for s in e["sent"]):
                continue
            started = STARTED in e["sent"]
            if c.status in CANCELLED_STATUSES:
                specific += self._queue(c.mrid, RESP_CANCELLED)
            elif not c.values and c.unsupported:
                specific += self._queue(c.mrid, NOT_APPLICABLE,
                                        f"sets only {', '.join(c.unsupported)}, which this site cannot do")
            elif c.mrid in p.superseded and not started:
                specific += self._queue(c.mrid, RESP_SUPERSEDED)
            elif not started:
                if c.mrid in in_force:
                    e["end"] = p.windows[c.mrid][1]
                    specific += self._queue(c.mrid, STARTED)
            else:
                e["end"] = p.windows.get(c.mrid, (0, e["end"]))[1]
                if now >= e["end"]:
                    specific += self._queue(c.mrid, COMPLETED)
                elif c.mrid not in ahead:  # a newer or higher-priority control has the rest of its window
                    specific += self._queue(c.mrid, RESP_SUPERSEDED)
        for mrid, e in list(self._entries.items()):
            if mrid in listed:
                continue
            ended = e["end"] is not None and now >= e["end"]
            if ended and STARTED in e["sent"] and not any(s in TERMINAL for s in e["sent"]) \
                    and e["required"] & SPECIFIC_RESPONSE:
                specific += self._queue(mrid, COMPLETED)
            if max(e["end"] or e["seen"], e["seen"]) + FORGET_AFTER_S < now:
                del self._entries[mrid]
        return received + specific

    def cannot_be_met(self, mrid: str, reason: str) -> list[Due]:
        """NOT_APPLICABLE, once, for a control whose limit the site cannot deliver (the core said so)."""
        e = self._entries.get(mrid)
        if e is None or not e["required"] & SPECIFIC_RESPONSE or any(s in TERMINAL for s in e["sent"]):
            return []
        return self._queue(mrid, NOT_APPLICABLE, reason)

    def sent(self, mrid: str) -> list[int]:
        """The statuses queued for a control so far, in order."""
        e = self._entries.get(mrid)
        return list(e["sent"]) if e else []

    def _queue(self, mrid: str, status: int, reason: str | None = None) -> list[Due]:
        e = self._entries[mrid]
        if status in e["sent"]:
            return []
        e["sent"].append(status)
        if reason is not None:
            e["reason"] = reason
        return [Due(mrid, e["reply_to"], status, reason)]

    def snapshot(self) -> dict:
        return {"format": SNAPSHOT_FORMAT,
                "entries": {m: {**e, "sent": list(e["sent"])} for m, e in self._entries.items()}}

    def restore(self, d: dict) -> None:
        if d.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported 2030.5 responses snapshot format {d.get('format')!r}")
        self._entries = {m: {**e, "sent": list(e["sent"])} for m, e in d["entries"].items()}
