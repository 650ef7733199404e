"""The closed loop on the metered error (PROTOCOL §5.5): integral action on what the meter says.

The devices' total is the target plus the site load, estimated each cycle as Σ device readings − meter.
That estimate follows every change of the load at once, but it cannot see an error of its own inputs: a
device whose readings are a few per cent high (inverter measurements are ±1–5 %), a loss between the
devices and the PCC, a device that puts out more than its share. Those leave the metered PCC off its aim
cycle after cycle while the estimate looks right. So the meter is compared with the limits and the target
and the difference integrated into three trims of the devices' total:

- `export_kw` ≥ 0 grows while the meter reads above the export limit, and lowers the range the devices'
  total may take (allocation.total_window); it unwinds while the meter reads below the limit less the
  margin. It never raises the total: the loop takes export away to meet a limit, never adds some to
  reach one.
- `import_kw` ≥ 0, the same for the import limit (it raises the range).
- `target_kw`, signed, corrects the tracking of a served instruction's target inside the limits by more
  than the tolerance; it is 0 while the target sits at a limit (the limit's trim is then the one at
  work) and without an instruction (the default mode lets PV give what it has: nothing to track).

The trims only move in a *steady* cycle: one on new readings (a cycle an instruction triggers decides on
the last ones: two instructions back to back looked steady to the second, and its trim took the whole
shortfall of a site still at 0 after a disconnect), the devices' total where it was a cycle ago (so the
meter shows what that total gave) and no device still converging to a new command. Anything else (a
new target or limit, a load step, a credit that moved) is a change the feedforward answers by itself at
once, and integrating it too would correct it twice. The target's trim also waits for the site to be
*at rest*: every device in service, none moving by more than its tolerance a cycle (following.py). After
a reconnect the devices wait out their enter-service delay, then ramp up for many cycles (a PV reporting
its output as its available power), and while a battery gives way to the PVs the two move in opposite
directions: a trim that integrated the error meanwhile would take back what the ramps deliver anyway, and
overshoot. The limits' trims do not wait for these: they must act whatever the devices' noise, and a
device that tripped by itself stays out of service for minutes. Anti-windup: a trim never grows while
the devices' total is already at the end of their capability it pushes towards, and never by more than
what is left there. Beyond a limit the whole excess is taken off in a steady cycle (`GAIN_BEYOND`: erring on
the low side there only leaves some export unused); the unwinding and the target's trim take `GAIN` of
their error, so that a device slower than a cycle does not make the loop swing.
"""

from __future__ import annotations

from dataclasses import dataclass

GAIN = 0.5
GAIN_BEYOND = 1.0
MIN_SHARE = 0.1  # a following share below this is taken as this: a trim grows at most tenfold


@dataclass
class Trim:
    export_kw: float = 0.0
    import_kw: float = 0.0
    target_kw: float = 0.0
    total_kw: float | None = None  # the devices' total decided last cycle
    aim_kw: float | None = None  # the PCC target `target_kw` was integrated for


@dataclass(frozen=True)
class Loop:
    """One cycle's inputs to the trims (all kW, PCC sign: + = export)."""

    pcc_kw: float  # metered
    total_kw: float  # the devices' total this cycle would decide with the trims as they stand
    export_kw: float  # the export limit in force
    import_kw: float  # the import limit in force (≥ 0; the PCC may go down to −import_kw)
    margin_kw: float  # the loop aims this far inside a limit
    target_kw: float  # the PCC target
    tracking: bool  # the target is a served instruction's (dispatch or service), not the default mode's
    tolerance_kw: float
    converging_kw: float  # what devices still converging to new commands add to the PCC now
    fresh: bool  # the devices and the meter were read for this cycle
    at_rest: bool  # every device the allocation counts on is in service, and none of them is moving
    room_down_kw: float  # how far the devices can still go down from total_kw (≥ 0)
    room_up_kw: float  # how far they can still go up (≥ 0)
    # how far the total can still move within its range (total_window) for the target's trim
    target_room_down_kw: float
    target_room_up_kw: float
    # The part of a change of the total that the devices that follow take (the rest goes to devices off
    # their commands, which do not move): a trim beyond a limit is scaled up by it.
    following_share: float = 1.0


def update(trim: Trim, x: Loop) -> Trim:
    """The trims after this cycle's reading (a new Trim; `trim` is not changed)."""
    tol = x.tolerance_kw
    steady = (x.fresh and trim.total_kw is not None and abs(x.total_kw - trim.total_kw) <= tol
              and abs(x.converging_kw) <= tol)
    band = x.margin_kw + tol
    inside = x.tracking and -x.import_kw + band < x.target_kw < x.export_kw - band
    export, import_ = trim.export_kw, trim.import_kw
    # at a limit, or close: the limits' trims act there; a new target is the feedforward's to reach, and
    # the error integrated for the old one is not this one's
    same_aim = trim.aim_kw is not None and abs(x.target_kw - trim.aim_kw) <= tol
    target = trim.target_kw if inside and same_aim else 0.0
    if steady:
        share = max(x.following_share, MIN_SHARE)
        # what the meter shows is the last total's doing: as much of it as this cycle's total takes back
        # by itself is not the loop's
        moved = x.total_kw - (trim.total_kw or x.total_kw)
        beyond_export = x.pcc_kw - x.export_kw + min(moved, 0.0)
        beyond_import = -x.import_kw - x.pcc_kw - max(moved, 0.0)
        export += _step(beyond_export, x.export_kw - x.margin_kw - x.pcc_kw, x.room_down_kw, share)
        import_ += _step(beyond_import, x.pcc_kw + x.import_kw - x.margin_kw, x.room_up_kw, share)
        error = x.target_kw - x.pcc_kw
        if inside and abs(error) > tol and x.at_rest:
            target += (min(GAIN * error, x.target_room_up_kw) if error > 0
                       else max(GAIN * error, -x.target_room_down_kw))
    return Trim(max(export, 0.0), max(import_, 0.0), target, aim_kw=x.target_kw)


def _step(beyond_kw: float, within_kw: float, room_kw: float, share: float) -> float:
    """A limit trim's change: up by how far the meter is beyond the limit, over the share of it the
    devices that follow will take (no more than the devices have left to give); down by GAIN of how far
    it is within the limit less the margin; else none."""
    if beyond_kw > 0:
        return min(GAIN_BEYOND * beyond_kw / share, room_kw)
    if within_kw > 0:
        return -GAIN * within_kw
    return 0.0
