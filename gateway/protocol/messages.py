"""Wire schema of the T-D coordination protocol v1 (PROTOCOL.md §2–§4), as pydantic v2 models.

Inbound models are validated strictly from JSON: unknown fields are rejected, nothing is coerced ("5" is
not a number, true is not 1; a JSON integer is a fine value for a kW field), NaN/Infinity are rejected,
and times must be RFC 3339 date-times with seconds and an explicit offset; they are converted to UTC.
Semantic checks that need the site or the clock (start < end, EXPIRED, CLOCK_SKEW, absurd values) are
the core's; the schema only holds what a message must look like.

Outbound models are what the gateway publishes; the codec validates every outbound message through them.
All messages carry the common fields of §2; the gateway's own messages have issuer "gateway". Optional
fields of a response or error are left out when they do not apply; elsewhere a value that is not known
(no meter reading, an open-ended window) is null.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    model_validator,
)

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: object) -> object:
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with seconds and an explicit offset, "
                         "e.g. 2025-06-01T12:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# Inbound times must lie well inside the calendar: the core adds to them and subtracts from them
# (retention, ramps, "just before"), and 9999-12-31T23:59:59-23:59 is not even a date once in UTC.
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


def _inbound_utc(value: datetime) -> datetime:
    try:
        utc = _utc(value)
    except OverflowError:
        raise ValueError("is outside the calendar once converted to UTC") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"must lie between {EARLIEST.year} and {LATEST.year} (UTC)")
    return utc


def _integer(value: object) -> object:
    if type(value) is not int:  # pydantic's Literal[1] would take true and 1.0
        raise ValueError("must be the integer 1")
    return value


# Strict(False): the string has passed the RFC 3339 check, now let pydantic parse it.
Time = Annotated[AwareDatetime, Strict(False), BeforeValidator(_rfc3339), AfterValidator(_inbound_utc)]
OutTime = Annotated[AwareDatetime, AfterValidator(_utc)]
Version = Annotated[Literal[1], BeforeValidator(_integer)]
Id = Annotated[str, Field(min_length=1, max_length=128)]
Text = Annotated[str, Field(min_length=1, max_length=256)]
LimitKw = Annotated[float, Field(ge=0)]
Role = Literal["ieso", "ldc"]

ResponseStatus = Literal["received", "accepted", "constrained", "rejected", "started", "completed",
                         "superseded", "cancelled", "failed"]
Reason = Literal["SCHEMA_INVALID", "UNSUPPORTED_VERSION", "UNAUTHORIZED", "WRONG_SITE", "UNKNOWN_RESOURCE",
                 "EXPIRED", "CLOCK_SKEW", "DUPLICATE_ID", "UNKNOWN_REF", "OUT_OF_RANGE",
                 "DISTRIBUTION_CONSTRAINT", "OVERRIDE_ACTIVE", "CONFLICTING_INSTRUCTION", "DEVICE_CAPACITY",
                 "DEVICE_OFFLINE", "TOO_MANY_INSTRUCTIONS", "INTERNAL_ERROR"]
Mode = Literal["normal", "constrained", "overridden", "failsafe"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


# ---- inbound (§3) -------------------------------------------------------------------------------------


class _Inbound(_Model):
    v: Version
    type: str
    id: Id
    issuer: Role
    issued_at: Time


class Dispatch(_Inbound):
    """Market side → `tdc/v1/{site}/ieso/dispatch`: the PCC should reach target_kw by start (plus the ramp
    time) and hold it until end. A newer overlapping dispatch supersedes it."""

    type: Literal["dispatch"]
    issuer: Literal["ieso"]
    resource_id: Id
    product: Literal["energy", "operating_reserve"]
    kind: Literal["algorithmic", "manual", "blocked"]
    target_kw: float
    start: Time
    end: Time
    ramp_kw_per_min: float | None = None


class _LimitFields(_Model):
    export_limit_kw: LimitKw | None = None
    import_limit_kw: LimitKw | None = None
    generation_limit_kw: LimitKw | None = None
    load_limit_kw: LimitKw | None = None


class Envelope(_LimitFields, _Inbound):
    """LDC → `tdc/v1/{site}/ldc/envelope`: operating envelope over [start, end); export/import at the PCC,
    generation/load summed over the site's devices. Active envelopes apply together, most restrictive wins."""

    type: Literal["envelope"]
    issuer: Literal["ldc"]
    start: Time
    end: Time
    reason: Literal["thermal", "voltage", "protection", "planned_work", "emergency", "flexible_hosting",
                    "other"]
    replaces: Id | None = None
    ramp_s: float | None = None

    @model_validator(mode="after")
    def _some_limit(self) -> Envelope:
        if all(getattr(self, f) is None for f in _LimitFields.model_fields):
            raise ValueError("an envelope needs at least one of export_limit_kw, import_limit_kw, "
                             "generation_limit_kw, load_limit_kw")
        return self


class DefaultEnvelope(_LimitFields, _Inbound):
    """LDC → `tdc/v1/{site}/ldc/default_envelope`: the limits to apply while the LDC link is lost."""

    type: Literal["default_envelope"]
    issuer: Literal["ldc"]


class Override(_Inbound):
    """LDC → `tdc/v1/{site}/ldc/override`: disconnect, cease_to_energize or hold, until end or cancelled."""

    type: Literal["override"]
    issuer: Literal["ldc"]
    action: Literal["disconnect", "cease_to_energize", "hold"]
    start: Time
    end: Time | None = None
    reason: Text


class Outage(_Inbound):
    """LDC → `tdc/v1/{site}/ldc/outage`: limits over the outage window (default 0/0: the site is isolated)."""

    type: Literal["outage"]
    issuer: Literal["ldc"]
    kind: Literal["planned", "forced"]
    start: Time
    end: Time
    equipment: Text
    export_limit_kw: LimitKw = 0.0
    import_limit_kw: LimitKw = 0.0


class Service(_Inbound):
    """LDC → `tdc/v1/{site}/ldc/service`: a distribution service asking for a PCC target, like a dispatch."""

    type: Literal["service"]
    issuer: Literal["ldc"]
    service: Literal["peak_reduction", "voltage_support", "other"]
    target_kw: float
    start: Time
    end: Time


class Cancel(_Inbound):
    """Either role → `tdc/v1/{site}/{role}/cancel`: ends an instruction of the same role."""

    type: Literal["cancel"]
    ref: Id


class Heartbeat(_Inbound):
    """Either role → `tdc/v1/{site}/{role}/heartbeat`: a sign of life, not answered."""

    type: Literal["heartbeat"]


INBOUND: dict[str, dict[str, type[_Inbound]]] = {
    "ieso": {"dispatch": Dispatch, "cancel": Cancel, "heartbeat": Heartbeat},
    "ldc": {"envelope": Envelope, "default_envelope": DefaultEnvelope, "override": Override, "outage": Outage,
            "service": Service, "cancel": Cancel, "heartbeat": Heartbeat},
}

# ---- outbound (§4) ------------------------------------------------------------------------------------


class _Outbound(_Model):
    v: Literal[1]
    type: str
    id: Id
    issuer: Literal["gateway"]
    issued_at: OutTime


class Response(_Outbound):
    """Gateway → `tdc/v1/{site}/gateway/response/{ieso|ldc}`: a status of one inbound message."""

    type: Literal["response"]
    ref: Id
    ref_type: Annotated[str, Field(max_length=64)]
    status: ResponseStatus
    reason: Reason | None = None
    accepted_kw: float | None = None
    detail: str | None = None
    at: OutTime


class Error(_Outbound):
    """Gateway → `tdc/v1/{site}/gateway/error`: input that cannot be answered with a response."""

    type: Literal["error"]
    topic: str
    reason: Reason
    detail: str
    payload: Annotated[str, Field(description="the first 200 bytes of the payload, escaped")]


class SiteValues(_Model):
    """Meter values are null without a usable meter reading; soc_pct is null without a battery."""

    p_kw: float | None
    q_kvar: float | None
    v_pu: float | None
    hz: float | None
    available_up_kw: float
    available_down_kw: float
    soc_pct: float | None


class EffectiveValues(_Model):
    target_kw: float
    export_limit_kw: float
    import_limit_kw: float
    binding: str
    mode: Mode


class ServingItem(_Model):
    ref: Id
    kw: float


class DeviceValues(_Model):
    id: str
    online: bool
    stale: bool
    p_kw: float
    q_kvar: float
    setpoint_kw: float | None
    soc_pct: float | None
    following: bool = Field(description="false: the device answers but does not follow its command; its "
                            "share goes to the others (an extension of PROTOCOL §4)")


class Telemetry(_Outbound):
    """Gateway → `tdc/v1/{site}/gateway/telemetry`, every telemetry_interval_s; seq is contiguous."""

    type: Literal["telemetry"]
    site_id: str
    seq: Annotated[int, Field(ge=0)]
    at: OutTime
    site: SiteValues
    effective: EffectiveValues
    serving: list[ServingItem] = Field(max_length=1)
    devices: list[DeviceValues]
    replayed: bool


class CommsValues(_Model):
    ieso: Literal["ok", "lost"]
    ldc: Literal["ok", "lost"]


class DeviceCount(_Model):
    online: Annotated[int, Field(ge=0)]
    total: Annotated[int, Field(ge=0)]


class Status(_Outbound):
    """Gateway → `tdc/v1/{site}/gateway/status` (retained; the last will says offline)."""

    type: Literal["status"]
    site_id: str
    state: Literal["online", "offline"]
    mode: Mode
    comms: CommsValues
    active: list[Id]
    devices: DeviceCount
    version: str
    alarms: list[str] = Field(default_factory=list, description="conditions an operator must see, e.g. "
                              "telemetry lost to a full outbox; an extension of PROTOCOL §4")


class Constraint(_Outbound):
    """Gateway → `tdc/v1/{site}/gateway/constraint`: a target that an LDC limit, override, outage or a
    competing instruction keeps from being delivered."""

    type: Literal["constraint"]
    ref: Id
    requested_kw: float
    deliverable_kw: float
    binding: str
    reason: Reason
    start: OutTime
    end: OutTime | None = Field(description="null: a limit with no end (the connection agreement, an "
                                "override until cancelled)")


class Window(_Model):
    start: OutTime
    end: OutTime | None  # null: an override in force until cancelled
    max_export_kw: float
    max_import_kw: float
    cause: str


class Availability(_Outbound):
    """Gateway → `tdc/v1/{site}/gateway/availability` (retained): known current and future limits."""

    type: Literal["availability"]
    windows: list[Window]


OUTBOUND: tuple[type[_Outbound], ...] = (Response, Error, Telemetry, Status, Constraint, Availability)
