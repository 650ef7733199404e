"""Semantic checks of a schema-valid inbound message (TDC-03, TDC-05, OUT_OF_RANGE), in this order:
UNKNOWN_RESOURCE, CLOCK_SKEW, OUT_OF_RANGE, EXPIRED; then, for an instruction that passed them, the cap
on live instructions (TOO_MANY_INSTRUCTIONS).

OUT_OF_RANGE: a window with start ≥ end; a window that starts more than `max_horizon_s` of its role
ahead; any kW value (target or limit) beyond 10 × the larger connection-agreement cap (no real
instruction for this site can mean it); a dispatch ramp that is not positive; a negative envelope
ramp_s. An envelope whose `replaces` names no known envelope is still accepted: refusing a limit for a
bookkeeping reason would be the unsafe choice.

TOO_MANY_INSTRUCTIONS: the role already has `max_live_instructions` live. Each live instruction is an
input of every decision, so without a cap a flood of future-dated ones makes every decision slower. A
default envelope is never refused for it when one is live: it replaces that one at once. An LDC
`disconnect` or `cease_to_energize` is a protection order: refusing it for a bookkeeping reason would be
the unsafe choice, so it has room up to twice the cap (still a bound on what a flood can pile up).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.core.instructions import Store
from gateway.core.model import (
    Dispatch,
    Envelope,
    Inbound,
    Instruction,
    Outage,
    Override,
    Service,
    SiteParams,
)

ABSURD_FACTOR = 10.0
PROTECTION = ("disconnect", "cease_to_energize")  # LDC orders with room beyond the cap


def check(msg: Inbound, params: SiteParams, now: datetime) -> tuple[str, str] | None:
    """(reason, detail) when the message must be rejected, else None."""
    if isinstance(msg, Dispatch) and msg.resource_id != params.resource_id:
        return "UNKNOWN_RESOURCE", f"resource_id {msg.resource_id!r} is not this site's resource"
    if msg.issued_at > now + timedelta(seconds=params.max_clock_skew_s):
        return "CLOCK_SKEW", f"issued_at is more than {params.max_clock_skew_s:g} s in the future"
    start, end = getattr(msg, "start", None), getattr(msg, "end", None)
    if start is not None and end is not None and start >= end:
        return "OUT_OF_RANGE", "start must be before end"
    horizon = params.max_horizon_s.of(msg.issuer)
    ahead = None if start is None else (start - now).total_seconds()  # no now + horizon: it may overflow
    if ahead is not None and ahead > horizon:
        return "OUT_OF_RANGE", (f"start is {ahead:.0f} s ahead, beyond the {horizon:g} s this site accepts "
                                f"from {msg.issuer} ([site] max_horizon_s.{msg.issuer})")
    absurd = ABSURD_FACTOR * max(params.export_cap_kw, params.import_cap_kw)
    for name, kw in _powers(msg):
        if abs(kw) > absurd:
            return "OUT_OF_RANGE", f"{name} {kw:g} kW is beyond {absurd:g} kW"
    if isinstance(msg, Dispatch) and msg.ramp_kw_per_min is not None and msg.ramp_kw_per_min <= 0:
        return "OUT_OF_RANGE", "ramp_kw_per_min must be positive"
    if isinstance(msg, Envelope) and msg.ramp_s is not None and msg.ramp_s < 0:
        return "OUT_OF_RANGE", "ramp_s must not be negative"
    if end is not None and end <= now:
        return "EXPIRED", "end has passed"
    return None


def room(msg: Instruction, store: Store, params: SiteParams) -> tuple[str, str] | None:
    """(reason, detail) when the issuer's live instructions are at their cap, else None."""
    cap = params.max_live_instructions.of(msg.issuer)
    live = store.count(msg.issuer)
    action = msg.action if isinstance(msg, Override) else None
    protection = action in PROTECTION
    if live < (2 * cap if protection else cap):
        return None
    if msg.type == "default_envelope" and any(r.msg.type == "default_envelope"
                                              for r in store.records[msg.issuer].values()):
        return None
    most = f"twice [site] max_live_instructions.{msg.issuer} = {cap:g} for a {action}" if protection \
        else f"[site] max_live_instructions.{msg.issuer} = {cap:g}"
    return "TOO_MANY_INSTRUCTIONS", (f"{live} instructions from {msg.issuer} are live, the most this site "
                                     f"accepts ({most}); cancel one or wait for one to end")


def _powers(msg: Inbound) -> list[tuple[str, float]]:
    if isinstance(msg, Dispatch | Service):
        return [("target_kw", msg.target_kw)]
    if isinstance(msg, Outage):
        return [("export_limit_kw", msg.export_limit_kw), ("import_limit_kw", msg.import_limit_kw)]
    limits = getattr(msg, "limits", None)  # envelope, default_envelope
    if limits is None:
        return []
    return [(name, kw) for name, kw in vars(limits).items() if kw is not None]
