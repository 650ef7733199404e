"""A 2030.5 schedule (`schedule.Plan`) → the core's LDC messages, and what to submit to make the core hold
exactly them. Pure: time passed in (Unix seconds on the gateway's clock, as in schedule.py).

Each message is the PROTOCOL §3 LDC JSON, decoded by `gateway.protocol.codec.decode_inbound`, as
`gateway/north/scada_map.py` makes a SCADA command an LDC instruction: the same checks, digest and raw
payload for the audit log, so a 2030.5 limit is an LDC instruction in every respect.

- A limit slice is an `envelope` keyed `sep2:<mRID>:<quantity>` (`:<part>` when another control cuts it),
  limits in kW, the slice's window, `ramp_s` (see Ramps). Its `reason` is "other" (the field is an enum);
  the id names the control, and so does telemetry's `binding` (`envelope:sep2:<mRID>:…`).
- opModConnect false → override `disconnect`, opModEnergize false → `cease_to_energize`, over the slice;
  true sets nothing.
- The default, per quantity, over the gaps between slices (2030.5: a DefaultDERControl applies while no
  control does, and a control replaces it rather than adding to it, so the two never overlap): envelopes
  (or overrides) keyed `sep2:dderc:<mRID>:<quantity>:<n>`, n the gap's start, or 0 for the gap in force now
  with no slice before it; the last one ends at now + the horizon, rounded up to a step of the horizon so
  that its end moves once a step rather than every poll. Plus a `default_envelope` (`sep2:dderc`) with the
  default's limits, which the core applies once the LDC link is lost and the envelopes have ended (TDC-17,
  CSIP-AUS ALL-23).

Ramps (CSIP-AUS ALL-13, ALL-25, ALL-28). A control's rampTms is its slice's `ramp_s`, as sent (0: at
once). Every other change of a 2030.5 limit in the plan moves at the site's ramp rate, `ramp_w_per_s`
(the lowest-primacy program's DefaultDERControl setGradW, hundredths of % of setMaxW per second, times
setMaxW: `ramp_rate`; many inverters do not do WGra themselves, so the gateway ramps the limit): a
slice's start and a default gap's start (the end of a control, back to the default) get
`ramp_s = |new − old| / ramp_w_per_s`, where old is the plan's 2030.5 value of that quantity just
before (the slice or default that ends there), each taken as at most the connection agreement's cap
(what the core has in force for a higher one). With no 2030.5 value just before (no default, and no
control ending there) there is nothing to ramp from, as the core ramps no quantity that had no limit
before: the limit applies at once. setGradW 0 or absent: no ramp. The core moves the limit from what is
in force just before the envelope (another interface's tighter limit, if any) over that ramp_s.
A tightening ramps too: that is what the protocol's envelope `ramp_s` means (limits.py, PROTOCOL §3)
and what CSIP-AUS asks (ALL-28: down to the default's 0 W at setGradW). The limit that holds during
the ramp is the ramped one, which the core enforces and reports in telemetry; the LDC chose the rate.
Not ramped: a default whose value changes while it is in force, and the default that returns when the
server cancels a control in force (the plan has neither the old value nor the instant of the change:
the envelope's ramp is anchored at its start, long past); both apply at once. Nor overrides.

`changes` mints each message's id from its key, content, issue time and the id it replaces or the cancel
that went before it (`<key>~<10 hex>`), so an id is never used twice: the core would refuse different
content under a seen id (TDC-06) and would not apply a repeat again.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.core.model import Inbound, SiteParams
from gateway.core.validation import ABSURD_FACTOR
from gateway.north.sep2.model import LIMIT_QUANTITIES, Quantity
from gateway.north.sep2.schedule import Plan, Slice, at
from gateway.protocol.codec import decode_inbound

PREFIX = "sep2:"
DEFAULT_KEY = "sep2:dderc"
OVERRIDES: dict[Quantity, str] = {"connect": "disconnect", "energize": "cease_to_energize"}
MAX_KEY = 100  # a minted id adds 11 characters and a cancel 7; the core takes 128
STEPS_PER_HORIZON = 24

Spec = tuple[str, dict[str, Any]]  # key, the message's fields beyond the common ones


def ramp_rate(set_grad_w: int, set_max_w: float) -> float:
    """W per second for setGradW (hundredths of a percent of setMaxW per second; 27 = 0.27 %/s)."""
    return set_grad_w / 10_000 * set_max_w


def desired(p: Plan, params: SiteParams, now: int, horizon_s: int, max_messages: int | None = None,
            ramp_w_per_s: float = 0.0) -> dict[str, Inbound]:
    """The LDC messages that carry the plan from now to now + horizon_s, by key (each message's id is its
    key until `changes` mints the one it is submitted under).

    `horizon_s` must lie within the core's `max_horizon_s.ldc`; the client calls this every poll, so the
    horizon moves on with time. At most `max_messages` envelopes and overrides are kept, the earliest
    first: what is left out starts later and comes in as the earlier ones end. The default,
    (max_live_instructions.ldc − 1) // 2, leaves room for a change, which adds before it cancels: the
    old and the new set and the default_envelope (a newer one drops the older at once) fit the core's
    cap. Ended and replaced ones leave the core's count at its next cycle.
    `ramp_w_per_s` is the rate a limit change without rampTms moves at (0: none; see Ramps).
    Limits above what the core accepts (10 × the larger connection-agreement cap) are that bound: no
    limit of this site can mean more. Raises ValueError when a control cannot be carried (a key too
    long, a limit that is negative or not a number): the codec lets no such control through.
    """
    if not 0 < horizon_s <= params.max_horizon_s.ldc:
        raise ValueError(f"horizon_s {horizon_s} must be within the core's max_horizon_s.ldc "
                         f"({params.max_horizon_s.ldc:g} s)")
    cap = int(params.max_live_instructions.ldc)
    limit = max_messages if max_messages is not None else max(1, (cap - 1) // 2)
    max_kw = ABSURD_FACTOR * max(params.export_cap_kw, params.import_cap_kw)
    step = max(1, horizon_s // STEPS_PER_HORIZON)
    until = -(-(now + horizon_s) // step) * step
    specs: list[Spec] = []
    for q, slices in p.slices.items():
        ramp = _Ramp(ramp_w_per_s, _cap_w(params, q))
        specs += [spec for s in slices if s.end > now and s.start <= now + horizon_s
                  for spec in _slice_spec(s, _before(p, q, s.start), ramp, max_kw)]
        if q in p.default:
            value, mrid = p.default[q]
            specs += _default_specs(q, value, mrid, slices, now, now - now % step, until, max_kw, ramp)
    specs.sort(key=lambda spec: spec[1]["start"])
    specs = specs[:limit]
    limits = {f"{q}_limit_kw": _kw(v, max_kw, DEFAULT_KEY, q) for q, (v, _) in p.default.items()
              if q in LIMIT_QUANTITIES}
    if limits:
        specs.insert(0, (DEFAULT_KEY, {"type": "default_envelope", **limits}))
    return {key: _decoded(key, fields, now) for key, fields in specs}


def _slice_spec(s: Slice, before: float | bool | None, ramp: _Ramp, max_kw: float) -> list[Spec]:
    key = f"{PREFIX}{s.mrid}:{s.quantity}" + ("" if s.part is None else f":{s.part}")
    if s.quantity in OVERRIDES:
        reason = f"2030.5 DERControl {s.mrid}"
        return [] if s.value else [(key, _override(s.quantity, s.start, s.end, reason))]
    fields = _envelope(key, s.quantity, s.value, s.start, s.end, max_kw)
    ramp_s = s.ramp_s if s.ramp_s is not None else ramp.seconds(before, s.value)  # rampTms first
    if ramp_s:
        fields["ramp_s"] = ramp_s
    return [(key, fields)]


def _default_specs(q: Quantity, value: float | bool, mrid: str, slices: list[Slice], now: int, first: int,
                   until: int, max_kw: float, ramp: _Ramp) -> list[Spec]:
    """The default's messages over the gaps between `slices` that have not ended by `now`, up to `until`.
    A gap starts where a slice ends, ramping from that slice's value; one with no slice before it, at
    `first` (the step `now` is in)."""
    if q in OVERRIDES and value:
        return []
    gaps: list[tuple[int, int, int, float | bool | None]] = []  # start, end, n, the value before
    cursor, n, before = first, 0, None
    for s in slices:  # sorted and non-overlapping
        if s.start > cursor:
            gaps.append((cursor, s.start, n, before))
        cursor, n, before = s.end, s.end, s.value
    gaps.append((cursor, until, n, before))
    out: list[Spec] = []
    for start, gap_end, n, before in gaps:
        end = min(gap_end, until)
        if end <= now or start >= end:
            continue
        key = f"{PREFIX}dderc:{mrid}:{q}:{n}"
        if q in OVERRIDES:
            out.append((key, _override(q, start, end, f"2030.5 DefaultDERControl {mrid}")))
            continue
        fields = _envelope(key, q, value, start, end, max_kw)
        if ramp_s := ramp.seconds(before, value):
            fields["ramp_s"] = ramp_s
        out.append((key, fields))
    return out


def _envelope(key: str, q: Quantity, value: float | bool, start: int, end: int, max_kw: float
              ) -> dict[str, Any]:
    return {"type": "envelope", "start": start, "end": end, "reason": "other",
            f"{q}_limit_kw": _kw(value, max_kw, key, q)}


def _before(p: Plan, q: Quantity, start: int) -> float | bool | None:
    """The plan's value of `q` just before `start`: the slice or default that ends there (None: none)."""
    setting = at(p, q, start - 1)  # times are whole seconds: [a, start) holds start − 1
    return None if setting is None else setting.value


@dataclass(frozen=True)
class _Ramp:
    rate: float  # W/s; 0: no ramp
    cap_w: float  # the connection agreement's for the quantity: a limit above it is the cap (the core's)

    def seconds(self, before: float | bool | None, value: float | bool) -> float | None:
        """The time a limit change from `before` to `value` (W) takes (None: no ramp)."""
        if before is None or self.rate <= 0 or isinstance(before, bool) or isinstance(value, bool):
            return None
        return abs(min(value, self.cap_w) - min(before, self.cap_w)) / self.rate or None


def _cap_w(params: SiteParams, q: Quantity) -> float:
    caps = {"export": params.export_cap_kw, "import": params.import_cap_kw}
    return caps[q] * 1000 if q in caps else math.inf


def _override(q: Quantity, start: int, end: int, reason: str) -> dict[str, Any]:
    return {"type": "override", "action": OVERRIDES[q], "start": start, "end": end, "reason": reason}


def _kw(value: float | bool, max_kw: float, key: str, q: str) -> float:
    if isinstance(value, bool) or not value >= 0:  # NaN fails too
        raise ValueError(f"{key}: {q} limit {value!r} W is not a limit (W ≥ 0 expected)")
    return min(value / 1000, max_kw)


def _decoded(key: str, fields: dict[str, Any], now: int) -> Inbound:
    if len(key) > MAX_KEY:
        raise ValueError(f"{key[:40]}…: an id of {len(key)} characters, over {MAX_KEY} (mRIDs are 32 hex)")
    body = {"v": 1, "id": key, "issuer": "ldc", "issued_at": _iso(now),
            **{k: _iso(v) if k in ("start", "end") else v for k, v in fields.items()}}
    return _decode(body)


def _decode(body: dict[str, Any]) -> Inbound:
    msg = decode_inbound("ldc", body["type"], json.dumps(body).encode())
    if not isinstance(msg, Inbound):
        raise ValueError(f"{body['id']}: {msg.detail}")
    return msg


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


# ---- what to submit ---------------------------------------------------------------------------------------


def changes(want: Mapping[str, Inbound], submitted: Mapping[str, Inbound], now: int) -> list[Inbound]:
    """What to submit so that the core holds exactly `want`, given what it holds from us (`submitted`,
    by key, as `after` keeps it).

    Two rounds, so that the site is never less restricted than both the old and the new set, even when
    the core refuses a message: first every new or changed message (overrides first: they protect);
    only once there is none, the cancels of what is no longer wanted. A changed envelope names the one
    it changes in `replaces`, so that the core switches to it as it starts (at once, for one in force
    now) with no moment under neither; a changed override is added beside the old one. Either way
    `after` keeps the old one under its own id and the second round cancels it: the core keeps a
    replaced envelope until its replacement starts, and would put it back in force if the replacement
    were cancelled before then.
    The client calls `changes` and `after` until `changes` has nothing (twice when something changed).
    """
    adds: list[Inbound] = []
    for key, new in want.items():
        old = submitted.get(key)
        if old is not None and old.type == "cancel":  # cancelled this second: a fresh id, not the same
            adds.append(_minted(new, key, None, old.id))
            continue
        if old is not None and _content(old) == _content(new):
            continue
        replaces = old.id if old is not None and old.type == new.type == "envelope" else None
        adds.append(_minted(new, key, replaces))
    if adds:
        return sorted(adds, key=lambda m: m.type != "override")
    return [_decode({"v": 1, "type": "cancel", "id": f"cancel:{m.id}", "issuer": "ldc",
                     "issued_at": _iso(now), "ref": m.id})
            for key, m in submitted.items() if key not in want and m.type != "cancel" and _live(m, now)]


def after(submitted: Mapping[str, Inbound], sent: Iterable[Inbound], now: int,
          refused: Iterable[str] = ()) -> dict[str, Inbound]:
    """What the core holds from us once `sent` went in and the core refused the ids in `refused`.

    An accepted message takes its key; the message it changed stays, under its own id, until the cancel
    round (a default_envelope excepted: the core drops the older one at once); an accepted or refused
    cancel (UNKNOWN_REF: it had ended) removes what it names, leaving the cancel under its key until
    the next second, so that `changes` never mints an id twice (the core would take a repeat of a seen
    id for the same message and not apply it again); a refused message changes nothing (its key is tried
    again). Ended ones are dropped."""
    no = set(refused)
    held = {k: m for k, m in submitted.items() if _live(m, now)}
    for m in sent:
        if m.type == "cancel":
            for k in [k for k, h in held.items() if h.id == m.ref]:  # type: ignore[union-attr]
                if k == key_of(m.ref):
                    held[k] = m  # a tombstone for this second: see changes
                else:
                    del held[k]
            continue
        if m.id in no:
            continue
        key = key_of(m.id)
        old = held.get(key)
        if old is not None and old.type not in ("default_envelope", "cancel"):
            held[old.id] = old  # cancelled in the next round, replaced or not (see changes)
        held[key] = m
    return held


def key_of(msg_id: str) -> str:
    return msg_id.split("~", 1)[0]


def control_of(ref: str) -> str | None:
    """The DERControl mRID that an instruction id or a `binding` (`envelope:sep2:<mRID>:export~…`) names;
    None for the default control's messages and for anything not from 2030.5."""
    _, found, rest = ref.partition(PREFIX)
    if not found or rest.startswith("dderc"):
        return None
    return rest.split(":", 1)[0] or None


def dump(submitted: Mapping[str, Inbound]) -> dict[str, str]:
    """`submitted` as JSON-able text, for the client's persistence (restored by `load`)."""
    return {key: m.raw.decode() for key, m in submitted.items()}


def load(d: Mapping[str, str]) -> dict[str, Inbound]:
    return {key: _decode(json.loads(raw)) for key, raw in d.items()}


def _content(m: Inbound) -> dict[str, Any]:
    """What the message says, apart from its id, when it was issued and what it replaces."""
    return {k: v for k, v in json.loads(m.raw).items() if k not in ("id", "issued_at", "replaces")}


def _live(m: Inbound, now: int) -> bool:
    if m.type == "cancel":  # a tombstone lasts its second
        return m.issued_at.timestamp() >= now
    end = getattr(m, "end", None)
    return end is None or end.timestamp() > now


def _minted(m: Inbound, key: str, replaces: str | None, after_cancel: str | None = None) -> Inbound:
    body = json.loads(m.raw)
    seed = json.dumps([_content(m), body["issued_at"], replaces, after_cancel], sort_keys=True)
    body["id"] = f"{key}~{hashlib.sha256(seed.encode()).hexdigest()[:10]}"
    if replaces is not None:
        body["replaces"] = replaces
    return _decode(body)

