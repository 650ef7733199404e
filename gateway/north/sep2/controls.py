"""envoy-schema's DERControl and DefaultDERControl → the plain types of `model` (W after the multiplier,
seconds, ints), so that the schedule never sees XML. A value the gateway cannot act on safely (a
negative limit, an out-of-range time) is a Sep2Error naming the control and the field, never a control
read without it; a field the gateway does not carry out is listed in `unsupported`, never dropped.
"""

from __future__ import annotations

from gateway.north.sep2.codec import (
    ActivePower,
    DefaultDERControl,
    DERControl,
    DERControlBase,
    Sep2Error,
    watts,
)
from gateway.north.sep2.model import (
    SCHEDULED,
    SUPERSEDED,
    Control,
    DefaultControl,
    Quantity,
)

# CSIP-AUS limits (W, ≥ 0) and 2030.5 switches, by the quantity of the core they set
_LIMITS: dict[str, Quantity] = {
    "opModExpLimW": "export", "opModImpLimW": "import", "opModGenLimW": "generation", "opModLoadLimW": "load",
}
_SWITCHES: dict[str, Quantity] = {"opModConnect": "connect", "opModEnergize": "energize"}
_CONTROL_HANDLED = frozenset({*_LIMITS, *_SWITCHES, "rampTms"})  # rampTms: Control.ramp_s
_DEFAULT_HANDLED = frozenset({*_LIMITS, *_SWITCHES})
_STATUSES = range(SCHEDULED, SUPERSEDED + 1)
_ONE_HOUR = range(-3600, 3601)  # OneHourRangeType
_UINT16 = range(1 << 16)  # rampTms, setGradW
_UINT32 = range(1 << 32)  # interval.duration
# DefaultDERControl fields beside its DERControlBase that the gateway does not carry out (enter service
# is the inverter's own IEEE 1547 function): listed in `unsupported` when a server sets them
_DEFAULT_UNSUPPORTED = ("setESDelay", "setESHighFreq", "setESHighVolt", "setESLowFreq", "setESLowVolt",
                        "setESRampTms", "setESRandomDelay", "setSoftGradW")
_STATUS_FIX = "the server must send a valid 2030.5 DERControl (IEEE 2030.5 / CSIP-AUS XSD)"


def _values(resource: str, base: DERControlBase, handled: frozenset[str]
            ) -> tuple[dict[Quantity, float | bool], tuple[str, ...]]:
    """The quantities `base` sets, and the names of the fields it sets that are not in `handled`."""
    values: dict[Quantity, float | bool] = {}
    for name, quantity in _LIMITS.items():
        ap: ActivePower | None = getattr(base, name)
        if ap is None:
            continue
        try:
            w = watts(ap)
        except Sep2Error as err:
            raise Sep2Error(resource, f"DERControlBase/{name}/multiplier", err.problem, err.fix) from None
        if w < 0:
            raise Sep2Error(resource, f"DERControlBase/{name}", f"{w:g} W is negative",
                            "a CSIP-AUS limit is a magnitude in W, 0 or more; the server must not send a "
                            "signed one")
        values[quantity] = w
    for name, quantity in _SWITCHES.items():
        if (on := getattr(base, name)) is not None:
            values[quantity] = on
    unsupported = tuple(name for name in type(base).model_fields
                        if name not in handled and getattr(base, name) is not None)
    return values, unsupported


def _in_range(resource: str, element: str, value: int, allowed: range) -> int:
    if value not in allowed:
        raise Sep2Error(resource, element, f"{value} is outside {allowed.start}..{allowed.stop - 1}",
                        _STATUS_FIX)
    return value


def control(derc: DERControl, program_mrid: str, primacy: int) -> Control:
    """One DERControl of the program `program_mrid` (of `primacy`) as the schedule sees it."""
    resource = f"DERControl {derc.mRID}"
    base = derc.DERControlBase_
    values, unsupported = _values(resource, base, _CONTROL_HANDLED)
    status = _in_range(resource, "EventStatus/currentStatus", derc.EventStatus_.currentStatus, _STATUSES)
    ramp = base.rampTms
    return Control(
        mrid=derc.mRID,
        program=program_mrid,
        primacy=primacy,
        creation=derc.creationTime,
        start=derc.interval.start,
        duration=_in_range(resource, "interval/duration", derc.interval.duration, _UINT32),
        values=values,
        status=status,
        randomize_start=_in_range(resource, "randomizeStart", derc.randomizeStart or 0, _ONE_HOUR),
        ramp_s=None if ramp is None else _in_range(resource, "DERControlBase/rampTms", ramp, _UINT16) / 100,
        reply_to=derc.replyTo,
        response_required=int(derc.responseRequired or "0", 16),
        href=derc.href or "",
        unsupported=unsupported,
    )


def default_control(dderc: DefaultDERControl, program_mrid: str, primacy: int) -> DefaultControl:
    """The DefaultDERControl of the program `program_mrid` (of `primacy`)."""
    resource = f"DefaultDERControl {dderc.mRID}"
    values, unsupported = _values(resource, dderc.DERControlBase_, _DEFAULT_HANDLED)
    grad = dderc.setGradW
    return DefaultControl(
        mrid=dderc.mRID,
        program=program_mrid,
        primacy=primacy,
        values=values,
        set_grad_w=None if grad is None else _in_range(resource, "setGradW", grad, _UINT16),
        unsupported=unsupported + tuple(name for name in _DEFAULT_UNSUPPORTED
                                        if getattr(dderc, name) is not None),
    )
