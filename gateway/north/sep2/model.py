"""Plain types shared by the 2030.5 client's parts: a DERControl as the schedule sees it, no XML.

Times are Unix seconds (2030.5's TimeType, UTC); powers are W after the multiplier is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The DERControlBase fields the gateway acts on, by the quantity of the core they set:
# opModExpLimW → export, opModImpLimW → import, opModGenLimW → generation, opModLoadLimW → load (W, ≥ 0);
# opModConnect → connect, opModEnergize → energize (bool: False is a disconnect / cease to energize).
Quantity = Literal["export", "import", "generation", "load", "connect", "energize"]
QUANTITIES: tuple[Quantity, ...] = ("export", "import", "generation", "load", "connect", "energize")
LIMIT_QUANTITIES: tuple[Quantity, ...] = ("export", "import", "generation", "load")

# 2030.5 EventStatus.currentStatus
SCHEDULED, ACTIVE, CANCELLED, CANCELLED_RANDOM, SUPERSEDED = 0, 1, 2, 3, 4
# Response.status (2030.5 ResponseType) the client posts
RECEIVED, STARTED, COMPLETED, RESP_CANCELLED, RESP_SUPERSEDED = 1, 2, 3, 6, 7
NOT_APPLICABLE = 252  # "rejected: control parameter not applicable": a control the site cannot carry out
# responseRequired bits
MESSAGE_RECEIVED, SPECIFIC_RESPONSE = 0x01, 0x02


@dataclass(frozen=True)
class Control:
    """One DERControl of one DERProgram, as received."""

    mrid: str  # hex, as the server sent it
    program: str  # the DERProgram's mRID: primacy and the default control are per program
    primacy: int  # the program's: lower wins
    creation: int  # creationTime: between equal primacies, newer wins
    start: int  # interval.start, before randomisation
    duration: int  # interval.duration, s
    values: dict[Quantity, float | bool]  # only the quantities the control sets
    status: int = SCHEDULED  # EventStatus.currentStatus
    randomize_start: int = 0  # s, signed: the effective start is offset uniformly within [min(r,0), max(r,0)]
    ramp_s: float | None = None  # rampTms (hundredths of s on the wire)
    reply_to: str | None = None
    response_required: int = 0
    href: str = ""
    # fields the control sets that the gateway cannot carry out (e.g. opModFixedW, volt-var): answered
    # NOT_APPLICABLE, never silently ignored
    unsupported: tuple[str, ...] = field(default=())

    @property
    def end(self) -> int:
        return self.start + self.duration


@dataclass(frozen=True)
class DefaultControl:
    """A program's DefaultDERControl: what applies, per quantity, while no control of it is in force."""

    mrid: str
    program: str
    primacy: int
    values: dict[Quantity, float | bool]
    set_grad_w: int | None = None  # hundredths of % of setMaxW per s
    unsupported: tuple[str, ...] = field(default=())  # fields set that the gateway does not carry out
