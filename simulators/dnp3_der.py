"""A simulated PV inverter (or plant controller) on DNP3: the AN2018-001 / IEEE 1815.2 points a gateway
needs, served by dnp3py, with the same OpenDER physics as the SunSpec inverter (`simulators/inverter.py`).

Points (indices and default event classes from shared/reference/an2018/; value = raw × unit):
  AI4   nameplate active power, W          AI29  reference voltage, 0.1 V      AI43  available power, W
  AI61  connect reversion timeout, s       AI145 AP limit reversion timeout, s AI149 AP limit setpoint, 0.1 %
  AI536 frequency, mHz                     AI537 active power, W (+ = gen.)    AI541 reactive power, var
  AI553 mean L-L voltage, 0.1 V
  BI19  connected and generating           BI23  connect switch closed         BI69  AP limit mode enabled
  AO17  connect/disconnect reversion timeout, s (0: none)
  AO85  AP limit reversion timeout, s (0: none)    AO88 AP limit setpoint, 0.1 % of AI4 (0..1000)
  BO5   connect switch: ON = closed (connect), OFF = open (cease to energize at once)
  BO17  AP limit mode: ON = the output is capped at AO88
Reversion (AN2018: a timeout per mode, no reversion value): when AO85 seconds pass without a write to
AO85, AO88 or BO17, the limit mode turns off (full output); when AO17 seconds pass without a write to
AO17 or BO5, the switch goes back to its default, closed. A stuck device (fault "stuck") takes commands
and reads them back, but its output keeps the limit and switch it had; faults "nan" and "garbage" change
what the measurements (AI43, AI536, AI537, AI541, AI553) show: flagged OVER_RANGE at 2^31 - 1, or random
int32 values. A reboot (fault "reboot") drops the link and resets these volatile settings to their
power-on values: limit off at 100 %, no reversion,
switch closed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import Any

from gateway.config import DeviceConfig
from simulators.der_models import ES_DELAY_S, ES_RAMP_S
from simulators.dnp3_stack import OutstationServer, PointSpec
from simulators.faults import check_mode
from simulators.physics import F_NOM, V_NOM_LL, InverterPhysics, PhysicsOutputs

AI_RATED, AI_V_REF, AI_AVAILABLE, AI_CONNECT_REVERSION, AI_REVERSION, AI_LIMIT = 4, 29, 43, 61, 145, 149
AI_HZ, AI_W, AI_VAR, AI_V = 536, 537, 541, 553
BI_GENERATING, BI_SWITCH_CLOSED, BI_LIMIT_ENABLED = 19, 23, 69
AO_CONNECT_REVERSION, AO_REVERSION, AO_LIMIT = 17, 85, 88
BO_CONNECT, BO_LIMIT = 5, 17
POINTS = PointSpec(
    binary_inputs={BI_GENERATING: 2, BI_SWITCH_CLOSED: 2, BI_LIMIT_ENABLED: 2},
    analog_inputs={AI_RATED: 3, AI_V_REF: 2, AI_AVAILABLE: 2, AI_CONNECT_REVERSION: 2, AI_REVERSION: 2,
                   AI_LIMIT: 2, AI_HZ: 3, AI_W: 3, AI_VAR: 3, AI_V: 1},
    binary_outputs=(BO_CONNECT, BO_LIMIT),
    analog_outputs={AO_CONNECT_REVERSION: (0, 2**31 - 1), AO_REVERSION: (0, 2**31 - 1), AO_LIMIT: (0, 1000)},
)
FULL = 1000  # AO88 at power-on: 100.0 %
FAULT_MODES = ("none", "silent", "reboot", "stuck", "nan", "garbage")
MEASURED = (AI_W, AI_VAR, AI_HZ, AI_V, AI_AVAILABLE)  # what the nan and garbage faults change
INT32_MAX = 2**31 - 1  # g30v1's largest value: what an over-range point shows


def _deadline(timeout_s: float) -> float | None:
    """When a reversion timer (re)started now runs out; None for 0, no reversion."""
    return time.monotonic() + timeout_s if timeout_s else None


class Dnp3PvInverter(PhysicsOutputs):
    kind = "pv"

    def __init__(self, cfg: DeviceConfig, irradiance_pu: float) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.rated_kw = cfg.sim.rated_kw
        self.irradiance_pu = irradiance_pu
        self.physics = InverterPhysics(self.rated_kw, cfg.sim.response_time_s, ES_DELAY_S, ES_RAMP_S)
        self.server = OutstationServer(host=cfg.host, port=cfg.port, address=cfg.outstation_address,
                                       master_address=cfg.master_address, points=POINTS,
                                       on_binary=self._on_binary, on_analog=self._on_analog)
        self.writes_at: deque[float] = deque(maxlen=16)  # when a command last arrived (wall clock)
        self._reboot: asyncio.Task[None] | None = None
        # stuck: the (limit enabled, AO88 raw, switch closed) in force when the fault was set
        self._held: tuple[bool, float, bool] | None = None
        self._wire_fault: str | None = None  # nan or garbage: what the measurements show
        self._rng = random.Random(cfg.id)
        self._reset_volatile()
        self.step(time.monotonic())  # publish the first measurements before anyone can read

    def _reset_volatile(self) -> None:
        self.limit_enabled = False
        self.limit_raw = float(FULL)
        self.reversion_s = 0.0
        self.switch_closed = True
        self.connect_reversion_s = 0.0
        self._deadline: float | None = None
        self._connect_deadline: float | None = None

    # --- commands (from the outstation, on the loop) -------------------------------------------------

    def _on_binary(self, index: int, on: bool) -> None:
        if index == BO_LIMIT:
            self.limit_enabled = on
            self._deadline = _deadline(self.reversion_s)
        else:
            self.switch_closed = on
            self._connect_deadline = _deadline(self.connect_reversion_s)
        self._commanded()

    def _on_analog(self, index: int, value: float) -> None:
        if index == AO_CONNECT_REVERSION:
            self.connect_reversion_s = value
            self._connect_deadline = _deadline(value)
        else:
            if index == AO_LIMIT:
                self.limit_raw = value
            else:
                self.reversion_s = value
            self._deadline = _deadline(self.reversion_s)
        self._commanded()

    def _commanded(self) -> None:
        self.writes_at.append(time.time())
        self._publish()  # read-backs follow a setting at once, not at the next physics step

    # --- physics ------------------------------------------------------------------------------------

    def step(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline:
            self.limit_enabled, self._deadline = False, None
        if self._connect_deadline is not None and now >= self._connect_deadline:
            self.switch_closed, self._connect_deadline = True, None  # back to its default
        enabled, raw, closed = self._controls()
        ph = self.physics
        ph.set_available_kw(self.irradiance_pu * self.rated_kw)
        ph.set_limit(raw / FULL if enabled else None)
        ph.set_permit_service(closed)
        ph.step()
        self._publish()

    def _controls(self) -> tuple[bool, float, bool]:
        """(limit enabled, AO88 raw, switch closed) the physics follows: as commanded, or as held by a
        stuck fault."""
        return self._held or (self.limit_enabled, self.limit_raw, self.switch_closed)

    def _publish(self) -> None:
        s = self.server
        p_w = self.physics.p_kw * 1000.0
        analogs = {
            AI_RATED: self.rated_kw * 1000.0, AI_V_REF: V_NOM_LL * 10, AI_V: V_NOM_LL * 10,
            AI_HZ: F_NOM * 1000,
            AI_AVAILABLE: min(self.irradiance_pu, 1.0) * self.rated_kw * 1000.0, AI_W: p_w,
            AI_VAR: self.physics.q_kvar * 1000.0, AI_REVERSION: self.reversion_s, AI_LIMIT: self.limit_raw,
            AI_CONNECT_REVERSION: self.connect_reversion_s,
        }
        for index, value in analogs.items():
            if index in MEASURED and self._wire_fault == "nan":
                s.set_analog(index, INT32_MAX, over_range=True)
            elif index in MEASURED and self._wire_fault == "garbage":
                s.set_analog(index, self._rng.randint(-INT32_MAX - 1, INT32_MAX))
            else:
                s.set_analog(index, round(value))
        s.set_analog(AO_LIMIT, self.limit_raw)
        s.set_analog(AO_REVERSION, self.reversion_s)
        s.set_analog(AO_CONNECT_REVERSION, self.connect_reversion_s)
        s.set_binary(BI_SWITCH_CLOSED, self.switch_closed)
        s.set_binary(BI_LIMIT_ENABLED, self.limit_enabled)
        s.set_binary(BI_GENERATING, self.connected and p_w > 0)
        s.set_binary(BO_CONNECT, self.switch_closed)
        s.set_binary(BO_LIMIT, self.limit_enabled)

    # --- lifecycle and faults -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        if self._reboot is not None:
            self._reboot.cancel()
        await self.server.stop()

    @property
    def fault(self) -> str:
        if self._reboot is not None and not self._reboot.done():
            return "reboot"
        if self._wire_fault is not None:
            return self._wire_fault
        return "stuck" if self._held is not None else "silent" if self.server.silent else "none"

    def set_fault(self, mode: str, *, duration_s: float = 3.0, **_ignored: float) -> None:
        """silent: requests are read and never answered. reboot: the link drops, the port refuses
        connections for `duration_s`, the volatile settings return to their power-on values, then it
        serves again. stuck: answers and takes commands (read back as given), but the output keeps
        the limit and switch in force when the fault was set. nan: the measurements are flagged
        OVER_RANGE at 2^31 - 1. garbage: they read random int32 values (`simulators.faults`). none:
        back to normal. One fault at a time; physics keeps running throughout."""
        check_mode(mode, FAULT_MODES, "a DNP3 device")
        self.server.silent = mode == "silent"
        self._held = self._controls() if mode == "stuck" else None
        self._wire_fault = mode if mode in ("nan", "garbage") else None
        if mode == "reboot":
            self._reset_volatile()
            self._reboot = asyncio.get_running_loop().create_task(self.server.restart(duration_s))

    # --- what tests and the live table see ----------------------------------------------------------

    @property
    def soc_pct(self) -> float | None:
        return None

    @property
    def active_limit_pct(self) -> float | None:
        enabled, raw, _ = self._controls()
        return raw / 10 if enabled else None

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "p_kw": round(self.p_kw, 3),
            "q_kvar": round(self.q_kvar, 3),
            "soc_pct": None,
            "connected": self.connected,
            "active_limit_pct": self.active_limit_pct,
            "fault": self.fault,
            "writes_at": list(self.writes_at),
        }
