"""What a driver may pass on of what it read: finite numbers, within what the device can physically do.

Every driver decodes its points into the canonical quantities of `bus_device.Quantities` (W, var, V, Hz,
%), one `Sample` per point tried. A sample is unusable when its point could not be decoded (a scale
factor outside -10…10, a string, a DNP3 point flagged over range), when its value is not a finite
number, or when the device cannot physically do it: active and reactive power beyond `RATED_MULTIPLE`
× the device's rating (a meter has none: beyond `MAX_W`), negative ratings or capabilities, a state of
charge or limit outside 0…100 %, a frequency outside `HZ_RANGE`, a voltage outside 0…`MAX_V`.

`pick` takes the first usable sample of a quantity's points (the profile lists them in order of
preference); when none is usable, the quantity is not reported (None), and the driver fails the whole
reading if it was the active power (see `Unusable`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# No device or PCC on a distribution feeder carries more than this (Ontario feeders run at ≤ 44 kV and
# tens of MW): a larger |W|, var or rating is a bad register, not a measurement. The meter has no rating
# of its own, so this is its bound.
MAX_W = 100e6
# A DER's active and reactive power never reach twice its rating (inverters are limited to ~1.1–1.2 ×);
# beyond it the value is garbage, whatever the rating.
RATED_MULTIPLE = 2.0
HZ_RANGE = (40.0, 70.0)  # a 50 or 60 Hz grid; a device that reads outside this is not measuring
MAX_V = 100e3

_POWER = frozenset({"p_w", "q_var", "available_w", "max_charge_w", "max_discharge_w", "setpoint_w"})
_NOT_NEGATIVE = frozenset({"rated_w", "available_w", "max_charge_w", "max_discharge_w"})
_PERCENT = frozenset({"soc_pct", "soc_min_pct", "soc_max_pct", "limit_pct"})
_VOLTS = frozenset({"v", "v_nominal"})
_UNITS = {**dict.fromkeys(_POWER | {"rated_w"}, "W"), "q_var": "var"}


class Unusable(Exception):
    """A value read from a device that cannot be used: its point, its raw value and why."""

    def __init__(self, point: str, raw: object, why: str) -> None:
        super().__init__(f"{point} = {raw}: {why}")
        self.point, self.raw, self.why = point, raw, why


@dataclass(slots=True)  # not frozen: a dozen made every read, never kept, and a frozen one is slower
class Sample:
    """One point as read: its label, its raw value, and its engineering value (None: not implemented),
    or why it could not be decoded."""

    point: str  # "701.W", "huawei_sun2000.active_power", "AI537"
    raw: object  # as on the wire: a register value (or what explains it: the scale register too)
    value: float | None
    why: str | None = None
    sf: int = 0  # the SunSpec scale factor applied to `raw`, shown with it

    @property
    def shown(self) -> str:
        """The raw value as a user reads it in an error: `1234 × 10^-1`."""
        return f"{self.raw} × 10^{self.sf}" if self.sf else str(self.raw)


def power_bound_w(rated_w: float | None) -> float:
    """The largest |W| or |var| a device of this rating can show (`MAX_W` without a rating)."""
    return min(MAX_W, RATED_MULTIPLE * rated_w) if rated_w else MAX_W


def why_implausible(field: str, value: float, bound_w: float) -> str | None:
    """Why `value` cannot be the quantity `field` of a device whose power is bounded by `bound_w`."""
    if not math.isfinite(value):
        return "not a finite number"
    unit = _UNITS.get(field, "")
    if field in _NOT_NEGATIVE and value < 0:
        return f"{value:g} {unit} is negative"
    if field in _POWER and abs(value) > bound_w:
        return f"{value:g} {unit} is beyond ±{bound_w:g} {unit}, more than the device can do"
    if field == "rated_w" and value > MAX_W:
        return f"{value:g} W is beyond {MAX_W:g} W: no device on a distribution feeder is rated so"
    if field in _PERCENT and not 0.0 <= value <= 100.0:
        return f"{value:g} % is outside 0…100 %"
    if field == "hz" and not HZ_RANGE[0] <= value <= HZ_RANGE[1]:
        return f"{value:g} Hz is outside {HZ_RANGE[0]:g}…{HZ_RANGE[1]:g} Hz"
    if field in _VOLTS and not 0.0 <= value <= MAX_V:
        return f"{value:g} V is outside 0…{MAX_V:g} V"
    return None


def pick(field: str, samples: Iterable[Sample], bound_w: float) -> tuple[float | None, Unusable | None]:
    """The value of the first usable sample and None, or None and why the first one implemented was not
    usable (None and None when no sample is implemented)."""
    problem: Unusable | None = None
    for s in samples:
        why = s.why
        if why is None and s.value is not None:
            why = why_implausible(field, s.value, bound_w)
            if why is None:
                return s.value, None
        if why is not None and problem is None:
            problem = Unusable(s.point, s.shown, why)
    return None, problem
