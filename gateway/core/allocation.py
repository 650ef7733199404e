"""From a PCC target to device setpoints (PROTOCOL §5.5): the closed loop on the meter and the split.

Site load is not controlled, so the loop estimates it every cycle as Σ measured device power − metered PCC
power (anything uncontrolled, e.g. a device that stopped answering but still produces, lands in this
estimate and is compensated for, TDC-22) and asks the devices for PCC target + load.

Without a usable meter (offline or stale) the load is unknown and the gateway takes no load credit: the
device total stays within [−import limit, export limit], so export at the PCC can only be lower than the
limit (load ≥ 0). The import limit then cannot be guaranteed; the devices themselves never import more
than it.

PV available power is often an estimate (the 1547 models do not report it): an inverter held at its
estimate cannot show that the sun now gives more. So a PV that is not being curtailed gets its estimate
plus a probe (10 % of its rating at most), but never more than the room left below the export and
generation limits: if the sun does give more, the PCC rises by at most that room, and the next reading
raises the estimate.

The split: PV first up to its available power; the batteries discharge for the rest, or charge with what
PV would otherwise have to shed, within their capability and the load limit; then PV is curtailed.
Several PVs (or batteries) share in proportion to what each can do now, so none is asked for more than
it can give and an offline device's share falls to the others. Every online device is controlled, a
stale one too (with its last reading): it still takes writes, and leaving it uncommanded would let its
reversion timer expire and make the split jump whenever a reading is late. An offline device gets no
command; it keeps what it was doing until its reversion timer acts, and the meter sees it as load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from gateway.core.feedback import Trim
from gateway.core.limits import Bound, InForce
from gateway.core.model import DeviceCommand, DeviceReading


def controllable(devices: list[DeviceReading]) -> list[DeviceReading]:
    return [d for d in devices if d.online and d.kind in ("pv", "battery")]


def _up(d: DeviceReading) -> float:
    return max(0.0, d.available_kw)


def _down(d: DeviceReading) -> float:
    return max(0.0, d.max_charge_kw) if d.kind == "battery" else 0.0


@dataclass(frozen=True)
class DeviceRange:
    """What the controllable devices can do now, summed."""

    pv_kw: float  # PV available
    discharge_kw: float  # battery discharge available
    charge_kw: float  # battery charge available
    count: int

    @classmethod
    def of(cls, devices: list[DeviceReading]) -> DeviceRange:
        return cls(pv_kw=sum(_up(d) for d in devices if d.kind == "pv"),
                   discharge_kw=sum(_up(d) for d in devices if d.kind == "battery"),
                   charge_kw=sum(_down(d) for d in devices), count=len(devices))


def device_window(eff: InForce, dev: DeviceRange | None) -> tuple[Bound, Bound]:
    """Hard bounds of the device total: generation/load limits and, when known, device capability."""
    lo, hi = Bound(-eff.load.kw, eff.load.source), eff.generation
    if dev is not None:
        if dev.pv_kw + dev.discharge_kw < hi.kw:  # a tie keeps the LDC limit as the binding source
            hi = Bound(dev.pv_kw + dev.discharge_kw, "device_capacity")
        if -dev.charge_kw > lo.kw:
            lo = Bound(-dev.charge_kw, "device_capacity")
    return lo, hi


def total_window(load_kw: float | None, eff: InForce, dev: DeviceRange, margin_kw: float,
                 export_load_kw: float | None = None, trim: Trim | None = None) -> tuple[float, float]:
    """The range the devices' total may take: `margin_kw` inside the PCC limits, given the load, and within
    the hard bounds. `export_load_kw`: the load credited against the export limit, if not `load_kw` (see
    Engine.cycle); `trim`: the closed loop's corrections (feedback.py). The limits' trims move the whole
    range: the meter has shown that the PCC lands that much above (export trim) or below (import trim)
    where the estimate puts it, so both ends are that much off."""
    load = load_kw or 0.0
    export_load = load if export_load_kw is None else export_load_kw
    shift = (trim.import_kw - trim.export_kw) if trim else 0.0
    top, bottom = eff.export.kw - margin_kw, -eff.import_.kw + margin_kw
    if bottom > top:  # a band narrower than twice the margin (e.g. isolation, 0/0): aim at its middle
        top = bottom = (eff.export.kw - eff.import_.kw) / 2
    floor = bottom + load + shift
    # a smaller export credit never takes the total below what the import limit needs
    ceiling = max(top + export_load + shift, floor)
    lo, hi = device_window(eff, dev)
    return min(max(floor, lo.kw), hi.kw), min(max(ceiling, lo.kw), hi.kw)


def device_total(target_kw: float, load_kw: float | None, eff: InForce, dev: DeviceRange,
                 margin_kw: float, export_load_kw: float | None = None, trim: Trim | None = None) -> float:
    """The devices' total for a PCC target, within `total_window` (the target trim moves the aim)."""
    low, high = total_window(load_kw, eff, dev, margin_kw, export_load_kw, trim)
    want = target_kw + (load_kw or 0.0) + (trim.target_kw if trim else 0.0)
    return min(max(want, low), high)


PROBE_FRACTION = 0.1


def limit_room(total_kw: float, load_kw: float | None, eff: InForce, margin_kw: float) -> float:
    """How far the device total may rise before the PCC export or the generation limit would bind."""
    top = eff.export.kw - margin_kw + (load_kw or 0.0)
    return max(0.0, min(top, eff.generation.kw) - total_kw)


def limit_room_down(total_kw: float, load_kw: float | None, eff: InForce, margin_kw: float) -> float:
    """How far the device total may fall before the PCC import or the load limit would bind."""
    bottom = -eff.import_.kw + margin_kw + (load_kw or 0.0)
    return max(0.0, total_kw - max(bottom, -eff.load.kw))


def retold(devices: list[DeviceReading], told_kw: dict[str, float], stuck_kw: dict[str, float],
           tolerance_kw: dict[str, float], room_up_kw: float, room_down_kw: float) -> list[DeviceCommand]:
    """The commands of devices that do not follow (following.py): each is told the command it did not
    follow again, but no further from its output than the limits leave room for.

    The allocation counts such a device at its output, with the load, and the others take its share. Were
    it then to follow at last a command far from that output (back from local mode, a write applied late),
    the PCC would jump by the difference before the next cycle could answer: a PV stuck at 10 kW that had
    been told 219 kW took the PCC from 145 to 354 kW against a 150 kW limit. So the command is brought
    towards the output until the jump fits the room left below the export (and generation) limit and above
    the import (and load) limit, shared equally, so that all of them following at once still fits. A
    command that lands within its tolerance of where the device was stuck could not show that it follows
    again (following.py): it is moved off by twice the tolerance, towards the command it did not follow if
    the room allows, else the other way. Never beyond what the device can do now."""
    share_up, share_down = room_up_kw / max(len(devices), 1), room_down_kw / max(len(devices), 1)
    commands = []
    for d in devices:
        low = max(d.p_kw - share_down, -_down(d))
        high = min(d.p_kw + share_up, max(_up(d), d.rated_kw if d.kind == "pv" else 0.0))
        told = told_kw.get(d.id, d.p_kw)
        kw = min(max(told, low), high)
        stuck, tol = stuck_kw.get(d.id, d.p_kw), tolerance_kw.get(d.id, 0.0)
        if abs(kw - stuck) <= tol:
            towards = 1.0 if told >= stuck else -1.0
            probes = [stuck + towards * 2 * tol, stuck - towards * 2 * tol]
            kw = next((p for p in probes if low <= p <= high), kw)
        commands.append(DeviceCommand(d.id, kw, True))
    return commands


def allocate(total_kw: float, devices: list[DeviceReading], eff: InForce,
             room_kw: float = 0.0) -> list[DeviceCommand]:
    """Setpoints for the controllable `devices` that add up to `total_kw` (already within their bounds);
    `room_kw` (see `limit_room`) is what an uncurtailed PV may be allowed above its estimate."""
    pv_cap = min(sum(_up(d) for d in devices if d.kind == "pv"), eff.generation.kw)
    if total_kw >= pv_cap:
        pv, battery = pv_cap, total_kw - pv_cap
    else:
        charge = min(pv_cap - total_kw, sum(_down(d) for d in devices), eff.load.kw)
        pv, battery = total_kw + charge, -charge
    pv = max(pv, 0.0)  # float noise only: total_kw is within the device window
    pvs = [d for d in devices if d.kind == "pv"]
    batteries = [d for d in devices if d.kind == "battery"]
    commands = _split(pv, pvs, _up)
    if pvs and pv >= sum(_up(d) for d in pvs):  # not curtailed: let each PV show what more it has
        rated = sum(d.rated_kw for d in pvs) or 1.0
        gross = pv + max(battery, 0.0)  # the generation limit counts gross output
        probe = max(0.0, min(room_kw, eff.generation.kw - gross, PROBE_FRACTION * rated))
        commands = [DeviceCommand(c.id, min(max(d.rated_kw, c.p_kw), c.p_kw + probe * d.rated_kw / rated),
                                  c.connect) for c, d in zip(commands, pvs, strict=True)]
    commands += _split(battery, batteries, _up if battery >= 0 else _down)
    return commands


def _split(total_kw: float, devices: list[DeviceReading],
           capability: Callable[[DeviceReading], float]) -> list[DeviceCommand]:
    caps = [capability(d) for d in devices]
    whole = sum(caps)
    share = min(abs(total_kw) / whole, 1.0) if whole > 0 else 0.0
    sign = 1.0 if total_kw >= 0 else -1.0
    return [DeviceCommand(id=d.id, p_kw=sign * share * cap, connect=True)
            for d, cap in zip(devices, caps, strict=True)]


def zero_commands(devices: list[DeviceReading], disconnect: bool) -> list[DeviceCommand]:
    """disconnect / cease_to_energize: every online device goes to 0 kW (and opens)."""
    return [DeviceCommand(id=d.id, p_kw=0.0, connect=not disconnect) for d in controllable(devices)]


LDC_FREE = ("", "connection_agreement")  # the sources of a bound that the LDC did not set


def with_reversion(commands: list[DeviceCommand], eff: InForce,
                   devices: list[DeviceReading]) -> list[DeviceCommand]:
    """Each command with what its device may do once the gateway has stopped (`revert_kw`, PROTOCOL §6):
    0 under a disconnect or cease_to_energize; else, while an LDC limit (envelope, outage, hold, default
    envelope) bounds the export or the generation, the device's share of the tighter of the two in
    proportion to its rating. A site whose devices together stay within it stays within it at the PCC
    whatever its load does (load ≥ 0), so a gateway that dies cannot undo an LDC order."""
    if eff.zeroed_by:
        return [replace(c, revert_kw=0.0) for c in commands]
    caps = [b.kw for b in (eff.export, eff.generation) if b.source not in LDC_FREE]
    if not caps:
        return commands
    cap = max(0.0, min(caps))
    rated = {d.id: max(d.rated_kw, 0.0) for d in devices}
    total = sum(rated.get(c.id, 0.0) for c in commands)
    return [replace(c, revert_kw=cap * rated.get(c.id, 0.0) / total if total > 0 else 0.0)
            for c in commands]


def readings_time(reads: Sequence[tuple[float, float]]) -> float:
    """When to take the PCC against the sum of device readings taken at different times, from each
    reading's (time, how fast that device's output was moving, kW/s).

    Σ devices − PCC(t) is the load only if every device's output at its read time is its output at t:
    a steady device's is, whenever it was read, so t is the readings' time weighted by how fast each
    moves (right to first order while some ramp); the plain mean when none moves."""
    moving = sum(rate for _, rate in reads)
    if moving > 0:
        return sum(at * rate for at, rate in reads) / moving
    return sum(at for at, _ in reads) / len(reads)


def readings_spread(reads: Sequence[tuple[float, float]], t: float) -> float:
    """How far, at most (to first order), Σ device readings may be from the devices' output at `t`: each
    device's (read time, kW/s) rate times how long before or after `t` it was read. Nothing while the
    devices hold steady, whenever they were read; hundreds of kW on a large site whose readings are a
    second apart while every inverter ramps."""
    return sum(rate * abs(at - t) for at, rate in reads)


def low_estimate(recent: Sequence[float]) -> float:
    """The second lowest of a window of five load estimates (their low ends, see Engine.cycle); the
    lowest while there are three or fewer (after a start): the credit leans to the side that keeps the
    export within its limit."""
    return sorted(recent)[(len(recent) - 1) // 3]


def pcc_at(history: Sequence[tuple[float, float]], t: float) -> float:
    """The metered PCC power at time `t`, interpolated between the (time, kW) readings around it (the
    first or last one outside them)."""
    before = next((h for h in reversed(history) if h[0] <= t), history[0])
    after = next((h for h in history if h[0] >= t), history[-1])
    if after[0] <= before[0]:
        return before[1]
    return before[1] + (after[1] - before[1]) * (t - before[0]) / (after[0] - before[0])
