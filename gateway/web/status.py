"""`/api/status`: what the status page, `der-gateway status` and anyone with curl see, as one JSON object.

Read from the running gateway without changing it: the last cycle's decision, the engine's status (mode,
links, instructions in force), the instruction records with their last assessment, and each device's
poller. Binding sources are resolved to who set them (issuer, type, id, reason), so an operator does not
have to look an id up.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.core.instructions import Record, Store, superseded_from
from gateway.core.model import DefaultEnvelope, Dispatch, Envelope, Limits, Outage, Override, Service
from gateway.web.history import History, finite

if TYPE_CHECKING:
    from gateway.app import Gateway

ROLE_NAMES = {"ieso": "IESO", "ldc": "LDC"}
FIXED_SOURCES = {
    "connection_agreement": "connection agreement (site file)",
    "device_capacity": "what the devices can do now",
    "default_mode": "default mode: PV at available power, batteries idle",
}


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def _limits_text(limits: Limits) -> str:
    parts = [f"{name} ≤ {kw:g} kW" for name, kw in (
        ("export", limits.export_limit_kw), ("import", limits.import_limit_kw),
        ("generation", limits.generation_limit_kw), ("load", limits.load_limit_kw)) if kw is not None]
    return ", ".join(parts) or "no limits"


def describe(rec: Record) -> str:
    """What an instruction asks, in a few words."""
    msg = rec.msg
    match msg:
        case Dispatch():
            ramp = f", ramp {msg.ramp_kw_per_min:g} kW/min" if msg.ramp_kw_per_min else ""
            return f"target {msg.target_kw:g} kW ({msg.product}, {msg.kind}){ramp}"
        case Service():
            return f"target {msg.target_kw:g} kW ({msg.service})"
        case Envelope():
            return f"{_limits_text(msg.limits)} ({msg.reason})"
        case DefaultEnvelope():
            return f"{_limits_text(msg.limits)} when the LDC link is lost"
        case Override():
            held = f" at {rec.hold_kw:g} kW" if rec.hold_kw is not None else ""
            return f"{msg.action}{held} ({msg.reason})"
        case Outage():
            return (f"{msg.kind} outage of {msg.equipment}: export ≤ {msg.export_limit_kw:g} kW, "
                    f"import ≤ {msg.import_limit_kw:g} kW")
    return msg.type


def who(source: str, store: Store) -> str:
    """Who set a binding source: `envelope:env-1` → `LDC envelope env-1: export ≤ 100 kW (thermal)`."""
    if source in FIXED_SOURCES:
        return FIXED_SOURCES[source]
    if source == "default_envelope":
        received = [r for r in store.records["ldc"].values() if isinstance(r.msg, DefaultEnvelope)]
        return f"LDC default envelope {received[-1].msg.id}" if received else \
            "default envelope of the site file (LDC link lost)"
    msg_type, _, msg_id = source.partition(":")
    for role, by_id in store.records.items():
        rec = by_id.get(msg_id)
        if rec is not None and rec.msg.type == msg_type:
            return f"{ROLE_NAMES[role]} {msg_type} {msg_id}: {describe(rec)}"
    return source


def _response(rec: Record, store: Store) -> dict[str, Any]:
    """The decision last told to the issuer: a dispatch's or service's last assessment, else the
    decision remembered with its id."""
    a = rec.assessment
    if a is not None:
        return {"status": a.status, "reason": a.reason, "accepted_kw": a.accepted_kw}
    seen = store.seen[rec.msg.issuer].get(rec.msg.id)
    return {"status": seen.status if seen else "accepted", "reason": seen.reason if seen else None,
            "accepted_kw": seen.accepted_kw if seen else None}


def _instructions(store: Store, now: datetime, active: tuple[str, ...]) -> list[dict[str, Any]]:
    superseded = superseded_from(store)
    out = []
    for rec in store.live():
        msg = rec.msg
        response = _response(rec, store)
        if msg.id in active:
            state = "in force"
        elif rec.seq in superseded and superseded[rec.seq] <= now:
            state = "superseded"
        elif (start := getattr(msg, "start", None)) is not None and start > now:
            state = "pending"
        else:
            state = "standing"  # a default envelope: applies only while the LDC link is lost
        out.append({
            "issuer": msg.issuer, "type": msg.type, "id": msg.id, "what": describe(rec),
            "start": _iso(getattr(msg, "start", None)), "end": _iso(getattr(msg, "end", None)),
            "state": state, "started": rec.started, **response,
        })
    return out


def _devices(gw: Gateway) -> list[dict[str, Any]]:
    out = []
    cycle = gw.snapshot.cycle
    not_following = cycle.not_following if cycle is not None else frozenset()
    for dev_id, poller in gw.pollers.items():
        dev, r, cmd = poller.device, poller.reading, poller.command
        state = ("offline" if not dev.online else "stale" if dev.stale
                 else "not following" if dev_id in not_following else "online")
        out.append({
            "id": dev_id, "kind": dev.kind, "state": state, "online": dev.online, "stale": dev.stale,
            "p_kw": None if r is None else round(r.p_kw, 2),
            "setpoint_kw": None if cmd is None else round(cmd.p_kw, 2),
            "soc_pct": None if r is None or r.soc_pct is None else round(r.soc_pct, 1),
            "error": None if dev.last_error is None else str(dev.last_error),
        })
    return out


def status_view(gw: Gateway, history: History, now: datetime, since: float | None) -> dict[str, Any]:
    """Everything the page shows; `history` holds the chart's points after `since` (epoch s), or none
    when `since` is None (the terminal view has no chart)."""
    st = gw.engine.status(now, time.monotonic())
    store = gw.engine.state.store
    cycle = gw.snapshot.cycle
    meter = gw.pollers[gw.meter_id]
    meter_ok = meter.reading is not None and meter.device.online and not meter.device.stale
    devices = _devices(gw)
    site: dict[str, Any] = {
        "pcc_kw": round(meter.reading.p_kw, 2) if meter_ok and meter.reading is not None else None,
        "mode": st.mode,
    }
    if cycle is not None:
        d = cycle.decision
        site |= {
            "target_kw": finite(d.target_kw), "target_binding": d.binding,
            "target_who": who(d.binding, store),
            "export_limit_kw": finite(d.export_limit_kw), "export_binding": d.export_binding,
            "export_who": who(d.export_binding, store),
            "import_limit_kw": finite(d.import_limit_kw), "import_binding": d.import_binding,
            "import_who": who(d.import_binding, store),
            "serving": ", ".join(f"{s.ref} at {s.kw:.1f} kW" for s in cycle.serving) or "nothing",
            "decided_at": _iso(cycle.at),
        }
    online = sum(d["online"] for d in devices)
    return {
        "site_id": gw.site.site.id, "name": gw.site.site.name, "resource_id": gw.site.site.resource_id,
        "version": __version__, "at": _iso(now), "site": site,
        "comms": {"ieso": st.comms["ieso"], "ldc": st.comms["ldc"],
                  "broker": "connected" if gw.mqtt.link.connected.is_set() else "disconnected",
                  "devices": f"{online}/{len(devices)} online"},
        "alarms": [{"id": str(i), "state": "alarm", "text": a} for i, a in enumerate(gw.alarms(st))],
        "instructions": _instructions(store, now, st.active),
        "devices": devices,
        "history": None if since is None else history.since(since),
    }
