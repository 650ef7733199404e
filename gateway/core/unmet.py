"""A PCC limit the site cannot meet with the devices it controls, told upstream.

The metered export stays above the export limit (or the import above the import limit) by more than the
tolerance while every device the gateway controls is already at the end of its capability in the
direction that would help: the rest is output the gateway does not control (a device not following its
command, an offline one) or a load it cannot cover. After `UNMET_AFTER_S` of that, the LDC is told: a
`constraint` (on the topic both sides read) naming the limit, what was asked and what the site can
deliver now, and a fresh `constrained` response to the instruction that set the limit, with the reason
and the devices to blame. Once the limit is met again the instruction gets a fresh `accepted`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.core.following import Track
from gateway.core.instructions import Record, Store
from gateway.core.limits import Bound
from gateway.core.model import DeviceReading
from gateway.core.outbound import Constraint, Outbound, Response

UNMET_AFTER_S = 5.0


@dataclass
class Unmet:
    side: str  # "export" | "import"
    source: str  # the binding source of the limit, as telemetry spells it
    limit_kw: float
    since: float  # monotonic time it was first seen
    told: bool = False


@dataclass(frozen=True)
class Shortfall:
    """This cycle's candidate: the limit the meter is beyond, and how far the site could come back."""

    side: str
    limit: Bound
    deliverable_kw: float  # the PCC power the site can reach now (PCC sign)


def culprits(devices: list[DeviceReading], tracks: dict[str, Track], commanded: dict[str, float]) -> str:
    """Which devices the gateway cannot count on, for the detail of the report: those off their command
    (following.py) and those offline."""
    parts = [f"{d.id} not following its command ({d.p_kw:.1f} kW against {commanded.get(d.id, 0.0):.1f} kW)"
             for d in devices if d.id in tracks and tracks[d.id].since is not None]
    parts += [f"{d.id} offline" for d in devices if not d.online and d.kind in ("pv", "battery")]
    return "; ".join(parts)


def report(state: Unmet | None, found: Shortfall | None, store: Store, now: datetime, mono: float,
           detail: str, reason: str) -> tuple[Unmet | None, list[Outbound]]:
    """The new state and what to tell."""
    if found is None:
        if state is not None and state.told:
            return None, _told(store, state.source, "accepted", now, None, None, None)
        return None, []
    if state is None or (state.side, state.source) != (found.side, found.limit.source):
        state = Unmet(found.side, found.limit.source, found.limit.kw, mono)
    if state.told or mono - state.since < UNMET_AFTER_S:
        return state, []
    state.told = True
    requested = found.limit.kw if found.side == "export" else -found.limit.kw
    ref, rec_end = _ref(store, found.limit.source)
    what = f"the {found.side} limit of {found.limit.kw:.1f} kW cannot be met: the site reaches " \
           f"{found.deliverable_kw:.1f} kW at the PCC with every device it controls at its limit"
    text = f"{what}; {detail}" if detail else what
    out: list[Outbound] = [Constraint(ref, requested, found.deliverable_kw, found.limit.source, reason, now,
                                      rec_end, now)]
    out += _told(store, found.limit.source, "constrained", now, reason, found.deliverable_kw, text)
    return state, out


def _record(store: Store, source: str) -> Record | None:
    """The LDC instruction that set a limit (`envelope:e-1`, the LDC's own `default_envelope`), if any."""
    kind, _, msg_id = source.partition(":")
    if kind == "default_envelope":
        return next((r for r in store.records["ldc"].values() if r.msg.type == "default_envelope"), None)
    return store.records["ldc"].get(msg_id) if msg_id else None


def _ref(store: Store, source: str) -> tuple[str, datetime | None]:
    """The id a report names for a limit's source, and the end of that limit when it has one."""
    rec = _record(store, source)
    if rec is None:
        return source, None
    return rec.msg.id, getattr(rec.msg, "end", None)


def _told(store: Store, source: str, status: str, now: datetime, reason: str | None,
          accepted_kw: float | None, detail: str | None) -> list[Outbound]:
    rec = _record(store, source)
    if rec is None:
        return []
    return [Response("ldc", rec.msg.id, rec.msg.type, status, now, reason, accepted_kw, detail)]
