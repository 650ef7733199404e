"""Semantic checks of a schema-valid inbound message (TDC-03, TDC-05, OUT_OF_RANGE), in this order:
UNKNOWN_RESOURCE, CLOCK_SKEW, OUT_OF_RANGE, EXPIRED.

OUT_OF_RANGE: a window with start ≥ end; any kW value (target or limit) beyond 10 × the larger
connection-agreement cap (no real instruction for this site can mean it); a dispatch ramp that is not
positive; a negative envelope ramp_s. An envelope whose `replaces` names no known envelope is still
accepted: refusing a limit for a bookkeeping reason would be the unsafe choice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.core.model import Dispatch, Envelope, Inbound, Outage, Service, SiteParams

ABSURD_FACTOR = 10.0


def check(msg: Inbound, params: SiteParams, now: datetime) -> tuple[str, str] | None:
    """(reason, detail) when the message must be rejected, else None."""
    if isinstance(msg, Dispatch) and msg.resource_id != params.resource_id:
        return "UNKNOWN_RESOURCE", f"resource_id {msg.resource_id!r} is not this site's resource"
    if msg.issued_at > now + timedelta(seconds=params.max_clock_skew_s):
        return "CLOCK_SKEW", f"issued_at is more than {params.max_clock_skew_s:g} s in the future"
    start, end = getattr(msg, "start", None), getattr(msg, "end", None)
    if start is not None and end is not None and start >= end:
        return "OUT_OF_RANGE", "start must be before end"
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


def _powers(msg: Inbound) -> list[tuple[str, float]]:
    if isinstance(msg, Dispatch | Service):
        return [("target_kw", msg.target_kw)]
    if isinstance(msg, Outage):
        return [("export_limit_kw", msg.export_limit_kw), ("import_limit_kw", msg.import_limit_kw)]
    limits = getattr(msg, "limits", None)  # envelope, default_envelope
    if limits is None:
        return []
    return [(name, kw) for name, kw in vars(limits).items() if kw is not None]
