"""What the gateway says (PROTOCOL §4), as domain values; `gateway.protocol.codec` puts them on the wire.

The engine produces Response, ErrorMsg, Constraint and Availability; the app builds Telemetry and Status
(see `gateway.core.report`) on its own schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway.core.model import Serving

Mode = Literal["normal", "constrained", "overridden", "failsafe"]


@dataclass(frozen=True)
class Response:
    """A status of one inbound message, sent to `gateway/response/{role}` of its issuer."""

    role: str  # ieso | ldc
    ref: str
    ref_type: str
    status: str  # received accepted constrained rejected started completed superseded cancelled failed
    at: datetime
    reason: str | None = None  # one of PROTOCOL §4's reasons
    accepted_kw: float | None = None
    detail: str | None = None


@dataclass(frozen=True)
class ErrorMsg:
    """Input that cannot be answered with a response (not JSON, no usable id)."""

    role: str  # the topic it came on: tdc/v1/{site}/{role}/{msg_type}
    msg_type: str
    reason: str
    detail: str
    payload: bytes  # the engine passes the whole payload; the codec sends its first 200 bytes
    at: datetime


@dataclass(frozen=True)
class Constraint:
    """A market or service target that cannot be fully delivered, and why (TDC-08, TDC-15); or a PCC limit
    the site cannot meet with the devices it controls (see unmet.py)."""

    ref: str
    requested_kw: float
    deliverable_kw: float
    binding: str
    reason: str
    start: datetime
    end: datetime | None  # None: a limit with no end (the connection agreement, an open override)
    at: datetime


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime | None  # None: open-ended override, until cancelled
    max_export_kw: float
    max_import_kw: float
    cause: str  # the limit's source, e.g. outage:<id>


@dataclass(frozen=True)
class Availability:
    windows: tuple[Window, ...]
    at: datetime


@dataclass(frozen=True)
class SiteTelemetry:
    p_kw: float | None  # None: no usable meter reading
    q_kvar: float | None
    v_pu: float | None
    hz: float | None
    available_up_kw: float
    available_down_kw: float
    soc_pct: float | None


@dataclass(frozen=True)
class Effective:
    target_kw: float
    export_limit_kw: float
    import_limit_kw: float
    binding: str
    mode: Mode


@dataclass(frozen=True)
class DeviceTelemetry:
    id: str
    online: bool
    stale: bool
    p_kw: float
    q_kvar: float
    setpoint_kw: float | None
    soc_pct: float | None
    following: bool = True  # False: it answers but does not follow its command (see following.py)


@dataclass(frozen=True)
class Telemetry:
    site_id: str
    seq: int
    at: datetime
    site: SiteTelemetry
    effective: Effective
    serving: tuple[Serving, ...]
    devices: tuple[DeviceTelemetry, ...]
    replayed: bool = False


@dataclass(frozen=True)
class Status:
    site_id: str
    at: datetime
    state: str  # online | offline (the last will)
    mode: Mode
    comms: dict[str, str]  # {"ieso": "ok" | "lost", "ldc": ...}
    active: tuple[str, ...]
    devices_online: int
    devices_total: int
    version: str
    alarms: tuple[str, ...] = ()  # e.g. telemetry evicted from a full outbox


Outbound = Response | ErrorMsg | Constraint | Availability | Telemetry | Status
