"""Availability windows (TDC-13): every known current or future limit from outages, envelopes and overrides,
so the market side can stop offering what the site cannot deliver.

One window per live instruction, with the connection agreement filling in what it does not limit. An
envelope that a later one replaces ends, in its window, where the replacement starts. A disconnect or
cease_to_energize allows no export (the PCC then shows only the load); a hold shows its cap once it has
started and is known, the connection agreement before.
"""

from __future__ import annotations

from gateway.core.instructions import Store, superseded_from
from gateway.core.model import Envelope, Outage, Override, SiteParams
from gateway.core.outbound import Window

WINDOW_TYPES = ("envelope", "outage", "override")  # the instructions that have a window


def windows(store: Store, params: SiteParams) -> tuple[Window, ...]:
    """Computed once per version of the store: every cycle compares them with the last published."""
    return store.derived(("windows", params), lambda: _windows(store, params))


def _windows(store: Store, params: SiteParams) -> tuple[Window, ...]:
    ex_cap, im_cap = params.export_cap_kw, params.import_cap_kw

    def capped(kw: float | None, cap: float) -> float:
        return cap if kw is None else min(kw, cap)

    out: list[Window] = []
    superseded = superseded_from(store)
    for rec in store.live():
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
