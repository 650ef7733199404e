"""A simulated battery: SunSpec models 1, 701, 702, 704, 713 and 802, physics from OpenDER's BESS model.

Controls, read from the register map every step:
- 704 `WSetEna`+`WSetMod`+`WSet` (signed W, negative = charging) or `WSetPct` (% of 702 `WMax`), with
  reversion (`WSetRvrtTms` → `WSetRvrt`/`WSetPctRvrt`/`WSetEnaRvrt`, `WSetRvrtRem` counting down); no
  setpoint enabled means idle (0 W);
- 704 `WMaxLimPctEna`+`WMaxLimPct` caps discharge, with the same reversion as on the inverter;
- 702 `WChaRteMax`/`WDisChaRteMax` cap charge and discharge;
- 802 `SetOp` CONNECT/DISCONNECT (disconnected: 0 W, re-entry after the enter-service delay and ramp).

Stuck (fault): the controls last read stay in force, whatever the map says after.

OpenDER integrates the SoC from the power (`capacity_kwh`), stops discharging at `soc_min_pct` and
charging at `soc_max_pct`, and ramps the demand over `response_time_s` (full scale).
"""

from __future__ import annotations

import time

from gateway.config import DeviceConfig
from gateway.south.sunspec_models import Value, to_raw
from simulators.der_models import (
    ES_DELAY_S,
    ES_RAMP_S,
    INV_OFF,
    INV_RUNNING,
    INV_STARTING,
    INV_THROTTLED,
    MAX_W,
    V_SF,
    WSET_MOD_WATTS,
    AcState,
    Scale,
    ac_controls_model,
    ac_controls_reversions,
    capacity_model,
    measure_ac_model,
    publish_ac,
)
from simulators.device import ENABLED, SunSpecDevice, common_model
from simulators.physics import STEP_S, BatteryPhysics, PhysicsOutputs
from simulators.sunspec_map import sf_for

DC_V = 800.0  # battery bank voltage reported on 802
SOC_SF = -1
DC_A_SF = -1
SET_OP_CONNECT, SET_OP_DISCONNECT = 1, 2
# 802 State / ChaSt
STATE_DISCONNECTED, STATE_CONNECTED = 1, 3
CHA_EMPTY, CHA_DISCHARGING, CHA_CHARGING, CHA_FULL, CHA_HOLDING = 2, 3, 4, 5, 6
LITHIUM_ION = 4
IDLE_KW = 0.05


class Battery(PhysicsOutputs, SunSpecDevice):
    kind = "battery"
    measurement_models = (701, 713, 802)

    def __init__(self, cfg: DeviceConfig) -> None:
        sim = cfg.sim
        self.rated_kw = sim.rated_kw
        self.capacity_kwh = sim.capacity_kwh
        self.soc_min_pct = sim.soc_min_pct
        self.soc_max_pct = sim.soc_max_pct
        self._scale = Scale.for_rating(self.rated_kw)
        super().__init__(cfg, self._models(cfg), ac_controls_reversions())
        self.physics = BatteryPhysics(
            self.rated_kw, self.capacity_kwh, sim.initial_soc_pct, sim.soc_min_pct, sim.soc_max_pct,
            sim.response_time_s, ES_DELAY_S, ES_RAMP_S,
        )
        self._wh_out = 0.0
        self._wh_in = 0.0
        self._controls = self._read_controls()
        self._demand_kw = 0.0
        self._limit_pct: float | None = None
        self.step(time.monotonic())  # publish the first measurements before anyone can read

    def _models(self, cfg: DeviceConfig) -> dict[int, dict[str, Value | None]]:
        sc = self._scale
        w = self.rated_kw * 1000.0
        wh = self.capacity_kwh * 1000.0
        wh_sf = sf_for(wh, signed=False)
        return {
            1: common_model(cfg, f"BESS-{self.rated_kw:g}kW-{self.capacity_kwh:g}kWh", "ieee1547"),
            701: measure_ac_model(sc),
            702: capacity_model(sc, self.rated_kw, storage=True),
            704: ac_controls_model(),
            713: {"WHRtg": to_raw(wh, wh_sf), "WHAvail": 0, "SoC": 0, "SoH": to_raw(100.0, SOC_SF), "Sta": 0,
                  "WH_SF": wh_sf, "Pct_SF": SOC_SF},
            802: {
                "WHRtg": to_raw(wh, wh_sf), "WChaRteMax": to_raw(w, sc.w), "WDisChaRteMax": to_raw(w, sc.w),
                "SoCMax": to_raw(self.soc_max_pct, SOC_SF), "SoCMin": to_raw(self.soc_min_pct, SOC_SF),
                "SocRsvMax": to_raw(self.soc_max_pct, SOC_SF), "SoCRsvMin": to_raw(self.soc_min_pct, SOC_SF),
                "SoC": 0, "SoH": 100, "ChaSt": CHA_HOLDING, "LocRemCtl": 0, "Hb": 0, "CtrlHb": 0, "AlmRst": 0,
                "Typ": LITHIUM_ION, "State": STATE_CONNECTED, "Evt1": 0, "Evt2": 0,
                "V": to_raw(DC_V, V_SF), "VMax": to_raw(1.1 * DC_V, V_SF), "VMin": to_raw(0.85 * DC_V, V_SF),
                "A": 0, "W": 0, "SetOp": SET_OP_CONNECT,
                "WHRtg_SF": wh_sf, "WChaDisChaMax_SF": sc.w, "SoC_SF": SOC_SF, "SoH_SF": 0, "V_SF": V_SF,
                "A_SF": DC_A_SF, "W_SF": sc.w,
            },
        }

    # --- controls and physics -----------------------------------------------------------------------

    def _read_controls(self) -> tuple[float, float | None, bool]:
        """(demand kW, positive = discharge; limit in % of rating or None; permit service)."""
        m = self.map
        wmax_kw = (m.eng(702, "WMax") or 0.0) / 1000.0
        demand = 0.0
        if m.get(704, "WSetEna") == ENABLED:
            if m.get(704, "WSetMod") == WSET_MOD_WATTS:
                demand = (m.eng(704, "WSet") or 0.0) / 1000.0
            else:
                demand = (m.eng(704, "WSetPct") or 0.0) / 100.0 * wmax_kw
        cha_max = (m.eng(702, "WChaRteMax") or 0.0) / 1000.0
        dis_max = min((m.eng(702, "WDisChaRteMax") or 0.0) / 1000.0, wmax_kw)
        demand = max(-cha_max, min(dis_max, demand))
        limit = None
        if m.get(704, "WMaxLimPctEna") == ENABLED:
            limit = (m.eng(704, "WMaxLimPct") or 0.0) * wmax_kw / self.rated_kw
        return demand, limit, m.get(802, "SetOp") != SET_OP_DISCONNECT

    def _hold_controls(self) -> None:
        self._controls = self._read_controls()

    def step(self, now: float) -> None:
        super().step(now)
        if not self.stuck:
            self._hold_controls()
        self._demand_kw, self._limit_pct, permit = self._controls
        ph = self.physics
        ph.set_demand_kw(self._demand_kw)
        ph.set_limit(None if self._limit_pct is None else self._limit_pct / 100.0)
        ph.set_permit_service(permit)
        ph.step()
        energy_wh = ph.p_kw * 1000.0 * STEP_S / 3600.0
        if energy_wh >= 0:
            self._wh_out += energy_wh
        else:
            self._wh_in -= energy_wh
        self._publish(now)

    def _publish(self, now: float) -> None:
        m = self.map
        ph = self.physics
        soc = ph.soc_pct
        p = ph.p_kw * 1000.0
        throttled = self._limit_pct is not None and self._limit_pct * self.rated_kw / 100.0 < self._demand_kw
        if ph.status == "off":
            inv = INV_OFF
        elif ph.status == "starting":
            inv = INV_STARTING
        else:
            inv = INV_THROTTLED if throttled else INV_RUNNING
        throttle_pct = 100.0 if self._limit_pct is None else self._limit_pct
        publish_ac(m, AcState(p, ph.q_kvar * 1000.0, self._wh_out, self._wh_in, inv, throttle_pct, MAX_W))
        m.put_eng(713, "SoC", soc)
        m.put_eng(713, "WHAvail", self.capacity_kwh * 1000.0 * soc / 100.0)
        m.put_eng(802, "SoC", soc)
        m.put_eng(802, "W", p)
        m.put_eng(802, "A", p / DC_V)
        m.put(802, "ChaSt", self._charge_status(p, soc))
        m.put(802, "State", STATE_DISCONNECTED if inv == INV_OFF else STATE_CONNECTED)
        m.put(802, "Hb", self.heartbeat(now) & 0xFFFF)

    def _charge_status(self, p_w: float, soc: float) -> int:
        if soc >= self.soc_max_pct - 0.05:
            return CHA_FULL
        if soc <= self.soc_min_pct + 0.05:
            return CHA_EMPTY
        if p_w > IDLE_KW * 1000.0:
            return CHA_DISCHARGING
        if p_w < -IDLE_KW * 1000.0:
            return CHA_CHARGING
        return CHA_HOLDING

    # --- state --------------------------------------------------------------------------------------

    @property
    def soc_pct(self) -> float:
        return self.physics.soc_pct

    @property
    def active_limit_pct(self) -> float | None:
        return self._limit_pct
