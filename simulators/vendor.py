"""A simulated device without SunSpec, its register map laid out from a vendor profile.

The profile (`device_profiles/vendor_<name>.toml`) is the only description of the map: the simulator
places every register where the profile says and encodes values with the gateway's own codec
(`gateway.south.vendor_profile`), so a simulated device can never disagree with its profile. Like a
real device, it answers exception 2 for an address its map does not have (the holes between mapped
registers that the profile's `max_read_gap` lets a reader span are served, as zeros), ignores writes
to read-only registers, and serves input registers (FC4) apart from holding registers (FC3).

Physics is the shared one (`simulators.physics`): a PV inverter follows the sun under the active power
limit and connect command written to it; a battery follows its W setpoint within SoC limits; a meter
shows what the site computes at the PCC. Where the profile has a reversion timer, the power command
drops back to its power-on value (no limit, or 0 W) that many seconds after its last write.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import DeviceConfig
from gateway.south.profile import PROFILES_DIR
from gateway.south.vendor_profile import (
    RAW_RANGES,
    Register,
    TableName,
    VendorProfile,
    decode,
    encode,
    load_vendor_profile,
    scale_of,
    to_raw,
)
from simulators.der_models import ES_DELAY_S, ES_RAMP_S, V_NOM_LN
from simulators.device import device_state
from simulators.faults import BAD_SF, WIRE_FAULTS, BehaviourMode, check_bad_sf, check_mode, splice
from simulators.modbus_server import FAULT_MODES, BankError, FaultMode, ModbusEndpoint
from simulators.physics import F_NOM, BatteryPhysics, InverterPhysics, LightInverterPhysics

# What a register with a unit can hold at most, to choose the exponent of a scale register.
_UNIT_MAX = {"%": 100.0, "V": 1000.0, "Hz": 100.0, "s": 86400.0}
# The [read] quantities that are measurements (the nan and garbage faults change them), not ratings.
_MEASURED = ("p_w", "q_var", "hz", "v", "available_w", "soc_pct")


class VendorRegisters:
    """The register image of one vendor device: holding and input tables, laid out from its profile.
    It is what the endpoint serves (a `RegisterBank`); `on_write` is told which registers a write set,
    and `on_read` may change what a read answers (table, first address, the registers) in place."""

    def __init__(self, profile: VendorProfile, on_write: Callable[[set[str]], None] | None = None) -> None:
        self.profile = profile
        self._on_write = on_write
        self.on_read: Callable[[TableName, int, list[int]], None] | None = None
        self.tables: dict[TableName, dict[int, int]] = {"holding": {}, "input": {}}
        self._writable: set[int] = set()
        self._owner: dict[int, str] = {}  # holding address -> register name
        for name, reg in profile.registers.items():
            for a in range(reg.address, reg.address + reg.size):
                self.tables[reg.table][a] = 0
                if reg.table == "holding":
                    self._owner[a] = name
                    if reg.writable:
                        self._writable.add(a)
        for table in self.tables.values():  # the holes a reader may span exist on the device
            mapped = sorted(table)
            for a, b in itertools.pairwise(mapped):
                if 1 < b - a <= profile.max_read_gap + 1:
                    table.update(dict.fromkeys(range(a + 1, b), 0))
        every = [a for table in self.tables.values() for a in table]
        self.base = min(every)
        self.end = max(every) + 1

    def _served(self, table: TableName, address: int, count: int) -> dict[int, int]:
        regs = self.tables[table]
        if any(a not in regs for a in range(address, address + count)):
            raise BankError()  # exception 2: not an address of this device
        return regs

    def read(self, address: int, count: int, table: TableName = "holding") -> list[int]:
        regs = self._served(table, address, count)
        out = [regs[a] for a in range(address, address + count)]
        if self.on_read is not None:
            self.on_read(table, address, out)
        return out

    def read_input(self, address: int, count: int) -> list[int]:
        return self.read(address, count, "input")

    def write(self, address: int, values: list[int]) -> list[int]:
        """Apply a Modbus write; read-only registers keep their value. Returns the registers as they
        now are, and tells `on_write` the names of the writable registers the write set."""
        regs = self._served("holding", address, len(values))
        touched: set[str] = set()
        for a, v in zip(range(address, address + len(values)), values, strict=True):
            if a in self._writable:
                regs[a] = v
                touched.add(self._owner[a])
        if touched and self._on_write is not None:
            self._on_write(touched)
        return [regs[a] for a in range(address, address + len(values))]

    def raw(self, name: str) -> int | float | str:
        reg = self.profile.registers[name]
        words = [self.tables[reg.table][a] for a in range(reg.address, reg.address + reg.size)]
        return decode(reg, words, self.profile.order(reg))

    def put_raw(self, name: str, raw: int | float | str) -> None:
        reg = self.profile.registers[name]
        if reg.type in RAW_RANGES:  # what the type cannot hold is clamped, as a device saturates
            lo, hi = RAW_RANGES[reg.type]
            raw = max(lo, min(hi, raw))  # type: ignore[type-var]
        words = encode(reg, raw, self.profile.order(reg))
        for a, w in zip(range(reg.address, reg.address + reg.size), words, strict=True):
            self.tables[reg.table][a] = w


class VendorDevice:
    """A simulated PV inverter, battery or meter speaking its vendor's Modbus map."""

    def __init__(
        self, cfg: DeviceConfig, *, irradiance_pu: float = 0.0, max_kw: float | None = None,
        profiles_dir: Path = PROFILES_DIR,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.kind = cfg.kind
        self.profile = load_vendor_profile(cfg.profile, cfg.kind, profiles_dir)
        self.regs = VendorRegisters(self.profile, self._on_write)
        self.rated_kw = max_kw if cfg.kind == "meter" and max_kw else cfg.sim.rated_kw
        self.irradiance_pu = irradiance_pu
        self.writes_at: deque[float] = deque(maxlen=16)
        self._endpoint: ModbusEndpoint | None = None
        self._exponents = self._choose_exponents()
        for name, exponent in self._exponents.items():
            self.regs.put_raw(name, exponent)
        self._physics: InverterPhysics | LightInverterPhysics | BatteryPhysics | None = None
        sim = cfg.sim
        if cfg.kind == "pv":
            physics = LightInverterPhysics if sim.physics == "light" else InverterPhysics
            self._physics = physics(self.rated_kw, sim.response_time_s, ES_DELAY_S, ES_RAMP_S)
        elif cfg.kind == "battery":
            self._physics = BatteryPhysics(
                self.rated_kw, sim.capacity_kwh, sim.initial_soc_pct, sim.soc_min_pct, sim.soc_max_pct,
                sim.response_time_s, ES_DELAY_S, ES_RAMP_S,
            )
        self.p_kw = 0.0  # output (a meter: the PCC's net power), positive = into the grid / export
        self.q_kvar = 0.0
        self._permit = True
        self._deadline: float | None = None  # when the power command reverts
        self._behaviour: BehaviourMode = "none"
        # stuck: the (W command, permit) in force when the fault was set, which the physics keeps
        self._held: tuple[float | None, bool] | None = None
        self._bad_sf = BAD_SF
        self._rng = random.Random(cfg.id)  # garbage: a repeatable draw for each device
        self.regs.on_read = self._on_read
        if self.profile.power is not None:  # powered on: no limit (PV), idle (battery), nothing enabled
            pc = self.profile.power
            no_limit = 100.0 if pc.unit == "pct_of_rated" else self.rated_kw * 1000.0
            self._put(pc.reg, no_limit if cfg.kind == "pv" else 0.0)
            if pc.enable is not None:
                self.regs.put_raw(pc.enable.reg, pc.enable.off)
        self._power_on = {n: self.regs.raw(n) for n, r in self.profile.registers.items() if r.writable}
        self.step(time.monotonic())

    def _choose_exponents(self) -> dict[str, int]:
        """An exponent for each scale register, so that every register using it holds its range."""
        out: dict[str, int] = {}
        for reg in self.profile.registers.values():
            if reg.scale_register is None:
                continue
            top = _UNIT_MAX.get(reg.unit, 1.5 * self.rated_kw * 1000.0)
            hi = RAW_RANGES.get(reg.type, (0, 0x7FFF))[1]
            exponent = -2  # a resolution of 1/100 where the type allows
            while top / 10.0**exponent > hi:
                exponent += 1
            out[reg.scale_register] = max(out.get(reg.scale_register, exponent), exponent)
        return out

    # --- engineering values -------------------------------------------------------------------------

    def _scale(self, reg: Register) -> float:
        exponent = self._exponents.get(reg.scale_register) if reg.scale_register else None
        scale = scale_of(reg, exponent)
        assert scale is not None
        return scale

    def _put(self, name: str, value: float) -> None:
        reg = self.profile.registers[name]
        self.regs.put_raw(name, to_raw(reg, value, self._scale(reg)))

    def _get(self, name: str) -> float:
        raw = self.regs.raw(name)
        assert not isinstance(raw, str)
        return float(raw) * self._scale(self.profile.registers[name])

    def _publish(self, field: str, value: float | None) -> None:
        name = getattr(self.profile.read, field)
        if name is not None and value is not None:
            self._put(name, value)

    # --- what a write to the served registers does -------------------------------------------------

    def _on_write(self, touched: set[str]) -> None:
        now = time.monotonic()
        self.writes_at.append(time.time())  # wall clock, as the SunSpec simulators keep it
        pc, cc = self.profile.power, self.profile.connect
        triggers = set() if pc is None else {pc.reg, pc.reversion_timer, pc.enable.reg if pc.enable else None}
        if pc is not None and pc.reversion_timer is not None and touched & triggers:
            timeout = self._get(pc.reversion_timer)
            self._deadline = now + timeout if timeout > 0 else None
        if cc is not None:
            for permit, cmd in ((False, cc.off), (True, cc.on)):
                if cmd.reg in touched and self.regs.raw(cmd.reg) == cmd.value:
                    self._permit = permit

    # --- faults -------------------------------------------------------------------------------------

    def attach(self, endpoint: ModbusEndpoint) -> None:
        endpoint.add_unit(self.cfg.unit_id, self.regs)
        self._endpoint = endpoint

    @property
    def fault_modes(self) -> tuple[str, ...]:
        """The endpoint's comms faults, `stuck` for a device that takes commands, `nan` and `garbage`,
        and `bad_sf` for a map with scale registers."""
        return (*FAULT_MODES, *(["stuck"] if self.profile.power else []), "nan", "garbage",
                *(["bad_sf"] if self._scale_registers else []))

    @property
    def fault(self) -> FaultMode | BehaviourMode:
        if self._behaviour != "none":
            return self._behaviour
        return "none" if self._endpoint is None else self._endpoint.fault_mode(self.cfg.unit_id)

    def set_fault(self, mode: str, *, code: int = 4, delay_s: float = 2.0, duration_s: float = 3.0,
                  sf: int = BAD_SF) -> None:
        """As `simulators.device.SunSpecDevice.set_fault`; a reboot forgets the commands written. nan:
        the measurement registers read NaN (float32) or their type's largest value (integers)."""
        if self._endpoint is None:
            raise RuntimeError(f"{self.id} is not being served")
        check_mode(mode, self.fault_modes, f"a simulated {self.kind} (profile {self.cfg.profile!r})")
        if mode in ("stuck", *WIRE_FAULTS):
            self._bad_sf = check_bad_sf(sf)
            self._endpoint.inject(self.cfg.unit_id, "none")
            self._held = (self._command_w(), self._permit) if mode == "stuck" else None
            self._behaviour = mode  # type: ignore[assignment]  # checked against fault_modes
            return
        self._endpoint.inject(self.cfg.unit_id, mode, code=code, delay_s=delay_s, duration_s=duration_s,
                              on_reboot=self.reset_volatile)
        self._behaviour, self._held = "none", None

    @property
    def _scale_registers(self) -> list[str]:
        return sorted({r.scale_register for r in self.profile.registers.values() if r.scale_register})

    def _on_read(self, table: TableName, address: int, regs: list[int]) -> None:
        """A wire fault changes what a read answers, never the registers themselves."""
        if self._behaviour not in WIRE_FAULTS:
            return
        if self._behaviour == "bad_sf":
            names = self._scale_registers
        else:
            names = [n for f in _MEASURED if (n := getattr(self.profile.read, f)) is not None]
        for name in names:
            reg = self.profile.registers[name]
            if reg.table == table:
                splice(regs, address, reg.address, self._bad_words(reg))

    def _bad_words(self, reg: Register) -> tuple[int, ...] | list[int]:
        order = self.profile.order(reg)
        if self._behaviour == "bad_sf":
            return encode(reg, self._bad_sf, order)
        if self._behaviour == "nan":
            return encode(reg, float("nan") if reg.type == "float32" else RAW_RANGES[reg.type][1], order)
        return [self._rng.getrandbits(16) for _ in range(reg.size)]

    def reset_volatile(self) -> None:
        for name, raw in self._power_on.items():
            self.regs.put_raw(name, raw)
        self._deadline = None
        self._permit = True

    # --- physics ------------------------------------------------------------------------------------

    def update(self, p_kw: float, q_kvar: float) -> None:
        """A meter: the net power at the PCC (positive = export), as the site computes it."""
        self.p_kw, self.q_kvar = p_kw, q_kvar

    def step(self, now: float) -> None:
        pc = self.profile.power
        if pc is not None and self._deadline is not None and now >= self._deadline:
            self.regs.put_raw(pc.reg, self._power_on[pc.reg])  # the command lapses
            self._deadline = None
        ph = self._physics
        command_w, permit = self._controls()
        if isinstance(ph, BatteryPhysics):
            ph.set_demand_kw(0.0 if command_w is None else self.profile.sign * command_w / 1000)
        elif ph is not None:
            limit = self._limit_pct(command_w)
            ph.set_available_kw(self.irradiance_pu * self.rated_kw)
            ph.set_limit(None if limit is None else limit / 100.0)
        if ph is not None:
            ph.set_permit_service(permit)
            ph.step()
            self.p_kw, self.q_kvar = ph.p_kw, ph.q_kvar
        self._publish_all()

    def _controls(self) -> tuple[float | None, bool]:
        """(W command, permit service) the physics follows: as written, or as held by a stuck fault."""
        return self._held if self._held is not None else (self._command_w(), self._permit)

    def _command_w(self) -> float | None:
        """The W command in force (device sign), or None when none is enabled."""
        pc = self.profile.power
        if pc is None or (pc.enable is not None and self.regs.raw(pc.enable.reg) != pc.enable.on):
            return None
        value = self._get(pc.reg)
        return value * self.rated_kw * 10.0 if pc.unit == "pct_of_rated" else value

    def _publish_all(self) -> None:
        sign = self.profile.sign
        rated_w = self.rated_kw * 1000.0
        self._publish("p_w", sign * self.p_kw * 1000.0)
        self._publish("q_var", sign * self.q_kvar * 1000.0)
        self._publish("hz", F_NOM)
        self._publish("v", V_NOM_LN)
        self._publish("v_nominal", V_NOM_LN)
        if self.kind != "meter":
            self._publish("rated_w", rated_w)
            self._publish("max_charge_w", rated_w)
            self._publish("max_discharge_w", rated_w)
        if self.kind == "pv":
            self._publish("available_w", min(self.irradiance_pu, 1.0) * rated_w)
        if isinstance(self._physics, BatteryPhysics):
            self._publish("soc_pct", self._physics.soc_pct)
            self._publish("soc_min_pct", self.cfg.sim.soc_min_pct)
            self._publish("soc_max_pct", self.cfg.sim.soc_max_pct)
        status = self.profile.read.connected
        if status is not None:
            off = next(v for v in range(len(status.true_if) + 1) if v not in status.true_if)
            self.regs.put_raw(status.reg, status.true_if[0] if self.connected else off)

    # --- what tests and the live table see (and p_kw, q_kvar) -------------------------------------

    @property
    def soc_pct(self) -> float | None:
        return self._physics.soc_pct if isinstance(self._physics, BatteryPhysics) else None

    @property
    def connected(self) -> bool:
        return self._physics is None or self._physics.status != "off"

    @property
    def active_limit_pct(self) -> float | None:
        """PV: the active power limit in force, % of the rating; None when there is none."""
        return self._limit_pct(self._controls()[0]) if self.kind == "pv" else None

    def _limit_pct(self, w: float | None) -> float | None:
        if w is None:
            return None
        pct = 100.0 * w / (self.rated_kw * 1000.0)
        return None if pct >= 100.0 - 1e-9 else pct

    def state(self) -> dict[str, Any]:
        return device_state(self)
