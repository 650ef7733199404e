"""Which devices follow their commands: a device that answers but does not follow keeps the site where it
is, whatever it is told (a firmware in local mode, a write accepted and never applied).

A device *deviates* when its output is off its last command by more than its tolerance in a way the
command does not explain: a battery off its setpoint, a PV above its limit, or below both its limit and
the power it says it has (below its limit alone is the sun's doing). A device that deviates for longer
than its expected response time (`DeviceReading.response_s`) without moving towards its command is *not
following*: the allocation leaves it out, so its output counts with the site load and the devices that
follow take its share; its command is re-sent every response time, brought towards its output as far as
the limits ask (allocation.retold: were it to follow at last, the PCC would jump by the difference); it
follows again, and gets its share back, once its output is within tolerance of that command and the command
is not within tolerance of where it was stuck (there, being at the command would prove nothing: such a
command is moved off it by twice the tolerance, the way the limits leave room for).

A device on its way to a new command (its output moved towards it since the last reading: a ramp, an
enter-service ramp after a reconnect) is *converging*: that part of the metered error goes away by
itself, and the closed loop (feedback.py) leaves it alone. A deviation that does not move is the loop's
to correct, at once, long before the device is declared not following (it is *drifting*). A following
device whose output moved by more than its tolerance since its last reading is *moving*: the meter does
not show the site at rest (a PV on its enter-service ramp reports the power it has as its output, so it
never deviates, yet it is still on its way).

Times are monotonic seconds. A stale reading (old) tells nothing new: its device's track is left as it
is; an offline device has none, nor has a device that says it is out of service (tripped, or waiting its
enter-service delay after a reconnect: its output is its state's, not a command it ignores).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.model import DeviceReading, SiteParams

# Of the device's rating: its tolerance, at least target_tolerance_kw. Inverters measure their own output to
# a few per cent; a device read that far above its limit is measuring, not disobeying.
FOLLOW_FRACTION = 0.05
MOVING_FRACTION = 0.002  # of the rating: an output that moved this much towards its command is on its way


@dataclass
class Track:
    p_kw: float | None = None  # the output at its last reading
    since: float | None = None  # monotonic time it began to deviate without moving; None otherwise
    following: bool = True
    resend_at: float | None = None  # when its command is next re-sent, while not following
    # while not following: the command it did not follow, and the output it kept meanwhile
    told_kw: float | None = None
    stuck_kw: float | None = None


@dataclass(frozen=True)
class Change:
    """A device that stopped or started following this cycle (for the audit log and the status)."""

    id: str
    following: bool
    p_kw: float
    command_kw: float


@dataclass(frozen=True)
class Following:
    not_following: frozenset[str]
    resend: frozenset[str]  # not-following devices whose command is re-sent this cycle
    told_kw: dict[str, float]  # by not-following device: the command it did not follow
    stuck_kw: dict[str, float]  # by not-following device: its output when it was found not following
    drifting: frozenset[str]  # still counted as following, off their command and not converging to it
    # What devices still converging to their commands add to the PCC now: the metered error they explain.
    converging_kw: float
    moving: frozenset[str] = frozenset()  # following devices whose output moved by more than their tolerance
    changes: tuple[Change, ...] = field(default=())


def tolerance_kw(d: DeviceReading, params: SiteParams) -> float:
    return max(params.target_tolerance_kw, FOLLOW_FRACTION * d.rated_kw)


def deviation_kw(d: DeviceReading, command_kw: float) -> float:
    """How far the device's output is off `command_kw` in a way the command does not explain (+ = it puts
    out more than told): for a PV, off the lower of its limit and its available power (a 70x inverter's
    available power is its output while under its limit: it never deviates below)."""
    if d.kind == "pv":
        return d.p_kw - max(0.0, min(command_kw, d.available_kw))
    return d.p_kw - min(max(command_kw, -d.max_charge_kw), max(d.available_kw, 0.0))


def track(tracks: dict[str, Track], devices: list[DeviceReading], commanded: dict[str, float],
          params: SiteParams, mono: float) -> Following:
    """Update `tracks` (the engine's, by device id) with this cycle's readings against the commands they
    were given last cycle."""
    online = {d.id for d in devices if d.online}
    for gone in [i for i in tracks if i not in online]:
        del tracks[gone]
    converging, changes, drifting, moving = 0.0, [], set(), set()
    for d in devices:
        if not d.online or d.kind not in ("pv", "battery") or d.id not in commanded:
            continue
        if not d.connected:
            tracks.pop(d.id, None)
            continue
        t = tracks.setdefault(d.id, Track())
        if d.stale:
            continue
        command = commanded[d.id]
        dev = deviation_kw(d, command)
        moved = 0.0 if t.p_kw is None else d.p_kw - t.p_kw
        towards = moved * dev < 0 and abs(moved) > MOVING_FRACTION * d.rated_kw
        t.p_kw = d.p_kw
        if t.following and abs(moved) > tolerance_kw(d, params):
            moving.add(d.id)
        tol = tolerance_kw(d, params)
        if abs(dev) <= tol:
            t.since = None
            # at a command within its tolerance of where it was stuck, being there proves nothing (the
            # command was brought there, allocation.retold): it follows again once it goes where told
            if not t.following and (t.stuck_kw is None or abs(command - t.stuck_kw) > tol):
                t.following, t.resend_at, t.told_kw, t.stuck_kw = True, None, None, None
                changes.append(Change(d.id, True, d.p_kw, command))
        elif towards or t.since is None:  # on its way, or it just began to deviate: give it its time
            t.since = mono
            if t.following:
                converging += dev
        elif t.following:
            drifting.add(d.id)
            if mono - t.since >= d.response_s:
                t.following, t.resend_at, t.told_kw, t.stuck_kw = False, mono, command, d.p_kw
                changes.append(Change(d.id, False, d.p_kw, command))
    resend = set()
    for dev_id, t in tracks.items():
        if not t.following and t.resend_at is not None and mono >= t.resend_at:
            resend.add(dev_id)
            response = next((d.response_s for d in devices if d.id == dev_id), params.comms_timeout_s)
            t.resend_at = mono + response
    not_following = frozenset(i for i, t in tracks.items() if not t.following)
    told = {i: t.told_kw for i, t in tracks.items() if not t.following and t.told_kw is not None}
    stuck = {i: t.stuck_kw for i, t in tracks.items() if not t.following and t.stuck_kw is not None}
    return Following(not_following, frozenset(resend), told, stuck, frozenset(drifting - not_following),
                     converging,
                     frozenset(moving), tuple(changes))
