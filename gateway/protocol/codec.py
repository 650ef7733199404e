"""The only bridge between the wire and the core: bytes ⇄ wire models ⇄ core domain values. Pure functions.

Inbound checks, in this order (PROTOCOL §7 TDC-02, TDC-04):
1. over 64 KiB → SCHEMA_INVALID (with the id when an oversize payload still parses, up to 1 MiB);
2. not UTF-8 JSON, not an object, or no usable `id` (a string of 1–128 characters of text: JSON can
   spell a lone surrogate, which is none) → Invalid with id None, which the engine answers with an
   `error` message; a key that appears twice in an object → SCHEMA_INVALID (two parsers, e.g. the
   gateway's and an auditor's reading the raw payload, could see two different messages);
3. `v` a number other than 1 → UNSUPPORTED_VERSION (a `v` that is not a number is a schema error);
4. a topic type that the role may not send, a `type` field that differs from the topic's type, or an
   `issuer` that differs from the topic's role → UNAUTHORIZED;
5. the wire model → SCHEMA_INVALID, with a short detail naming the first failing field.
A valid message becomes the core's domain value, carrying the raw payload and a content digest: the
SHA-256 of the validated message in canonical JSON (sorted keys, times in UTC), so a re-serialised
repeat of the same message is recognised as identical (TDC-06).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from pydantic import ValidationError

from gateway.core import model as core
from gateway.core.outbound import Availability, Constraint, ErrorMsg, Outbound, Response, Status, Telemetry
from gateway.protocol import messages as wire

MAX_PAYLOAD = 64 * 1024
MAX_ID_RECOVERY = 1024 * 1024  # larger payloads are not even parsed to find their id
ERROR_PAYLOAD_BYTES = 200


def decode_inbound(role: str, msg_type: str, payload: bytes) -> core.Inbound | core.Invalid:
    """`role` and `msg_type` are the topic's segments (tdc/v1/{site}/{role}/{msg_type}).

    Raises ValueError for a role other than ieso/ldc: the app subscribes to those two only.
    """
    if role not in wire.INBOUND:
        raise ValueError(f"unknown role {role!r}")
    topic_type = msg_type[:64]  # echoed as ref_type; a topic segment can be anything

    def invalid(reason: str, detail: str, msg_id: str | None) -> core.Invalid:
        # a detail may quote the input (a field's name): keep it encodable whatever the input was
        return core.Invalid(role, topic_type, msg_id, reason, _text(detail), payload)

    if len(payload) > MAX_PAYLOAD:
        obj = _parse(payload)[0] if len(payload) <= MAX_ID_RECOVERY else None
        detail = f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte limit"
        return invalid("SCHEMA_INVALID", detail, _usable_id(obj))
    try:
        obj, duplicate = _loads(payload)
    except (ValueError, RecursionError) as err:
        return invalid("SCHEMA_INVALID", f"not UTF-8 JSON: {err}"[:200], None)
    if not isinstance(obj, dict):
        return invalid("SCHEMA_INVALID", "payload is not a JSON object", None)
    msg_id = _usable_id(obj) if duplicate != "id" else None  # two ids: no telling which to answer
    if msg_id is None:
        return invalid("SCHEMA_INVALID", "no usable id: one string of 1 to 128 characters is required", None)
    if duplicate is not None:
        return invalid("SCHEMA_INVALID", f"{duplicate[:64]}: the key appears more than once", msg_id)
    v = obj.get("v")
    if isinstance(v, int | float) and not isinstance(v, bool) and v != 1:
        return invalid("UNSUPPORTED_VERSION",
                       f"protocol version {str(v)[:20]} is not supported; this gateway speaks 1", msg_id)
    model = wire.INBOUND[role].get(msg_type)
    if model is None:
        return invalid("UNAUTHORIZED", f"{topic_type!r} is not a message type of role {role}", msg_id)
    if "type" in obj and obj["type"] != msg_type:
        detail = f"type {str(obj['type'])[:64]!r} differs from the topic's {topic_type!r}"
        return invalid("UNAUTHORIZED", detail, msg_id)
    if "issuer" in obj and obj["issuer"] != role:
        detail = f"issuer {str(obj['issuer'])[:64]!r} differs from the topic's role {role}"
        return invalid("UNAUTHORIZED", detail, msg_id)
    try:
        msg = model.model_validate_json(payload)
    except ValidationError as err:
        return invalid("SCHEMA_INVALID", _describe(err), msg_id)
    return _to_domain(msg, payload)


def _loads(payload: bytes) -> tuple[Any, str | None]:
    """The JSON value, and the first key found twice in one of its objects (None: none was)."""
    duplicates: list[str] = []

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    duplicates.append(key)
                seen.add(key)
        return obj

    obj = json.loads(payload.decode("utf-8"), object_pairs_hook=unique)
    return obj, duplicates[0] if duplicates else None


def _parse(payload: bytes) -> tuple[Any, str | None]:
    try:
        return _loads(payload)
    except (ValueError, RecursionError):
        return None, None


def _usable_id(obj: Any) -> str | None:
    msg_id = obj.get("id") if isinstance(obj, dict) else None
    if not isinstance(msg_id, str) or not 1 <= len(msg_id) <= 128:
        return None
    return msg_id if _text(msg_id) == msg_id else None  # a lone surrogate cannot be answered or logged


def _text(s: str) -> str:
    """`s` if it is text; else with its lone surrogates escaped (\\ud800), so that it can be encoded."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _describe(err: ValidationError) -> str:
    """`target_kw: Input should be a valid number (and 1 more problem)`: the first problem, named."""
    errors = err.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    what = {"extra_forbidden": "unknown field", "missing": "required field is missing"}.get(
        first["type"], first["msg"].removeprefix("Value error, "))
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where}: {what}{more}"[:300]


def _to_domain(msg: wire._Inbound, payload: bytes) -> core.Inbound:
    canonical = json.dumps(msg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    common: dict[str, Any] = {"id": msg.id, "issuer": msg.issuer, "issued_at": msg.issued_at, "raw": payload,
                              "digest": hashlib.sha256(canonical.encode()).hexdigest()}
    match msg:
        case wire.Dispatch():
            return core.Dispatch(**common, resource_id=msg.resource_id, product=msg.product, kind=msg.kind,
                                 target_kw=msg.target_kw, start=msg.start, end=msg.end,
                                 ramp_kw_per_min=msg.ramp_kw_per_min)
        case wire.Service():
            return core.Service(**common, service=msg.service, target_kw=msg.target_kw, start=msg.start,
                                end=msg.end)
        case wire.Envelope():
            return core.Envelope(**common, start=msg.start, end=msg.end, limits=_limits(msg),
                                 reason=msg.reason, replaces=msg.replaces, ramp_s=msg.ramp_s)
        case wire.DefaultEnvelope():
            return core.DefaultEnvelope(**common, limits=_limits(msg))
        case wire.Override():
            return core.Override(**common, action=msg.action, start=msg.start, end=msg.end, reason=msg.reason)
        case wire.Outage():
            return core.Outage(**common, kind=msg.kind, start=msg.start, end=msg.end, equipment=msg.equipment,
                               export_limit_kw=msg.export_limit_kw, import_limit_kw=msg.import_limit_kw)
        case wire.Cancel():
            return core.Cancel(**common, ref=msg.ref)
        case wire.Heartbeat():
            return core.Heartbeat(**common)
    raise TypeError(f"no mapping for {type(msg).__name__}")


def _limits(msg: wire.Envelope | wire.DefaultEnvelope) -> core.Limits:
    return core.Limits(msg.export_limit_kw, msg.import_limit_kw, msg.generation_limit_kw, msg.load_limit_kw)


def encode_outbound(out: Outbound, site_id: str) -> tuple[str, bytes]:
    """(topic suffix relative to tdc/v1/{site_id}/, JSON payload), validated through the wire model.

    The message id is derived from the content (`gw-` + 32 hex digits of SHA-256), so encoding stays pure
    and two different messages never share an id.
    """
    fields: dict[str, Any]
    match out:
        case Response():
            suffix, model = f"gateway/response/{out.role}", wire.Response
            fields = {"type": "response", "ref": out.ref, "ref_type": out.ref_type, "status": out.status,
                      "at": out.at}
            optional = {"reason": out.reason, "accepted_kw": out.accepted_kw, "detail": out.detail}
            fields |= {k: v for k, v in optional.items() if v is not None}
        case ErrorMsg():
            suffix, model = "gateway/error", wire.Error
            fields = {"type": "error", "topic": f"tdc/v1/{site_id}/{out.role}/{out.msg_type}",
                      "reason": out.reason, "detail": out.detail,
                      "payload": out.payload[:ERROR_PAYLOAD_BYTES].decode("utf-8", "backslashreplace")}
        case Constraint():
            suffix, model = "gateway/constraint", wire.Constraint
            fields = {"type": "constraint", **dataclasses.asdict(out)}
            del fields["at"]  # a constraint carries only issued_at
        case Availability():
            suffix, model = "gateway/availability", wire.Availability
            fields = {"type": "availability", "windows": [dataclasses.asdict(w) for w in out.windows]}
        case Telemetry():
            suffix, model = "gateway/telemetry", wire.Telemetry
            # part by part, not dataclasses.asdict: its deep copy was most of encoding 1,000 devices'
            # telemetry (6 of 10 ms, in one turn of the event loop); every part is flat, of plain values
            fields = {"type": "telemetry", "site_id": out.site_id, "seq": out.seq, "at": out.at,
                      "site": vars(out.site), "effective": vars(out.effective),
                      "serving": [vars(s) for s in out.serving], "devices": [vars(d) for d in out.devices],
                      "replayed": out.replayed}
        case Status():
            suffix, model = "gateway/status", wire.Status
            fields = {"type": "status", "site_id": out.site_id, "state": out.state, "mode": out.mode,
                      "comms": out.comms, "active": list(out.active), "version": out.version,
                      "devices": {"online": out.devices_online, "total": out.devices_total},
                      "alarms": list(out.alarms)}
        case _:
            raise TypeError(f"cannot encode {type(out).__name__}")
    msg_id = "gw-" + hashlib.sha256(f"{site_id}|{out!r}".encode()).hexdigest()[:32]
    msg = model(v=1, id=msg_id, issuer="gateway", issued_at=out.at, **fields)
    return suffix, msg.model_dump_json(exclude_unset=True).encode()
