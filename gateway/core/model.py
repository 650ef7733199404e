"""Domain types of the decision core: site parameters, measurements, device commands, inbound messages.

Plain frozen dataclasses with no wire concerns: `gateway.protocol.codec` maps the wire schema onto them.
Every time is an aware UTC `datetime`; every power is kW, positive = export / generation / discharge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Literal

Role = Literal["ieso", "ldc"]
ROLES: tuple[Role, ...] = ("ieso", "ldc")
PRIORITIES = ROLES
DEFAULT_MODES = ("pv_available_battery_idle",)


@dataclass(frozen=True)
class Limits:
    """A set of limits, as an envelope or a default envelope carries them; None means no limit.

    export/import are at the PCC (both ≥ 0); generation/load are sums over the site's devices.
    """

    export_limit_kw: float | None = None
    import_limit_kw: float | None = None
    generation_limit_kw: float | None = None
    load_limit_kw: float | None = None


@dataclass(frozen=True)
class RoleLimits:
    """One number per issuing role."""

    ieso: float
    ldc: float

    def of(self, role: str) -> float:
        return self.ieso if role == "ieso" else self.ldc


# What a real site sees: IESO sends a dispatch every 5 minutes with a window of 5 minutes to an hour (an
# overlapping newer one supersedes the older), so a dozen are live at most; an LDC, a handful of envelopes,
# outages and overrides. The caps leave ample room for both and keep a flood from making every decision
# slow. Horizons: IESO's day-ahead schedule reaches into the next day; an LDC announces planned outages
# days ahead (TDC-13).
MAX_LIVE_INSTRUCTIONS = RoleLimits(ieso=100, ldc=50)
MAX_HORIZON_S = RoleLimits(ieso=2 * 86400, ldc=7 * 86400)


@dataclass(frozen=True)
class SiteParams:
    site_id: str
    resource_id: str
    export_cap_kw: float  # connection agreement, never exceeded
    import_cap_kw: float
    default_envelope: Limits  # from the site config, until the LDC sends a default_envelope
    dual_participation_priority: str = "ieso"  # or "ldc"
    comms_timeout_s: float = 90
    max_clock_skew_s: float = 300
    target_tolerance_kw: float = 1.0
    limit_margin_kw: float = 0.0  # closed-loop aims this far inside a PCC limit
    default_mode: str = "pv_available_battery_idle"
    max_live_instructions: RoleLimits = MAX_LIVE_INSTRUCTIONS  # per role: more are TOO_MANY_INSTRUCTIONS
    max_horizon_s: RoleLimits = MAX_HORIZON_S  # per role: a window starting later is OUT_OF_RANGE

    def __post_init__(self) -> None:
        # A bad configuration must stop the gateway at start, not surface as odd decisions later.
        if self.dual_participation_priority not in PRIORITIES:
            raise ValueError(f"dual_participation_priority must be one of {PRIORITIES}")
        if self.default_mode not in DEFAULT_MODES:
            raise ValueError(f"default_mode must be one of {DEFAULT_MODES}")
        if min(self.export_cap_kw, self.import_cap_kw, self.target_tolerance_kw, self.limit_margin_kw) < 0:
            raise ValueError("caps, tolerance and margin must be ≥ 0")
        if self.comms_timeout_s <= 0 or self.max_clock_skew_s < 0:
            raise ValueError("comms_timeout_s must be > 0 and max_clock_skew_s ≥ 0")
        if min(self.max_live_instructions.ieso, self.max_live_instructions.ldc) < 1 \
                or min(self.max_horizon_s.ieso, self.max_horizon_s.ldc) <= 0:
            raise ValueError("max_live_instructions must be ≥ 1 and max_horizon_s > 0 for each role")


@dataclass(frozen=True)
class DeviceReading:
    """One controllable device as last read; built by the app from Modbus/DNP3 reads."""

    id: str
    kind: str  # "pv" | "battery"
    online: bool
    stale: bool
    p_kw: float  # measured, + = generation/discharge
    q_kvar: float
    rated_kw: float
    available_kw: float  # PV: what it could produce now; battery: max discharge now (0 at SoC min)
    max_charge_kw: float  # battery: max charge now (0 at SoC max); PV: 0
    soc_pct: float | None
    connected: bool
    # How long the device may take to follow a new command (its `response_time_s` in the site file):
    # off its command for longer than this, it is taken as not following (see following.py).
    response_s: float = 10.0


@dataclass(frozen=True)
class MeterReading:
    p_kw: float  # at the PCC, + = export
    q_kvar: float
    v_pu: float
    hz: float
    online: bool
    stale: bool
    # The PCC power when the device readings were taken (on a large site they are older than the meter's
    # last reading), so that the load estimate Σ devices − PCC compares like with like; None: p_kw.
    p_kw_at_devices: float | None = None
    # How uncertain Σ devices − p_kw_at_devices is for that (see allocation.readings_spread): the export
    # credit leaves it out.
    load_spread_kw: float = 0.0

    @property
    def load_basis_kw(self) -> float:
        return self.p_kw if self.p_kw_at_devices is None else self.p_kw_at_devices


@dataclass(frozen=True)
class DeviceCommand:
    """Setpoint for one device.

    `revert_kw`: the most the device may produce (PV) or discharge (battery) once its reversion timer
    runs out, i.e. when the gateway has stopped: its share of the LDC limits and overrides in force
    (0 under `disconnect` / `cease_to_energize`). None: the LDC restricts nothing, and the device's
    own safe limit from the site file applies. The driver writes the lower of the two (PROTOCOL §6).
    """

    id: str
    p_kw: float
    connect: bool
    revert_kw: float | None = None
    resend: bool = False  # write it again in full: the device does not follow it (see following.py)


@dataclass(frozen=True)
class Serving:
    """The instruction the site target currently serves, and the PCC kW decided for it."""

    ref: str
    kw: float


# ---- inbound messages (PROTOCOL §3) ----------------------------------------------------------------
# `type` is a field (not a class attribute) so that a stored message says what it is in a snapshot.


@dataclass(frozen=True, kw_only=True)
class Message:
    json_once: ClassVar[bool] = True  # nothing in a message changes: serde.to_jsonable makes its form once

    id: str
    issuer: Role
    issued_at: datetime
    raw: bytes = field(default=b"", repr=False)  # the payload as received, for the audit log
    digest: str = ""  # canonical content hash: TDC-06 tells a repeat from a different message


@dataclass(frozen=True, kw_only=True)
class Dispatch(Message):
    type: Literal["dispatch"] = field(default="dispatch", init=False)
    resource_id: str
    product: str  # energy | operating_reserve: both are a PCC target to follow
    kind: str  # algorithmic | manual | blocked: all followed alike
    target_kw: float
    start: datetime
    end: datetime
    ramp_kw_per_min: float | None = None


@dataclass(frozen=True, kw_only=True)
class Service(Message):
    type: Literal["service"] = field(default="service", init=False)
    service: str
    target_kw: float
    start: datetime
    end: datetime


@dataclass(frozen=True, kw_only=True)
class Envelope(Message):
    type: Literal["envelope"] = field(default="envelope", init=False)
    start: datetime
    end: datetime
    limits: Limits
    reason: str
    replaces: str | None = None
    ramp_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class DefaultEnvelope(Message):
    type: Literal["default_envelope"] = field(default="default_envelope", init=False)
    limits: Limits


@dataclass(frozen=True, kw_only=True)
class Override(Message):
    type: Literal["override"] = field(default="override", init=False)
    action: str  # disconnect | cease_to_energize | hold
    start: datetime
    end: datetime | None = None  # open-ended until cancelled
    reason: str


@dataclass(frozen=True, kw_only=True)
class Outage(Message):
    type: Literal["outage"] = field(default="outage", init=False)
    kind: str  # planned | forced
    start: datetime
    end: datetime
    equipment: str
    export_limit_kw: float = 0.0  # default 0/0: the site is isolated
    import_limit_kw: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Cancel(Message):
    type: Literal["cancel"] = field(default="cancel", init=False)
    ref: str


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    type: Literal["heartbeat"] = field(default="heartbeat", init=False)


@dataclass(frozen=True)
class Invalid:
    """An inbound payload the codec could not accept; `id` is None when there is no usable id."""

    role: str  # the topic's role
    msg_type: str  # the topic's type segment
    id: str | None
    reason: str
    detail: str
    raw: bytes = field(default=b"", repr=False)


Target = Dispatch | Service  # what the site can serve (one at a time)
Instruction = Dispatch | Service | Envelope | DefaultEnvelope | Override | Outage
Inbound = Instruction | Cancel | Heartbeat
