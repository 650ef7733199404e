"""What every simulated SunSpec device shares: its register map, reversion timers, faults and state."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.config import DeviceConfig
from gateway.south.sunspec_models import PointDef, Value, encode
from simulators.faults import BAD_SF, WIRE_FAULTS, BehaviourMode, check_bad_sf, check_mode, splice
from simulators.modbus_server import FAULT_MODES, FaultMode, ModbusEndpoint
from simulators.sunspec_map import SunSpecMap, map_quirks

# Models whose writable points a reboot puts back to their power-on values: the controller's limits,
# setpoints and commands live in volatile memory. Nameplate-like settings (702, 121) survive.
VOLATILE_MODELS = frozenset({123, 703, 704, 715, 802})

MANUFACTURER = "der-gateway"
SIM_VERSION = "0.1.0"

ENABLED = 1
DISABLED = 0

# The point types a measurement has (what the nan and garbage faults change): numbers, not enums,
# bitfields, scale factors or strings.
MEASURED_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64", "acc16", "acc32",
                            "acc64", "float32", "float64"})


@dataclass
class Reversion:
    """One SunSpec reversion timer (704 `*RvrtTms`, 123 `*_RvrtTms`).

    A write to any trigger point (the control, its enable or its timeout) restarts the timer with the
    timeout then in the map; 0 means no reversion. When it runs out, each target point takes its
    reversion value: the raw value of another point of the model (a name) or a constant.
    """

    model: int
    triggers: frozenset[str]
    timeout_point: str
    remaining_point: str | None
    revert_to: Mapping[str, str | int]
    deadline: float | None = field(default=None, init=False)
    # the seconds left as last put in the map: it changes once a second, and a put every physics step
    # of every device was a good part of a 1,000-device simulator's time
    _shown: int | None = field(default=None, init=False)

    def on_write(self, smap: SunSpecMap, touched: Iterable[tuple[int, str]], now: float) -> None:
        if any(mid == self.model and name in self.triggers for mid, name in touched):
            timeout = smap.get(self.model, self.timeout_point) or 0
            self.deadline = now + float(timeout) if timeout else None
            self._show(smap, now)

    def tick(self, smap: SunSpecMap, now: float) -> None:
        if self.deadline is not None and now >= self.deadline:
            for target, source in self.revert_to.items():
                value = smap.get(self.model, source) if isinstance(source, str) else source
                smap.put(self.model, target, value)
            self.deadline = None
        self._show(smap, now)

    def cancel(self, smap: SunSpecMap) -> None:
        self.deadline = None
        self._show(smap, 0.0)

    def _show(self, smap: SunSpecMap, now: float) -> None:
        if self.remaining_point is not None:
            left = 0 if self.deadline is None else max(0, math.ceil(self.deadline - now))
            if left != self._shown:
                smap.put(self.model, self.remaining_point, left)
                self._shown = left


def common_model(cfg: DeviceConfig, model: str, options: str) -> dict[str, Value | None]:
    """Model 1: who the device is. DA (RW in the model) is locked: the unit id does not change."""
    return {
        "Mn": MANUFACTURER,
        "Md": model,
        "Opt": options,
        "Vr": SIM_VERSION,
        "SN": f"SIM-{cfg.id}",
        "DA": cfg.unit_id,
    }


def put_balanced(smap: SunSpecMap, mid: int, total: str, phases: Sequence[str], value: float) -> None:
    """A total and its per-phase parts of a balanced three-phase quantity, whose raw values add up."""
    raw = smap.raw_for(mid, total, value)
    smap.put(mid, total, raw)
    share = int(raw / len(phases))
    parts = [share] * (len(phases) - 1) + [raw - share * (len(phases) - 1)]
    for name, part in zip(phases, parts, strict=True):
        smap.put(mid, name, part)


def power_factor(p_kw: float, q_kvar: float) -> float:
    """cos φ with the sign of the active power (SunSpec 701); 1 at no load."""
    s = math.hypot(p_kw, q_kvar)
    return 1.0 if s < 1e-6 else p_kw / s


class SunSpecDevice:
    """A simulated device: a SunSpec register map served on Modbus, stepped by the site's physics loop.

    Subclasses build the map, implement `step()` (one physics step of `physics.STEP_S`, then refresh
    the measurement registers) and read their controls from the map, which is the single source of
    truth for what a controller wrote.
    """

    kind: ClassVar[str]
    # the comms faults of its endpoint, and what the device itself can do wrong (`simulators.faults`)
    fault_modes: ClassVar[tuple[str, ...]] = (*FAULT_MODES, "stuck", "nan", "bad_sf", "garbage")
    # the models whose read-only numbers are measurements (the nan and garbage faults change them)
    measurement_models: tuple[int, ...]

    def __init__(
        self,
        cfg: DeviceConfig,
        models: Mapping[int, Mapping[str, Value | None]],
        reversions: Iterable[Reversion] = (),
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.map = SunSpecMap(models, locked={(1, "DA")}, **map_quirks(cfg.sim.quirks))
        self.reversions = list(reversions)
        self.writes_at: deque[float] = deque(maxlen=16)  # when its registers were last written
        self._power_on = {
            key: self.map.get(*key) for key in self.map.writable_points() if key[0] in VOLATILE_MODELS
        }
        self._endpoint: ModbusEndpoint | None = None
        self._behaviour: BehaviourMode = "none"
        self._bad_sf = BAD_SF
        self._rng = random.Random(cfg.id)  # garbage: a repeatable draw for each device
        self._started = time.monotonic()

    # --- RegisterBank (served by the endpoint) ------------------------------------------------------

    @property
    def base(self) -> int:
        return self.map.base

    @property
    def end(self) -> int:
        return self.map.end

    def read(self, address: int, count: int) -> list[int]:
        regs = self.map.read(address, count)
        if self._behaviour in WIRE_FAULTS:
            for start, point in self._faulty_points():
                splice(regs, address, start, self._bad_words(point))
        return regs

    def write(self, address: int, values: list[int]) -> list[int]:
        applied, touched = self.map.write(address, values)
        now = time.monotonic()
        for r in self.reversions:
            r.on_write(self.map, touched, now)
        if touched:  # wall clock, so a benchmark in another process can time a command to its write
            self.writes_at.append(time.time())
        return applied

    # --- faults -------------------------------------------------------------------------------------

    def attach(self, endpoint: ModbusEndpoint) -> None:
        endpoint.add_unit(self.cfg.unit_id, self)
        self._endpoint = endpoint

    @property
    def fault(self) -> FaultMode | BehaviourMode:
        if self._behaviour != "none":
            return self._behaviour
        return "none" if self._endpoint is None else self._endpoint.fault_mode(self.cfg.unit_id)

    @property
    def stuck(self) -> bool:
        """The output does not follow the controls written since the fault was set."""
        return self._behaviour == "stuck"

    def set_fault(
        self, mode: str, *, code: int = 4, delay_s: float = 2.0, duration_s: float = 3.0, sf: int = BAD_SF
    ) -> None:
        """Make the device misbehave (or stop misbehaving with mode 'none'); one fault at a time.

        silent: connections are accepted, requests never answered. exception: every request is
        answered with exception `code`. slow: every answer comes `delay_s` late. reboot: every
        connection on the device's port is dropped (those of devices sharing the port too), the port
        refuses connections for `duration_s`, this device's volatile registers (limits, setpoints,
        commands) return to their power-on values and its pending reversions are cancelled; then it
        serves again, fault-free. Physics keeps running throughout: only the comms reboot.
        stuck (not the meter): answers and accepts writes, but the output keeps following the controls
        in force when the fault was set. nan: the measurements read SunSpec's not-implemented
        sentinel. bad_sf: every scale factor reads `sf`. garbage: the measurements read random words.
        (`simulators.faults`)
        """
        if self._endpoint is None:
            raise RuntimeError(f"{self.id} is not being served")
        check_mode(mode, self.fault_modes, f"a simulated {self.kind}")
        if mode in ("stuck", *WIRE_FAULTS):
            self._bad_sf = check_bad_sf(sf)
            self._endpoint.inject(self.cfg.unit_id, "none")
            if mode == "stuck":
                self._hold_controls()
            self._behaviour = mode  # type: ignore[assignment]  # checked against fault_modes
            return
        self._endpoint.inject(self.cfg.unit_id, mode, code=code, delay_s=delay_s, duration_s=duration_s,
                              on_reboot=self.reset_volatile)
        self._behaviour = "none"

    def _hold_controls(self) -> None:
        """Take the controls in force now from the map: a stuck device's physics keeps them."""

    def _faulty_points(self) -> list[tuple[int, PointDef]]:
        """(address, point) of every point the wire fault in force changes."""
        if self._behaviour == "bad_sf":
            return [(a, p) for _, _, a, p in self.map.points() if p.type == "sunssf"]
        return [(a, p) for mid, name, a, p in self.map.points()
                if mid in self.measurement_models and p.access == "R" and p.type in MEASURED_TYPES
                and name not in ("ID", "L")]  # the model header stays: the map is still found

    def _bad_words(self, point: PointDef) -> list[int]:
        if self._behaviour == "bad_sf":
            return encode(point, self._bad_sf)
        if self._behaviour == "nan":
            return encode(point, None)
        return [self._rng.getrandbits(16) for _ in range(point.size)]

    def reset_volatile(self) -> None:
        for (mid, name), raw in self._power_on.items():
            self.map.put(mid, name, raw)
        for r in self.reversions:
            r.cancel(self.map)

    # --- physics ------------------------------------------------------------------------------------

    def step(self, now: float) -> None:
        for r in self.reversions:
            r.tick(self.map, now)

    def heartbeat(self, now: float) -> int:
        """Seconds since start: SunSpec heartbeats count up once a second."""
        return int(now - self._started)

    # --- what tests and the live table see ----------------------------------------------------------

    @property
    def p_kw(self) -> float:
        raise NotImplementedError

    @property
    def q_kvar(self) -> float:
        raise NotImplementedError

    @property
    def soc_pct(self) -> float | None:
        return None

    @property
    def connected(self) -> bool:
        return True

    @property
    def active_limit_pct(self) -> float | None:
        """The active power limit in force, in % of the rating; None when no limit is enabled."""
        return None

    def state(self) -> dict[str, Any]:
        return device_state(self)


def device_state(dev: Any) -> dict[str, Any]:
    """What the live table and the control socket show of a simulated Modbus device (SunSpec or not)."""
    return {
        "kind": dev.kind,
        "p_kw": round(dev.p_kw, 3),
        "q_kvar": round(dev.q_kvar, 3),
        "soc_pct": None if dev.soc_pct is None else round(dev.soc_pct, 3),
        "connected": dev.connected,
        "active_limit_pct": None if dev.active_limit_pct is None else round(dev.active_limit_pct, 3),
        "fault": dev.fault,
        "writes_at": list(dev.writes_at),
    }
